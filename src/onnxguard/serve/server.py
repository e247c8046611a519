"""The server lifecycle: bind, open the audit log, run uvicorn, drain on SIGTERM, stop.

Order matters for what the audit log says: the port is bound first (a port in use fails before
anything is written), then the audit log is opened (a bad tail or an unwritable directory fails
as one error line), then uvicorn serves on the bound socket.  On SIGTERM the server stops
accepting, answers in-flight requests with ``Connection: close``, runs the queued texts without
waiting for batch-mates, and exits 0.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import signal
import socket
import ssl
import sys
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

import uvicorn
import uvicorn.config
from fastapi import FastAPI

from onnxguard.bundle import MANIFEST_NAME
from onnxguard.errors import (
    BundleError,
    BundleNotFoundError,
    OnnxGuardError,
    ServeError,
    UsageError,
)
from onnxguard.serve._connections import ConnectionTable, protocol_class
from onnxguard.serve.repository import is_repository
from onnxguard.serve.settings import ServeConfig

log = logging.getLogger("onnxguard.serve")
_SWITCH_INTERVAL_S = 0.0005
_BACKLOG = 2048


class OnnxguardServer(uvicorn.Server):
    """uvicorn's server that drains the app on shutdown and exits 0 after SIGTERM."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.handles = getattr(app.state, "onnxguard", None)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.handles is not None:
            self.handles.drain()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """uvicorn's, minus re-raising SIGTERM after a graceful stop (exit 0 instead)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def uvicorn_config(app: FastAPI, config: ServeConfig, **overrides: Any) -> uvicorn.Config:
    """uvicorn settings for ``app``: the guarded protocol, no server header, TLS as configured."""
    handles = app.state.onnxguard
    table = ConnectionTable(config.limits, handles.metrics, config.forwarded_allow_ips)
    tls = config.tls
    options: dict[str, Any] = {
        "host": config.host,
        "port": config.port,
        "http": protocol_class(table),
        "log_config": log_config(config.log_level),
        "log_level": config.log_level.value,
        "access_log": False,
        "server_header": False,
        "proxy_headers": bool(config.forwarded_allow_ips),
        "forwarded_allow_ips": list(config.forwarded_allow_ips) or None,
        "timeout_graceful_shutdown": int(config.graceful_timeout_s),
        "limit_concurrency": None,  # the connection table caps connections (one request each)
        "timeout_keep_alive": 5,
        "backlog": _BACKLOG,
        "lifespan": "on",
        "ssl_certfile": str(tls.cert) if tls else None,
        "ssl_keyfile": str(tls.key) if tls else None,
        "ssl_keyfile_password": tls.key_password if tls else None,
        "ssl_ca_certs": str(tls.client_ca) if tls and tls.client_ca else None,
        "ssl_cert_reqs": ssl.CERT_REQUIRED if tls and tls.client_ca else ssl.CERT_NONE,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)


def log_config(level: str) -> dict[str, Any]:
    config: dict[str, Any] = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["loggers"]["onnxguard"] = {
        "handlers": ["default"],
        "level": level.upper(),
        "propagate": False,
    }
    return config


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything else happens (a port in use fails here)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(_BACKLOG)
    except OSError as exc:
        sock.close()
        raise ServeError(
            f"the server could not start on {host}:{port}: {exc.strerror or exc}",
            hint="is the port in use? choose another with --port",
        ) from exc
    sock.set_inheritable(True)
    return sock


def check_startup(config: ServeConfig) -> None:
    """Refusals that need nothing started: unsafe exposure, missing bundle."""
    config.check()
    if config.allow_unauthenticated and not config.loopback:
        raise UsageError(
            f"--allow-unauthenticated on {config.host}: anyone who can reach it could use the "
            "model",
            hint="bind 127.0.0.1, or pass --api-keys-file",
        )
    path = Path(config.bundle)
    if not path.is_dir():
        raise BundleNotFoundError(
            f"bundle directory {config.bundle} does not exist",
            hint="build one with `onnxguard build SOURCE -o DIR`",
        )
    if not (path / MANIFEST_NAME).exists() and not is_repository(path):
        raise BundleError(
            f"{path} is neither an onnxguard bundle ({MANIFEST_NAME} is missing) nor a model "
            "repository (no NAME/VERSION/ directories)",
            hint="pass the directory `onnxguard build -o DIR` wrote, or a repository with "
            "bundles at NAME/VERSION/ (e.g. `onnxguard build SOURCE -o REPO/mymodel/1`)",
        )


def run_server(config: ServeConfig) -> None:
    """Check, bind, open the audit log, serve until SIGTERM; raise the error that stopped it."""
    from onnxguard.serve.app import create_app

    check_startup(config)
    errors: list[BaseException] = []
    holder: dict[str, OnnxguardServer] = {}

    def on_fatal(exc: BaseException) -> None:
        errors.append(exc)
        if "server" in holder:
            holder["server"].should_exit = True

    app = create_app(config, on_fatal=on_fatal)
    sock = bind(config.host, config.port)
    audit = app.state.onnxguard.audit
    try:
        if audit is not None:
            audit.open()  # after the bind: a server that never bound writes no records
        server = OnnxguardServer(uvicorn_config(app, config), app)
        holder["server"] = server
        # The batching thread needs the GIL for a moment between ONNX Runtime calls; with the
        # default 5 ms switch interval it can wait that long behind the busy event loop while
        # the cores idle.  A shorter interval keeps the model fed (this process only serves).
        sys.setswitchinterval(_SWITCH_INTERVAL_S)
        try:
            server.run(sockets=[sock])
        except SystemExit as exc:  # uvicorn exits when it cannot start
            if errors:
                _raise(errors[0])
            raise ServeError(
                f"the server could not start on {config.host}:{config.port} (exit {exc.code})",
                hint="see the log above",
            ) from None
    finally:
        if audit is not None:
            audit.close()
        sock.close()
    if errors:
        _raise(errors[0])


def _raise(exc: BaseException) -> None:
    if isinstance(exc, OnnxGuardError):
        raise exc
    raise ServeError(f"the server stopped: {type(exc).__name__}: {exc}") from exc
