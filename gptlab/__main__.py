import sys

try:
    from gptlab.cli import main
except KeyboardInterrupt:  # importing torch takes seconds: a Ctrl-C then is one line, as anywhere later
    print("gptlab: aborted (Ctrl-C); files already written are as they were", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
