"""node.preflight: the port and the default model, checked before a node starts anything."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from gpuscribe.config import ConfigError, Settings
from gpuscribe.node.preflight import bind_listener, check_default_model


def test_binds_a_free_port_and_refuses_a_busy_one() -> None:
    first = bind_listener("127.0.0.1", 0)
    try:
        port = first.getsockname()[1]
        with pytest.raises(ConfigError) as raised:
            bind_listener("127.0.0.1", port)
        assert f"cannot listen on 127.0.0.1:{port}" in str(raised.value)
        assert "GPUSCRIBE_PORT" in str(raised.value)
        assert raised.value.setting == "port"
    finally:
        first.close()


def test_localhost_listens_where_clients_connect() -> None:
    sock = bind_listener("localhost", 0)
    try:
        assert sock.family == socket.AF_INET
        port = sock.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        sock.close()


def test_an_unknown_host_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=re.escape("host='no-such-host.invalid'")):
        bind_listener("no-such-host.invalid", 0)


def test_the_bundled_default_model_is_fine(tmp_path: Path) -> None:
    check_default_model(Settings(data_dir=str(tmp_path)), "faster-whisper")


def test_a_default_model_without_weights_is_named(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path), default_model="large-v3")
    with pytest.raises(ConfigError) as raised:
        check_default_model(settings, "faster-whisper")
    message = str(raised.value)
    assert "default_model='large-v3'" in message and "GPUSCRIBE_DEFAULT_MODEL" in message
    assert "gpuscribe models pull large-v3 --engine faster-whisper" in message


def test_simulated_gpus_need_no_weights(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path), default_model="large-v3", simulate_gpus="1x80GiB")
    check_default_model(settings, "transformers")


def test_a_bad_engine_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape("default_engine='whisper.cpp'")):
        check_default_model(Settings(data_dir=str(tmp_path)), "whisper.cpp")
