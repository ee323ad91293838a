"""Training, one concern per module: ``launch`` (``train(run)``: one process's run, and how its failures are
said), ``loop`` (``Trainer``: the step, evaluation, saving, the run), ``init_from`` (where the weights and
architecture come from: scratch, a resume, a fine-tune), ``resume`` (whether out_dir takes a new run, and what a
resume changed), ``schedule`` (the learning rate), ``signals`` (stopping on SIGTERM/SIGINT),
``startup_report``, ``telemetry_hooks`` (the loop's view of FLOPs, memory and gradients), ``sample`` and ``cli``."""
