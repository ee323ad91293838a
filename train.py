"""nanoGPT-style entry point: python train.py config/full_llama_124m.py --key=value ...

Also works under torchrun. The work is done by gptlab.train; this file only forwards.
"""

import sys

from gptlab.train.cli import entry, run_train

if __name__ == "__main__":
    sys.exit(entry(run_train))
