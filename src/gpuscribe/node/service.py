"""Run a node, with or without the HTTP API, until SIGINT or SIGTERM."""

from __future__ import annotations

import ipaddress
import logging
import signal
import threading

from gpuscribe.config import ConfigError, Settings
from gpuscribe.node.cluster import Role
from gpuscribe.node.node import Node

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
    if with_api:
        check_exposure(settings)
    role = Role.WORKER if not with_api else (Role.SERVE if with_workers else Role.API)
    node = Node(settings, role=role)
    node.start()
    try:
        if with_api:
            _serve_http(node)
        else:
            _wait_for_signal()
    finally:
        node.stop()


def _serve_http(node: Node) -> None:
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
    log.info("serving on http://%s:%d", node.settings.host, node.settings.port)
    server.run()


def _wait_for_signal() -> None:
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    log.info("worker node running; Ctrl-C stops it")
    stop.wait()
