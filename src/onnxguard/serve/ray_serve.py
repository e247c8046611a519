"""``onnxguard serve BUNDLE --ray``: the same app as Ray Serve replicas, every guarantee kept.

Each replica builds the app of ``onnxguard serve`` (``create_app``), so keys, scopes, body and
input limits, batching, errors and audit records are exactly those of a single process.  Each
replica verifies the bundle itself in its constructor (hashes, signature with the configured
public key, decryption in memory with the key source resolved on its own node): weights never
travel through the object store, and a bundle that fails verification fails the deployment.

What must be one for all replicas lives in three small actors on the driver's node:
- ``RateLimits``: the request and token buckets (a key's limit is global, not per replica);
- ``AuditWriter``: the one ``AuditLog``, one hash chain that ``onnxguard audit verify`` checks
  (records of all replicas are group-committed and fsynced before each response goes out);
- ``Hub``: the replica registry: readiness is 200 only when every wanted replica has verified
  and warmed up its bundle, and ``/metrics`` on any replica shows every replica's metrics, each
  sample labelled ``replica``.
A replica that cannot reach the shared actors fails closed (429 for limits, 503 for audit).

Known limit: Ray Serve's own HTTP proxy owns the connections, so the connection guard of the
single-process server (header deadline, per-address cap) does not apply there; run the proxy
behind a load balancer that enforces connection limits, as Ray's docs advise.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from onnxguard import __version__
from onnxguard.errors import AuditLogError, OnnxGuardError, ServeError, UsageError
from onnxguard.serve._shared import SharedState
from onnxguard.serve.ratelimit import Decision, RateLimiter
from onnxguard.serve.settings import RateLimit, ServeConfig

log = logging.getLogger("onnxguard.serve")

NAMESPACE = "onnxguard"
_CALL_TIMEOUT_S = 5.0
_REPORT_EVERY_S = 1.0
_REPLICA_STALE_S = 3.0  # three missed reports: a dead replica stops counting as ready


@dataclass(frozen=True)
class RayOptions:
    """How to scale: a fixed number of replicas, or autoscaling between two bounds."""

    address: str | None = None
    replicas: int = 2
    autoscale: tuple[int, int] | None = None
    cpus_per_replica: float = 1.0
    app_name: str = "onnxguard"

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise UsageError(f"--replicas must be at least 1 (got {self.replicas})",
                             hint="one replica per node or per few cores")
        if self.autoscale is not None:
            low, high = self.autoscale
            if not 1 <= low <= high:
                raise UsageError(f"--autoscale {low}..{high} is not a range",
                                 hint="write MIN..MAX with 1 <= MIN <= MAX, e.g. 2..8")

    @property
    def wanted(self) -> int:
        """Replicas that must be ready before the service is (the minimum when autoscaling)."""
        return self.autoscale[0] if self.autoscale else self.replicas

    @staticmethod
    def parse_autoscale(text: str) -> tuple[int, int]:
        low, sep, high = text.partition("..")
        if not sep or not low.strip().isdigit() or not high.strip().isdigit():
            raise UsageError(f"--autoscale {text!r} is not MIN..MAX",
                             hint="for example --autoscale 2..8")
        return int(low), int(high)


# --- the shared actors (plain classes; made remote with ray.remote when deployed) -------------
class RateLimits:
    """Global token buckets: ``requests`` (per key) and ``tokens`` (per key)."""

    def __init__(self, requests: RateLimit | None, tokens: RateLimit | None) -> None:
        from onnxguard.serve.service import token_limiter

        self._limiters: dict[str, RateLimiter] = {}
        if requests is not None:
            self._limiters["requests"] = RateLimiter(requests)
        if tokens is not None:
            self._limiters["tokens"] = token_limiter(tokens)

    def acquire(self, which: str, key: str, cost: float) -> tuple[bool, int, int]:
        decision = self._limiters[which].acquire(key, cost)
        return decision.allowed, decision.retry_after_s, decision.remaining

    def charge(self, which: str, key: str, cost: float) -> None:
        self._limiters[which].charge(key, cost)


class AuditWriter:
    """The one audit log of the service (an async actor: appends from all replicas that arrive
    in the same event-loop turn share one write and one fsync)."""

    def __init__(self, config: ServeConfig) -> None:
        from onnxguard.serve.audit import AuditLog

        assert config.audit.path is not None
        self.log = AuditLog(
            config.audit.path,
            max_bytes=config.audit.max_bytes,
            keep=config.audit.keep,
            fsync=config.audit.fsync,
            server_info={"version": __version__, "bundle": str(config.bundle),
                         "host": config.host, "port": config.port, "mode": "ray"},
        )
        self.log.open()

    async def append(self, fields: dict[str, Any], kind: str) -> None:
        await self.log.append(fields, kind=kind)

    def healthy(self) -> bool:
        return self.log.healthy

    def close(self) -> None:
        self.log.close()


class Hub:
    """Which replicas are up and ready, and their latest metrics."""

    def __init__(self, wanted: int) -> None:
        self.wanted = wanted
        self._replicas: dict[str, tuple[float, bool, bytes]] = {}

    def report(self, replica: str, ready: bool, metrics: bytes) -> bool:
        """Record one replica's state; returns whether the whole service is ready."""
        self._replicas[replica] = (time.monotonic(), ready, metrics)
        return self.ready_count() >= self.wanted

    def forget(self, replica: str) -> None:
        self._replicas.pop(replica, None)

    def ready_count(self) -> int:
        now = time.monotonic()
        return sum(1 for seen, ready, _ in self._replicas.values()
                   if ready and now - seen < _REPLICA_STALE_S)

    def metrics(self) -> dict[str, bytes]:
        now = time.monotonic()
        return {replica: data for replica, (seen, _, data) in self._replicas.items()
                if now - seen < _REPLICA_STALE_S}


# --- replica-side views of the shared actors ----------------------------------------------------
class RemoteLimiter:
    """``RateLimiter``'s interface over the ``RateLimits`` actor; fails closed (429)."""

    def __init__(self, actor: Any, which: str, limit: RateLimit) -> None:
        self._actor, self._which, self.limit = actor, which, limit

    def acquire(self, key: str, cost: float = 1.0) -> Decision:
        import ray

        try:
            allowed, wait, remaining = ray.get(
                self._actor.acquire.remote(self._which, key, cost), timeout=_CALL_TIMEOUT_S)
        except Exception as exc:  # actor lost or slow: refuse rather than serve unlimited
            log.error("shared rate limits unreachable (%s): refusing", type(exc).__name__)
            return Decision(False, 1, 0)
        return Decision(bool(allowed), int(wait), int(remaining))

    def charge(self, key: str, cost: float) -> None:
        self._actor.charge.remote(self._which, key, cost)


class RemoteAudit:
    """``AuditLog``'s interface over the ``AuditWriter`` actor; a failed append turns the replica
    not-ready and refuses requests, like a failed local log."""

    def __init__(self, actor: Any) -> None:
        self._actor = actor
        self._failed: str | None = None

    @property
    def is_open(self) -> bool:
        return True

    @property
    def healthy(self) -> bool:
        return self._failed is None

    def open(self) -> None:
        """The writer actor opened the log when it was created."""

    def close(self) -> None:
        """The driver closes the log when the service stops."""

    async def append(self, fields: dict[str, Any], kind: str = "request") -> None:
        if self._failed is not None:
            raise AuditLogError(f"the shared audit log failed earlier: {self._failed}",
                                hint="fix the audit disk and restart the service")
        try:
            await self._actor.append.remote(fields, kind)
        except Exception as exc:
            self._failed = type(exc).__name__
            raise AuditLogError("the shared audit log could not write a record",
                                hint="check the driver node's audit disk") from exc


def merge_metrics(snapshots: dict[str, bytes]) -> bytes:
    """Prometheus text of several replicas in one exposition, each sample labelled ``replica``."""
    seen_meta: set[str] = set()
    lines: list[str] = []
    for replica, data in sorted(snapshots.items()):
        label = f'replica="{replica}"'
        for line in data.decode("utf-8").splitlines():
            if not line:
                continue
            if line.startswith("#"):
                if line not in seen_meta:
                    seen_meta.add(line)
                    lines.append(line)
                continue
            name, _, rest = line.partition(" ")
            if "{" in name:
                metric, _, labels = name.partition("{")
                name = f"{metric}{{{label},{labels}"
            else:
                name = f"{name}{{{label}}}"
            lines.append(f"{name} {rest}")
    return ("\n".join(lines) + "\n").encode("utf-8")


class ReplicaLink:
    """This replica's link to the hub: reports readiness + metrics every second, caches the
    answer (is the whole service ready), and builds the combined ``/metrics``."""

    def __init__(self, hub: Any, replica: str) -> None:
        self._hub = hub
        self.replica = replica
        self._all_ready = False
        self._local_ready: Callable[[], bool] = lambda: False
        self._metrics: Callable[[], bytes] = lambda: b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="onnxguard-hub", daemon=True)

    def start(self, local_ready: Callable[[], bool], metrics: Callable[[], bytes]) -> None:
        self._local_ready, self._metrics = local_ready, metrics
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def ready(self, local: bool) -> bool:
        return local and self._all_ready

    def combined_metrics(self, local: bytes) -> bytes:
        import ray

        snapshots = ray.get(self._hub.metrics.remote(), timeout=_CALL_TIMEOUT_S)
        snapshots[self.replica] = local
        return merge_metrics(snapshots)

    def _run(self) -> None:
        import ray

        while not self._stop.is_set():
            try:
                self._all_ready = bool(ray.get(
                    self._hub.report.remote(self.replica, self._local_ready(), self._metrics()),
                    timeout=_CALL_TIMEOUT_S))
            except Exception as exc:
                self._all_ready = False
                log.warning("hub unreachable (%s)", type(exc).__name__)
            self._stop.wait(_REPORT_EVERY_S)


def _actor_names(app_name: str) -> dict[str, str]:
    return {kind: f"{app_name}-{kind}" for kind in ("limits", "audit", "hub")}


class Replica:
    """A Ray Serve replica: verify and load the bundle in the constructor (a bad bundle fails
    the deployment), then hand Ray Serve the app (``__serve_build_asgi_app__``)."""

    def __init__(self, config: ServeConfig, options: RayOptions) -> None:
        import ray
        from ray import serve

        from onnxguard.serve.service import default_loader

        self.config = config
        self.engine = default_loader(config)()  # verification happens here, on this node
        names = _actor_names(options.app_name)
        limits = ray.get_actor(names["limits"], namespace=NAMESPACE)
        self.shared_audit = (RemoteAudit(ray.get_actor(names["audit"], namespace=NAMESPACE))
                             if config.audit.path is not None else None)
        context = serve.get_replica_context()
        replica_id = getattr(context.replica_id, "unique_id", None) or uuid.uuid4().hex[:8]
        self.link = ReplicaLink(ray.get_actor(names["hub"], namespace=NAMESPACE), replica_id)
        self.shared = SharedState(
            limiter=RemoteLimiter(limits, "requests", config.rate_limit)
            if config.rate_limit is not None else None,
            tokens=RemoteLimiter(limits, "tokens", config.token_limit)
            if config.token_limit is not None else None,
            audit=self.shared_audit,
            ready=self.link.ready,
            metrics=self.link.combined_metrics,
        )

    def __serve_build_asgi_app__(self) -> Any:
        from onnxguard.serve.app import create_app

        engine = self.engine
        app = create_app(self.config, loader=lambda: engine, shared=self.shared)
        handles = app.state.onnxguard
        self.link.start(
            lambda: handles.local_ready,
            handles.metrics.render,
        )
        return app

    def __del__(self) -> None:
        self.link.stop()


class RayService:
    """The driver side: connect to (or start) Ray, create the shared actors, deploy, stop."""

    def __init__(self, config: ServeConfig, options: RayOptions) -> None:
        config.check()
        self.config = _absolute_paths(config)
        self.options = options
        self._actors: dict[str, Any] = {}
        self._started_ray = False
        self._started_serve = False

    def start(self) -> str:
        """Deploy and wait until every wanted replica is verified; returns the base URL."""
        ray, serve = _import_ray()
        if not ray.is_initialized():
            if self.options.address is None:
                # A local cluster has one proxy on the port: spread over every node's replicas.
                os.environ.setdefault("RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING", "0")
            ray.init(address=self.options.address, namespace=NAMESPACE,
                     include_dashboard=False, log_to_driver=False, configure_logging=False)
            self._started_ray = True
        try:
            self._create_actors(ray)
            if _serve_running(ray):
                raise ServeError(
                    "Ray Serve already runs on this cluster (its proxy has its own port)",
                    hint="stop the other Serve application (`serve shutdown`), or use another "
                    "cluster",
                )
            serve.start(http_options=self._http_options())
            self._started_serve = True
            serve.run(self._application(serve), name=self.options.app_name, route_prefix="/",
                      blocking=False)
        except OnnxGuardError:
            self.stop()
            raise
        except Exception as exc:
            self.stop()
            raise ServeError(
                f"the Ray Serve deployment failed: {_first_line(exc)}",
                hint="check the bundle with `onnxguard verify BUNDLE`, the key source and the "
                "public key on every node; run with --verbose for Ray's log",
            ) from exc
        return f"{self.config.scheme}://{self.config.host}:{self.config.port}"

    def _create_actors(self, ray: Any) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        names = _actor_names(self.options.app_name)

        def make(kind: str, cls: type, *args: Any, **extra: Any) -> Any:
            remote = ray.remote(num_cpus=0, max_restarts=0, **extra)(cls)
            return remote.options(name=names[kind], namespace=NAMESPACE,
                                  scheduling_strategy=here).remote(*args)

        self._actors["limits"] = make("limits", RateLimits, self.config.rate_limit,
                                      self.config.token_limit)
        self._actors["hub"] = make("hub", Hub, self.options.wanted)
        if self.config.audit.path is not None:
            self._actors["audit"] = make("audit", AuditWriter, self.config,
                                         max_concurrency=1000)
            ray.get(self._actors["audit"].healthy.remote())  # the log opened (or raise)
        ray.get(self._actors["hub"].ready_count.remote())

    def _http_options(self) -> dict[str, Any]:
        """Ray Serve's proxy binds where ``serve`` would, with the same TLS files."""
        options: dict[str, Any] = {"host": self.config.host, "port": self.config.port}
        tls = self.config.tls
        if tls is not None:
            options |= {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key),
                        "ssl_keyfile_password": tls.key_password}
            if tls.client_ca is not None:
                options["ssl_ca_certs"] = str(tls.client_ca)
        return options

    def _application(self, serve: Any) -> Any:
        scale: dict[str, Any]
        if self.options.autoscale is not None:
            low, high = self.options.autoscale
            scale = {"autoscaling_config": {"min_replicas": low, "max_replicas": high,
                                            "target_ongoing_requests": 8}}
        else:
            scale = {"num_replicas": self.options.replicas}
        deployment = serve.deployment(
            name="onnxguard",
            ray_actor_options={"num_cpus": self.options.cpus_per_replica},
            max_ongoing_requests=4 * self.config.batching.max_batch,
            max_constructor_retry_count=1,
            health_check_period_s=2,
            **scale,
        )(serve.ingress()(Replica))
        return deployment.bind(self.config, self.options)

    def wait_ready(self, timeout: float) -> bool:
        """Whether every wanted replica reported ready within ``timeout`` seconds."""
        import ray

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ray.get(self._actors["hub"].ready_count.remote()) >= self.options.wanted:
                return True
            time.sleep(0.5)
        return False

    def stop(self) -> None:
        """Delete the deployment, close the audit log (a ``stop`` record), release Ray."""
        ray, serve = _import_ray()
        if not ray.is_initialized():
            return
        try:
            serve.delete(self.options.app_name)
        except Exception as exc:  # already gone or never deployed
            log.debug("serve.delete: %s", type(exc).__name__)
        audit = self._actors.pop("audit", None)
        if audit is not None:
            try:
                ray.get(audit.close.remote(), timeout=30)
            except Exception as exc:
                log.error("audit log did not close cleanly: %s", type(exc).__name__)
            ray.kill(audit)
        for actor in self._actors.values():
            ray.kill(actor)
        self._actors.clear()
        if self._started_serve:
            serve.shutdown()
            self._started_serve = False
        if self._started_ray:
            ray.shutdown()


def _absolute_paths(config: ServeConfig) -> ServeConfig:
    """Replicas run in other working directories: every path is made absolute on the driver."""

    def absolute(path: Path | None) -> Path | None:
        return Path(path).resolve() if path is not None else None

    tls = config.tls
    if tls is not None:
        tls = replace(tls, cert=tls.cert.resolve(), key=tls.key.resolve(),
                      client_ca=absolute(tls.client_ca))
    return replace(
        config,
        bundle=Path(config.bundle).resolve(),
        api_keys_file=absolute(config.api_keys_file),
        public_key=absolute(config.public_key),
        audit=replace(config.audit, path=absolute(config.audit.path)),
        tls=tls,
    )


def run_ray_service(config: ServeConfig, options: RayOptions) -> None:
    """``serve --ray``: deploy, say where, wait for SIGTERM or Ctrl-C, then stop cleanly."""
    import signal

    from onnxguard.serve.server import check_startup

    check_startup(config)
    from onnxguard.serve.repository import is_repository

    if is_repository(Path(config.bundle)):
        raise UsageError(
            f"{config.bundle} is a model repository; --ray serves one bundle",
            hint="serve one version with --ray (e.g. REPO/NAME/VERSION), or the repository "
            "without --ray",
        )
    service = RayService(config, options)
    stop = threading.Event()
    previous: dict[signal.Signals, Any] = {}
    try:
        url = service.start()
        # After ray.init: Ray's core installs its own SIGTERM handler, which aborts the driver.
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
        ready = service.wait_ready(300)
        print(f"onnxguard: serving {url} with Ray Serve ({options.wanted} replica(s) "
              f"{'ready' if ready else 'starting'})", flush=True)
        stop.wait()
    finally:
        service.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve_running(ray: Any) -> bool:
    return any(actor["name"] == "SERVE_CONTROLLER_ACTOR"
               for actor in ray.util.list_named_actors(all_namespaces=True))


def _import_ray() -> tuple[Any, Any]:
    try:
        import ray
        from ray import serve
    except ImportError as exc:
        raise UsageError("--ray needs Ray Serve, which is not installed",
                         hint="pip install 'onnxguard[ray]', or serve without --ray") from exc
    return ray, serve


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
