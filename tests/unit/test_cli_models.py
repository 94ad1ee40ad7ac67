"""`gpuscribe models` and `gpuscribe models pull`, without any network: the listing over a
models directory made here, a pull whose download is replaced by a local copy, and the real
pull failing offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpuscribe.cli import commands_models
from gpuscribe.cli.main import main

GPUSCRIBE = str(Path(sys.executable).with_name("gpuscribe"))


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("GPUSCRIBE_"):
            monkeypatch.delenv(name)


def ct2_model(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "model.bin").write_bytes(b"weights")
    return path


def listing(capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, str | None]]:
    assert main(["models", "--json", *args]) == 0
    rows: list[dict[str, str | None]] = json.loads(capsys.readouterr().out)
    return rows


def test_lists_every_model_per_engine_with_where_it_lives(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = ct2_model(tmp_path / "data" / "models" / "faster-whisper" / "small")
    rows = listing(capsys, "--data-dir", str(tmp_path / "data"))
    by_key = {(r["engine"], r["model"]): r for r in rows}
    assert by_key["faster-whisper", "small"] == {
        "engine": "faster-whisper",
        "model": "small",
        "state": "local",
        "path": str(small),
    }
    assert by_key["faster-whisper", "tiny.en"]["state"] == "bundled"
    assert by_key["faster-whisper", "large-v3"] == {
        "engine": "faster-whisper",
        "model": "large-v3",
        "state": "absent",
        "path": None,
    }
    assert {r["engine"] for r in rows} == {"faster-whisper", "transformers"}


def test_models_dir_setting_and_download_states(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ct2_model(tmp_path / "mine" / "faster-whisper" / "base")
    rows = listing(
        capsys, "--engine", "faster-whisper", "--models-dir", str(tmp_path / "mine"),
        "--allow-downloads",
    )  # fmt: skip
    states = {r["model"]: r["state"] for r in rows}
    assert states["base"] == "local"
    assert states["large-v3"] == "download"
    assert {r["engine"] for r in rows} == {"faster-whisper"}


def test_table_names_the_models_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "--data-dir", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert f"models directory: {tmp_path / 'd' / 'models'}" in out
    assert "gpuscribe models pull NAME" in out


def test_pull_puts_the_model_where_the_server_finds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fetched: list[tuple[str, str]] = []

    def fake_download(model: str, engine: str, into: Path) -> None:
        fetched.append((model, engine))
        ct2_model(into)

    monkeypatch.setattr(commands_models, "_download", fake_download)
    data = str(tmp_path / "data")
    assert main(["models", "pull", "Systran/faster-whisper-large-v3", "--data-dir", data]) == 0
    target = tmp_path / "data" / "models" / "faster-whisper" / "large-v3"
    assert capsys.readouterr().out.strip() == str(target)
    assert fetched == [("large-v3", "faster-whisper")]
    assert not target.with_name("large-v3.partial").exists()
    rows = listing(capsys, "--data-dir", data, "--engine", "faster-whisper")
    assert {"engine": "faster-whisper", "model": "large-v3", "state": "local",
            "path": str(target)} in rows  # fmt: skip
    assert main(["models", "pull", "large-v3", "--data-dir", data]) == 0
    assert fetched == [("large-v3", "faster-whisper")]  # not fetched twice
    assert "already here" in capsys.readouterr().err


def test_pull_of_an_unknown_model_names_the_known_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "pull", "large-v4", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "unknown model 'large-v4'" in err and "large-v3" in err


def test_pull_offline_fails_with_a_message(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUSCRIBE_")}
    env["HF_HUB_OFFLINE"] = "1"
    for engine in ("faster-whisper", "transformers"):
        proc = subprocess.run(
            [GPUSCRIBE, "models", "pull", "small", "--engine", engine,
             "--data-dir", str(tmp_path)],
            capture_output=True, text=True, env=env, timeout=120, check=False,
        )  # fmt: skip
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        assert f"cannot download small for {engine}" in proc.stderr
        assert not (tmp_path / "models" / engine / "small").exists()


@pytest.mark.parametrize(
    ("model", "engine", "repository"),
    [
        ("large-v3", "faster-whisper", "Systran/faster-whisper-large-v3"),
        ("large-v3-turbo", "faster-whisper", "mobiuslabsgmbh/faster-whisper-large-v3-turbo"),
        ("tiny.en", "faster-whisper", "Systran/faster-whisper-tiny.en"),
        ("large-v3", "transformers", "openai/whisper-large-v3"),
    ],
)
def test_pull_fetches_the_repository_the_engine_uses(
    model: str, engine: str, repository: str
) -> None:
    found, patterns = commands_models.hub_repository(model, engine)
    assert found == repository
    assert ("model.bin" in patterns) == (engine == "faster-whisper")
