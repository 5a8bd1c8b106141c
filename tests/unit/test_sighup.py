"""SIGHUP held from start-up, let through by a worker, passed on by its manager."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.support.processes import REPO_ROOT

# A worker: reports whether SIGHUP came in held, puts its handler in place, then lets it through.
WORKER = """
import signal, sys, time
print(signal.SIGHUP in signal.pthread_sigmask(signal.SIG_BLOCK, []), flush=True)
time.sleep(0.5)  # a SIGHUP that arrives now waits
signal.signal(signal.SIGHUP, lambda signum, frame: sys.exit(0))
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
time.sleep(30)
sys.exit(1)
"""

# A manager: holds SIGHUP, starts the worker, forwards, and sends itself a SIGHUP.
MANAGER = f"""
import os, signal, subprocess, sys
from proxy.sighup import hold_sighup, start_sighup_forwarder
hold_sighup()
worker = subprocess.Popen([sys.executable, "-c", {WORKER!r}])
start_sighup_forwarder(lambda: [worker.pid])
os.kill(os.getpid(), signal.SIGHUP)
print("worker exit", worker.wait(timeout=20), flush=True)
"""


def test_held_sighup_reaches_the_worker_through_the_manager() -> None:
    """The manager survives its SIGHUP; the worker starts with it held and gets it later."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MANAGER)],
        check=False,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["True", "worker exit 0"]
