# nanoGPT's config/train_gpt2.py: GPT-2 (124M) on OpenWebText, ~0.5M tokens per iteration, on 8 GPUs:
# torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py
# nanoGPT's model with bias=False (its train.py default); config/full_gpt2_124m.py is OpenAI's GPT-2
# architecture (biases, tanh GELU) with the same schedule. Logs to wandb as nanoGPT's does
# (pip install 'gptlab[wandb]', or --wandb_log=False).

wandb_log = True
wandb_project = "owt"
wandb_run_name = "gpt2-124M"

dataset = "openwebtext"
arch_preset = "custom"
normalization = "layernorm_nobias"  # nanoGPT: bias covers LayerNorm too (--bias=True: add --normalization=layernorm)

# these make the total batch size be ~0.5M
# 12 batch size * 1024 block size * 5 gradaccum * 8 GPUs = 491,520
batch_size = 12
block_size = 1024
gradient_accumulation_steps = 5 * 8

# this makes total number of tokens be 300B
max_iters = 600000
lr_decay_iters = 600000

# eval stuff
eval_interval = 1000
eval_iters = 200
log_interval = 10

# weight decay
weight_decay = 1e-1
