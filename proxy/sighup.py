"""SIGHUP, the signal that has each worker re-read its file-backed secrets (proxy/rotation.py).

Its default action ends a process, so from the first line of ``serve`` it is blocked: held,
not acted on. The mask passes to every thread and process started after, the workers
included, and each worker lets it through once its handler is in place. A SIGHUP that
arrives while a worker is still importing therefore waits for it instead of ending it.
With several workers, the manager passes each SIGHUP on to them from a thread of its own.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable
from contextlib import suppress

log = logging.getLogger("llm_proxy")


def hold_sighup() -> None:
    """Block SIGHUP in this thread, and so in every thread and process started from it.

    A blocked signal waits instead of taking its default action, which ends the process. The
    mask survives fork and exec, so a worker that is still starting when a SIGHUP arrives
    holds it until its own handler is in place (``release_sighup``). The first thing
    ``serve`` does, before any thread or worker exists.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})


def release_sighup() -> None:
    """A worker's handler is in place: take a held SIGHUP, and any later one, through it."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})


def start_sighup_forwarder(worker_pids: Callable[[], Iterable[int]]) -> None:
    """The worker manager's SIGHUP handling: each worker process re-reads its secrets.

    The manager keeps SIGHUP blocked (``hold_sighup``); a thread of its own waits for each
    one and passes it to the workers only (one that has already gone is skipped), since the
    manager's helper processes (multiprocessing's) have no handler of their own.
    """

    def run() -> None:
        while True:
            signal.sigwait({signal.SIGHUP})
            try:
                for pid in worker_pids():
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGHUP)
            except Exception:
                log.exception("passing SIGHUP on to the workers failed")

    threading.Thread(target=run, name="sighup-forwarder", daemon=True).start()
