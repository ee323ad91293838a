# GPT-2 124M on OpenWebText, as nanoGPT's config/train_gpt2.py: ~0.5M tokens per iteration
# (12 sequences x 1024 tokens x 40 micro-batches; under torchrun the 40 are shared out over
# the GPUs, as in nanoGPT, so the global batch stays the same).
# python train.py config/full_gpt2_124m.py
# torchrun --standalone --nproc_per_node=4 train.py config/full_gpt2_124m.py
arch_preset = "gpt2"
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024

dataset = "openwebtext"
out_dir = "out/gpt2_124m"
batch_size = 12
gradient_accumulation_steps = 40

learning_rate = 6e-4
max_iters = 600000
lr_decay_iters = 600000
warmup_iters = 2000
min_lr = 6e-5
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0

eval_interval = 1000
eval_iters = 200
log_interval = 10
gradient_log_interval = 50
