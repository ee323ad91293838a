# The team's model_v1 (the same architecture as LLaMA) at 124M scale, GPT-2 124M's recipe.
# python train.py config/arch_team.py
arch_preset = "team"
n_layer = 12
n_head = 12
n_embd = 768
block_size = 1024

dataset = "openwebtext"
out_dir = "out/team_124m"
batch_size = 12
gradient_accumulation_steps = 40
learning_rate = 6e-4
max_iters = 600000
lr_decay_iters = 600000
warmup_iters = 2000
min_lr = 6e-5
eval_interval = 1000
eval_iters = 200
log_interval = 10
