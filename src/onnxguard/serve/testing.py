"""Run the real server in a background thread, on loopback, for tests and notebooks.

    with BackgroundServer(create_app(config)) as server:
        server.wait_ready()
        httpx.post(server.url + "/v1/classify", ...)

It is uvicorn with the same protocol stack as ``onnxguard serve`` (real sockets, real HTTP
parsing, the connection guard, lifespan, graceful drain), not an in-process transport.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from types import TracebackType
from typing import Any

import uvicorn

LOOPBACK = "127.0.0.1"


class BackgroundServer:
    """uvicorn on 127.0.0.1 (an ephemeral port unless given) in a daemon thread."""

    def __init__(self, app: Any, *, port: int = 0, **uvicorn_options: Any) -> None:
        options: dict[str, Any] = {
            "log_level": "warning",
            "access_log": False,
            "server_header": False,
            "timeout_graceful_shutdown": 10,
            "lifespan": "on",
        } | uvicorn_options
        handles = getattr(getattr(app, "state", None), "onnxguard", None)
        if handles is not None:  # an onnxguard app: the same server and protocol as `serve`
            from onnxguard.serve.server import OnnxguardServer, uvicorn_config

            options.pop("log_config", None)
            config = uvicorn_config(app, handles.config, host=LOOPBACK, port=port, **options)
            self.server: uvicorn.Server = OnnxguardServer(config, app)
        else:
            self.server = uvicorn.Server(uvicorn.Config(app, host=LOOPBACK, port=port, **options))
        self._thread = threading.Thread(
            target=self.server.run, name="onnxguard-test-server", daemon=True
        )
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the server thread exited during startup")
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not start")
            time.sleep(0.01)
        sockets = self.server.servers[0].sockets
        self.port = int(sockets[0].getsockname()[1])
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until ``/v2/health/ready`` answers 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                url = self.url + "/v2/health/ready"  # always http://127.0.0.1
                with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        raise TimeoutError("the server did not become ready")

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
