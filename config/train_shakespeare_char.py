# nanoGPT's config/train_shakespeare_char.py: a baby GPT (6 x 384, 10.7M parameters) on
# tinyshakespeare, character level; nanoGPT's model with bias=False (its train.py default).
# gptlab prepare shakespeare_char && python train.py config/train_shakespeare_char.py
# On a CPU: --device=cpu --compile=False --eval_iters=20 --log_interval=1 --block_size=64
#           --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

out_dir = "out-shakespeare-char"
eval_interval = 250  # keep frequent because we'll overfit
eval_iters = 200
log_interval = 10  # don't print too too often

# we expect to overfit on this small dataset, so only save when val improves
always_save_checkpoint = False

wandb_log = False  # override via command line if you like
wandb_project = "shakespeare-char"
wandb_run_name = "mini-gpt"

dataset = "shakespeare_char"
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256  # context of up to 256 previous characters

# baby GPT model :)
arch_preset = "custom"
normalization = "layernorm_nobias"  # nanoGPT: bias covers LayerNorm too (--bias=True: add --normalization=layernorm)
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2

learning_rate = 1e-3  # with baby networks can afford to go a bit higher
max_iters = 5000
lr_decay_iters = 5000  # make equal to max_iters usually
min_lr = 1e-4  # learning_rate / 10 usually
beta2 = 0.99  # make a bit bigger because number of tokens per iter is small

warmup_iters = 100  # not super necessary potentially
