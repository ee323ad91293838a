"""nanoGPT-style entry point: python sample.py --out_dir=out --start="def " --num_samples=2"""

import sys

from gptlab.train.cli import entry, run_sample

if __name__ == "__main__":
    sys.exit(entry(run_sample))
