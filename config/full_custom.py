# Your own mix: every architecture key spelled out. Change any line, or override it
# on the command line, as in (not on the first two lines: Python would read it as a coding line)
# python train.py config/full_custom.py --position_encoding=alibi --ffn_type=geglu
arch_preset = "custom"
n_layer = 12
n_head = 12
n_kv_head = 4  # grouped-query attention: 3 query heads per key/value head
n_embd = 768
block_size = 1024
normalization = "rmsnorm"  # layernorm | layernorm_nobias | rmsnorm
activation = "gelu"  # gelu | silu | relu | leaky_relu (used by the standard FFN)
gelu_approximate = "tanh"  # none | tanh
position_encoding = "rope"  # learned_absolute | rope | alibi | none
rope_theta = 10000.0
norm_position = "pre"  # pre | post
ffn_type = "standard"  # standard | swiglu | geglu
attention_backend = "sdpa"  # sdpa | manual
bias = False
weight_tying = True
dropout = 0.0

dataset = "openwebtext"
out_dir = "out/custom"
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
