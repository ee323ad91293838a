# nanoGPT's config/finetune_shakespeare.py: fine-tune OpenAI's GPT-2 XL (1.5B) on tinyshakespeare
# (GPT-2 BPE). The weights come from the Hugging Face Hub into its cache on first use.
# gptlab prepare shakespeare && python train.py config/finetune_shakespeare.py
# A smaller start: --init_from=gpt2 (124M). On a CPU: --device=cpu --compile=False.
import time

out_dir = "out-shakespeare"
eval_interval = 5
eval_iters = 40
wandb_log = False
wandb_project = "shakespeare"
wandb_run_name = "ft-" + str(time.time())

dataset = "shakespeare"
init_from = "gpt2-xl"
always_save_checkpoint = False  # only when the validation loss improves

# 1 batch_size * 32 grad_accum * 1024 tokens = 32,768 tokens/iter; shakespeare's train split has about
# 300k tokens (nanoGPT's prepare.py: 301,966; gptlab prepare holds out the last 10% of the tokens instead
# of the characters, a few hundred more or fewer), so 1 epoch ~= 9.2 iters
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20

learning_rate = 3e-5  # a constant LR
decay_lr = False
