"""The models a server answers for, and how a request finds (and leases) one version of one.

A ``ModelSet`` maps model names to loaded versions (``Service`` objects) and each model to its
default version (the highest loaded; the unversioned routes use it).  Routes call ``lease``
with what the request named (``NAME``, ``NAME/VERSION``, or nothing); the lease is taken under
the set's lock, so a version swapped out after that moment still finishes the request
(``Service.retire`` waits for its leases), and the guard releases it when the response is sent.

Who changes the set: ``SingleBundle`` (one bundle, version 1, loaded once) or
``repository.Repository`` (a directory of ``NAME/VERSION/`` bundles, loaded and swapped live).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from onnxguard.serve._http import ApiError, RequestContext, shown

if TYPE_CHECKING:
    from onnxguard.serve.service import Service

_VERSION = re.compile(r"[1-9][0-9]{0,8}")


@dataclass(frozen=True)
class ServedVersion:
    name: str
    version: int
    service: Service
    default: bool


class ModelSet:
    """Thread-safe: requests read it on the event loop, loaders change it from their threads."""

    def __init__(self, default_model: str | None = None) -> None:
        self.default_model = default_model
        """The model a request that names none gets when several are served."""
        self._lock = threading.Lock()
        self._versions: dict[str, dict[int, Service]] = {}

    # --- changes (loaders) ---------------------------------------------------------------------
    def put(self, name: str, version: int, service: Service) -> Service | None:
        """Serve ``service`` as ``name`` version ``version``; returns the one it replaces."""
        with self._lock:
            versions = self._versions.setdefault(name, {})
            old = versions.get(version)
            versions[version] = service
        return old

    def remove(self, name: str, version: int) -> Service | None:
        """Stop routing to a version (the caller retires it); returns it, if it was served."""
        with self._lock:
            versions = self._versions.get(name, {})
            old = versions.pop(version, None)
            if not versions:
                self._versions.pop(name, None)
        return old

    # --- reads -----------------------------------------------------------------------------------
    def served(self) -> list[ServedVersion]:
        """Every served version, by name then version."""
        with self._lock:
            return [
                ServedVersion(name, v, service, v == max(versions))
                for name, versions in sorted(self._versions.items())
                for v, service in sorted(versions.items())
            ]

    def versions_of(self, name: str) -> dict[int, Service]:
        with self._lock:
            return dict(self._versions.get(name, {}))

    def default_version(self, name: str) -> int | None:
        with self._lock:
            versions = self._versions.get(name)
            return max(versions) if versions else None

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._versions)

    def lease(
        self, ctx: RequestContext | None, model: str | None = None, version: str | None = None
    ) -> Service:
        """The service for what a request named, leased until its response is sent.

        ``model`` may be ``NAME/VERSION``.  Errors: 503 while nothing is loaded, 400 when
        several models are served and none was named, 403 for a model the key may not use, 404
        for an unknown model or version.
        """
        if model is not None and version is None and "/" in model:
            model, version = model.split("/", 1)
        with self._lock:
            if not self._versions:
                raise ApiError(
                    503, "model not ready", headers={"Retry-After": "1"}, outcome="not_ready"
                )
            name = model if model is not None else self._unnamed()
            check_model_allowed(ctx, name)
            versions = self._versions.get(name)
            if versions is None:
                raise ApiError(404, f"unknown model {shown(name)}")
            if version is None:
                number = max(versions)
            elif _VERSION.fullmatch(version) and int(version) in versions:
                number = int(version)
            else:
                raise ApiError(404, f"unknown model {shown(name)} version {shown(version, 16)}")
            service = versions[number]
            if ctx is not None:  # without a context no guard would release it: nothing held
                service.acquire()
        if ctx is not None:
            ctx.leases.append(service)
            ctx.model, ctx.version = name, str(number)
        return service

    def _unnamed(self) -> str:
        if self.default_model is not None:
            return self.default_model
        if len(self._versions) == 1:
            return next(iter(self._versions))
        raise ApiError(
            400,
            f"this server serves {len(self._versions)} models: name one with \"model\" "
            "(NAME or NAME/VERSION), or start the server with --default-model",
        )


def check_model_allowed(ctx: RequestContext | None, name: str) -> None:
    """403 unless the request's key may use ``name`` (keys restricted to some models)."""
    if ctx is not None and ctx.allowed_models is not None and name not in ctx.allowed_models:
        raise ApiError(403, f"this API key may not use model {shown(name)}")


class Lifecycle(Protocol):
    """What loads the models and changes the set: the app's lifespan drives it."""

    models: ModelSet

    @property
    def ready(self) -> bool: ...

    def start(self) -> None: ...

    def drain(self) -> None: ...

    def stop(self) -> None: ...


class SingleBundle:
    """One bundle, served as version 1 of its model; a failed load stops the server."""

    def __init__(self, service: Service, on_ready: Callable[[], None] | None = None) -> None:
        self.service = service
        self.models = ModelSet()
        self._on_ready = on_ready

    @property
    def ready(self) -> bool:
        return self.service.ready

    def start(self) -> None:
        self.service.load()
        name = self.service.model_name
        if name is not None and self.service.ready:
            self.models.put(name, 1, self.service)
            if self._on_ready is not None:
                self._on_ready()

    def drain(self) -> None:
        self.service.drain()

    def stop(self) -> None:
        self.service.stop()
