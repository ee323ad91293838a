"""Independent commands of one test run side by side: each starts a Python (a second or two of imports) that
the other core can take meanwhile."""

from __future__ import annotations

import subprocess
from typing import Any


def run_together(*commands: dict[str, Any], timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """``subprocess.run(**command)`` for each, started at once; results in the commands' order. Each command
    is ``subprocess.Popen``'s keywords (``args``, ``env``, ``cwd``, ``text``) with output captured."""
    started = [subprocess.Popen(stdout=subprocess.PIPE, stderr=subprocess.PIPE, **c) for c in commands]
    done = []
    for proc in started:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in started:
                p.kill()
                p.wait()
            raise
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done
