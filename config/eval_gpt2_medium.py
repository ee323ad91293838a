# nanoGPT's config/eval_gpt2_medium.py: OpenAI's gpt2-medium (350M, from the Hugging Face Hub) evaluated on
# openwebtext, no training. gptlab prepare openwebtext && python train.py config/eval_gpt2_medium.py
dataset = "openwebtext"
batch_size = 8
eval_iters = 500  # use more iterations to get a good estimate
eval_only = True
wandb_log = False
init_from = "gpt2-medium"
