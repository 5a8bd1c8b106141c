"""Process entry: settings in, logging set, workers started; returns when they have stopped.

One worker process per core (Sanic's worker manager); ``workers: 1`` runs a single process
with no manager, which is what the benchmark measures. With several workers the metrics go
through prometheus-client's multiprocess mode; its directory must be set before any module
that defines metrics is imported, so ``proxy.app`` is imported late.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from functools import partial
from typing import TYPE_CHECKING, Any

from proxy.logs import configure_logging
from proxy.settings import Settings
from proxy.sighup import hold_sighup, start_sighup_forwarder

if TYPE_CHECKING:
    from sanic import Sanic

log = logging.getLogger("llm_proxy")


def _multiprocess_dir() -> str:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        # Values left by an earlier run would be summed into ours.
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path, exist_ok=True)
        return path
    path = tempfile.mkdtemp(prefix="llm-proxy-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def serve(settings: Settings) -> None:
    hold_sighup()  # before any thread or worker exists: see proxy/sighup.py
    s = settings.server
    configure_logging(s.log_level, s.log_format)
    workers = s.workers or os.cpu_count() or 1
    if workers > 1:
        _multiprocess_dir()
    if not settings.master_key:
        log.warning(
            "no master key set (LLM_PROXY_MASTER_KEY or master_key): the proxy is open "
            "to anyone who can reach it"
        )
    from sanic import Sanic
    from sanic.worker.loader import AppLoader

    from proxy.app import create_app

    loader = AppLoader(factory=partial(create_app, settings))
    app = loader.load()
    if workers > 1:
        start_sighup_forwarder(partial(_worker_pids, app))
    app.prepare(
        host=s.host,
        port=s.port,
        workers=workers,
        single_process=workers == 1,
        access_log=False,  # proxy.logs.AccessLog writes the access lines
        motd=False,
    )
    log.info(
        "llm-proxy listening on http://%s:%d with %d worker(s), models: %s",
        s.host,
        s.port,
        workers,
        ", ".join(settings.model_names) or "(none)",
    )
    if workers == 1:
        Sanic.serve_single(primary=app)
    else:
        Sanic.serve(primary=app, app_loader=loader)


def _worker_pids(app: Sanic[Any, Any]) -> list[int]:
    from sanic.exceptions import SanicException

    try:
        return [p.pid for p in app.manager.processes if p.pid]
    except SanicException:  # the manager is not running yet
        return []
