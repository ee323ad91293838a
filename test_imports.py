"""What is installed and usable here: python test_imports.py [--deep] [--json]

The same as `gptlab doctor`; the work is done by gptlab.doctor.
"""

import sys

from gptlab.tools_cli import entry

if __name__ == "__main__":
    sys.exit(entry("doctor"))
