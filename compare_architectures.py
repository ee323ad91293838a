"""Compare architectures: python compare_architectures.py gpt2 llama hybrid [--train] [--key=value ...]

The same as `gptlab compare`; the work is done by gptlab.compare.
"""

import sys

from gptlab.tools_cli import entry

if __name__ == "__main__":
    sys.exit(entry("compare"))
