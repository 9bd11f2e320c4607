"""Run the `surgery` CLI in-process (fast) or as a real subprocess (for signals)."""

import os
import signal
import subprocess
import sys

from pruning.cli import main


def run_cli(capsys, *argv):
    """(exit code, stdout, stderr) of `surgery argv...` run in this process."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def spawn(*argv, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # A child inherits an ignored SIGINT (something earlier in a long pytest session may ignore it);
    # a user's shell starts the command with the default, so restore that.
    return subprocess.Popen([sys.executable, "-m", "pruning.cli", *map(str, argv)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs)
