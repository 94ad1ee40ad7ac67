"""Run a node, with or without the HTTP API, until SIGINT or SIGTERM."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import signal
import socket
import threading

from gpuscribe.config import ConfigError, Settings
from gpuscribe.node.cluster import Role
from gpuscribe.node.node import Node
from gpuscribe.node.preflight import bind_listener, check_default_model

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Listening beyond loopback without API keys exposes every task: refuse unless --insecure."""
    if is_loopback(settings.host) or settings.api_keys or settings.insecure:
        return
    raise ConfigError(
        f"refusing to listen on {settings.host} without API keys: set GPUSCRIBE_API_KEYS, "
        "or pass --insecure to accept anyone who can reach this port"
    )


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_service(settings: Settings, *, with_api: bool, with_workers: bool = True) -> None:
    """Block serving until a signal asks to stop; always stop the node's workers. Roles:
    API and workers (`serve`), API only (`serve --no-workers`), workers only (`worker`)."""
    if not with_api and not with_workers:
        raise ConfigError("a node without the API and without workers would do nothing")
    listener = None
    if with_api:
        check_exposure(settings)
        listener = bind_listener(settings.host, settings.port)  # before anything starts
    role = Role.WORKER if not with_api else (Role.SERVE if with_workers else Role.API)
    try:
        node = _open_node(settings, role)
    except BaseException:
        if listener is not None:
            listener.close()
        raise
    node.start()
    previous = {sig: signal.signal(sig, _request_stop) for sig in STOP_SIGNALS}
    try:
        try:
            # StopRequested: the signal that stopped uvicorn, raised again once it has shut down.
            with contextlib.suppress(StopRequested):
                if listener is not None:
                    _serve_http(node, listener)
                else:
                    _wait_for_signal()
        finally:
            log.info("stopping: running tasks go back to the queue")
            node.stop()  # a second Ctrl-C here interrupts it: exit 130, workers terminated
            log.info("stopped")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequested(KeyboardInterrupt):
    """SIGINT or SIGTERM: stop in order. uvicorn handles them while it serves and raises them
    again when it has shut down; then, and before it serves, they land here."""


def _request_stop(signum: int, frame: object) -> None:
    raise StopRequested(signum)


def _open_node(settings: Settings, role: Role) -> Node:
    """The node, with its default model checked; a store that cannot be opened is a
    ConfigError naming the setting (the traceback goes to the debug log)."""
    try:
        node = Node(settings, role=role)
    except ConfigError:
        raise
    except Exception as exc:
        log.debug("cannot start the node", exc_info=True)
        raise ConfigError(
            f"cannot start with store={settings.store_url!r} (GPUSCRIBE_STORE) and "
            f"data_dir={settings.data_dir!r} (GPUSCRIBE_DATA_DIR): {type(exc).__name__}: {exc}"
        ) from exc
    try:
        check_default_model(settings, node.default_engine)
    except BaseException:
        node.stop()
        raise
    return node


def _serve_http(node: Node, listener: socket.socket) -> None:
    import uvicorn

    from gpuscribe.api.app import create_app

    config = uvicorn.Config(
        create_app(node),
        host=node.settings.host,
        port=node.settings.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    port = listener.getsockname()[1]
    log.info("serving on http://%s:%d (Ctrl-C stops)", node.settings.host, port)
    server.run(sockets=[listener])


def _wait_for_signal() -> None:
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    log.info("worker node running; Ctrl-C stops it")
    stop.wait()
