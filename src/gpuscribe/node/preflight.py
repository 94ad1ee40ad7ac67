"""What a node checks before it starts anything: the API's port is free, and the default model
is one this node can run. Each failure is a `ConfigError` naming the setting, so that `serve`
stops with one line instead of a traceback, and before any worker has started."""

from __future__ import annotations

import contextlib
import errno
import socket

from gpuscribe.config import ConfigError, Settings, env_name
from gpuscribe.domain import InvalidRequest
from gpuscribe.workers.models import canonical_name, check_engine, resolve_model


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, for uvicorn to serve on. Binding it first means a busy
    port is reported before the node opens its store or starts a worker."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn binds
    try:
        address = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)[0][4]
    except socket.gaierror as exc:
        raise ConfigError(
            f"invalid setting host={host!r} ({env_name('host')}, --host): {exc.strerror}",
            "host",
        ) from exc
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(_bind_message(host, port, exc), "port") from exc
    sock.set_inheritable(True)
    return sock


def _bind_message(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        why = "it is in use by another process (another gpuscribe serve?)"
    elif exc.errno == errno.EACCES:
        why = "permission denied (ports below 1024 need privileges)"
    elif exc.errno == errno.EADDRNOTAVAIL:
        why = f"{host} is not an address of this machine"
    else:
        why = exc.strerror or str(exc)
    return (
        f"cannot listen on {host}:{port}: {why}; choose another with --port or {env_name('port')}"
    )


def check_default_model(settings: Settings, engine: str) -> None:
    """The default model must be one this node can run with its default engine: otherwise
    every request naming no model would fail, blaming the client."""
    try:
        check_engine(engine)
        if settings.simulate_gpus:
            canonical_name(settings.default_model)
            return
        resolve_model(
            settings.default_model,
            engine,
            models_dir=settings.models_dir,
            allow_downloads=settings.allow_downloads,
            benchmark_only=settings.benchmark_only,
        )
    except InvalidRequest as exc:
        setting = "default_engine" if exc.param == "engine" else "default_model"
        value = engine if setting == "default_engine" else settings.default_model
        hint = ""
        if exc.code == "model_not_found":
            hint = f", or fetch it first: gpuscribe models pull {value} --engine {engine}"
        raise ConfigError(
            f"invalid setting {setting}={value!r} ({env_name(setting)}): {exc.message}{hint}",
            setting,
        ) from exc
