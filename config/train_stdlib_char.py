# The quick start (what `gptlab train` runs with no config): a small LLaMA-style model on the
# embedded stdlib_char dataset, about two minutes on a 2-core CPU.
# python train.py config/train_stdlib_char.py
dataset = "stdlib_char"
out_dir = "out/quickstart"
overwrite = True
arch_preset = "llama"
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
batch_size = 16
gradient_accumulation_steps = 1
learning_rate = 0.002
min_lr = 0.0002
warmup_iters = 50
max_iters = 700
lr_decay_iters = 700
eval_interval = 200
eval_iters = 20
log_interval = 25
gradient_log_interval = 25
weight_decay = 0.1
dropout = 0.0
device = "cpu"
dtype = "float32"
compile = False
log_style = "compact"
sample_at_end = True
sample_tokens = 300
sample_prompt = "def "
