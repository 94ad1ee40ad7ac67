"""`gpuscribe estimate`: computed locally from settings, store samples, profiles, the prior."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuscribe.cli.main import main
from gpuscribe.config import default_data_dir
from gpuscribe.memory.batch import shape_of
from gpuscribe.memory.calibration import occupancy_sample
from gpuscribe.memory.prior import CPU_RUNTIME_BYTES
from gpuscribe.memory.types import GIB, CalibrationSample, ModelKey, ProfileKey
from gpuscribe.store.open import open_store

FIELDS = {
    "weights_bytes",
    "working_bytes",
    "context_bytes",
    "total_bytes",
    "source",
    "model",
    "gpu_name",
    "sample_count",
}


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    for var in (
        "MEMORY_CONFIDENCE_FACTOR",
        "CALIBRATION_SAMPLE_SIZE",
        "GPUSCRIBE_STORE",
        "GPUSCRIBE_DATA_DIR",
        "GPUSCRIBE_SIMULATE_GPUS",
        "GPUSCRIBE_DEFAULT_ENGINE",
        "GPUSCRIBE_BATCH_ROWS",
    ):
        monkeypatch.delenv(var, raising=False)


def run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    assert main(["estimate", "--json", *argv]) == 0
    data = json.loads(capsys.readouterr().out)
    assert isinstance(data, dict)
    return data


def test_json_fields_and_total(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model", "large-v3", "--gpu-name", "NVIDIA A100-SXM4-80GB", "--gpu-memory", "80"]
    data = run_json(argv, capsys)
    assert set(data) >= FIELDS | {"batch_bytes", "batch_rows"}
    parts = [data[f"{p}_bytes"] for p in ("weights", "batch", "working", "context")]
    assert all(isinstance(p, int) and p > 0 for p in parts)
    assert data["total_bytes"] == sum(parts)  # type: ignore[arg-type]
    assert data["source"] == "prior"
    assert (data["model"], data["engine"]) == ("large-v3", "transformers")
    assert data["batch_rows"] == 168  # memory/batch.py's rule on 80 GiB at the 0.9 cap


@pytest.mark.parametrize(
    ("model", "gib", "rows"),
    [("large-v3", "24", 32), ("large-v3", "141", 256), ("turbo", "24", 208)],  # pooled (auto)
)
def test_the_batch_rows_follow_the_gpus_memory(
    model: str, gib: str, rows: int, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--model", model, "--gpu-name", "NVIDIA X", "--gpu-memory", gib]
    data = run_json(argv, capsys)
    assert data["batch_rows"] == rows
    assert data["total_bytes"] <= float(gib) * GIB * 0.9  # type: ignore[operator]


def test_the_batch_rows_setting_wins(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GPUSCRIBE_BATCH_ROWS", "48")
    data = run_json(
        ["--model", "large-v3", "--gpu-name", "NVIDIA X", "--gpu-memory", "141"], capsys
    )
    assert data["batch_rows"] == 48


def test_the_text_names_the_batch(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["estimate", "--model", "large-v3", "--gpu-name", "NVIDIA X", "--gpu-memory", "24"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "32 rows of cache, and workspace" in out
    no_batch = ["estimate", "--gpu-name", "NVIDIA X", "--engine", "faster-whisper"]
    assert main(no_batch) == 0
    assert "rows of cache" not in capsys.readouterr().out


def test_h100_profile_measured_by_calibrate_is_shipped(capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(["--model", "large-v3", "--gpu-name", "NVIDIA H100 80GB HBM3"], capsys)
    assert data["source"] == "profile"


def test_shipped_profile_is_used(capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(
        ["--model", "turbo", "--gpu-name", "NVIDIA H200", "--compute-type", "float16"], capsys
    )
    assert data["source"] == "profile"
    assert data["model"] == "large-v3-turbo"


def test_cpu_context_is_the_workers_own_memory(capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(["--gpu-name", "CPU (test)"], capsys)
    assert data["context_bytes"] == CPU_RUNTIME_BYTES
    assert data["engine"] == "faster-whisper"
    assert data["model"] == "tiny.en"


def test_unknown_model_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", "--model", "large-v4"]) == 1
    err = capsys.readouterr().err
    assert "unknown model 'large-v4'" in err and "large-v3" in err


def test_the_data_dir_does_not_depend_on_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Samples stored under the default data dir are found from any directory."""
    data = Path(default_data_dir())
    assert data.is_absolute() and data.parent == tmp_path / "xdg"
    data.mkdir(parents=True)
    store = open_store(f"sqlite:///{data / 'gpuscribe.db'}")
    key = ProfileKey("CPU (test)", "faster-whisper", "tiny.en", "default", 1, 5)
    store.add_sample(CalibrationSample(key, 123 * 1024**2, None, 99 * 1024**2, 1.0))
    store.close()
    for where in (tmp_path, tmp_path / "elsewhere"):
        where.mkdir(exist_ok=True)
        monkeypatch.chdir(where)
        result = run_json(["--gpu-name", "CPU (test)"], capsys)
        assert (result["source"], result["sample_count"]) == ("calibrated", 1)
        assert result["context_bytes"] == 99 * 1024**2


def test_calibration_samples_come_from_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = ProfileKey("NVIDIA L4", "faster-whisper", "small", "float16", 1, 5)
    store = open_store(f"sqlite:///{tmp_path / 'data' / 'gpuscribe.db'}")
    for i in range(3):
        store.add_sample(CalibrationSample(key, GIB + i, None, None, measured_at=float(i)))
    model = ModelKey("transformers", "small", "float16")
    for rows in (16, 64):
        store.add_sample(
            occupancy_sample(
                "NVIDIA L4", model, rows_in_use=rows, workspace_bytes=GIB + rows * 1024**2,
                weights_bytes=None, context_bytes=None, measured_at=1.0,
            )
        )  # fmt: skip
    store.close()
    argv = [
        "--data-dir",
        str(tmp_path / "data"),
        "--model",
        "small",
        "--gpu-name",
        "NVIDIA L4",
        "--compute-type",
        "float16",
        "--engine",
        "faster-whisper",
    ]
    data = run_json(argv, capsys)
    assert data["source"] == "calibrated"
    assert data["sample_count"] == 3
    assert data["working_bytes"] >= GIB + 2  # type: ignore[operator]
    argv[-1] = "transformers"  # the batch: its workspace from the occupancy samples
    data = run_json([*argv, "--gpu-memory", "22.5"], capsys)
    assert (data["source"], data["sample_count"]) == ("calibrated", 2)
    shape = shape_of("small", "float16")
    assert shape is not None
    batch_rows = data["batch_rows"]
    assert isinstance(batch_rows, int)
    per_row = 1024**2 + shape.pooled_per_row_bytes  # the fit's, and the pooled steps' (auto)
    assert data["batch_bytes"] == batch_rows * shape.row_bytes + GIB + batch_rows * per_row


def test_absent_store_is_not_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_json(["--data-dir", str(tmp_path / "none"), "--gpu-name", "NVIDIA L4"], capsys)
    assert not (tmp_path / "none").exists()


def test_simulated_device_is_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    data = run_json(["--simulate-gpus", "1x24GiB"], capsys)
    assert data["gpu_name"] == "Simulated GPU 24GiB"


def test_human_output_names_components_and_source(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", "--gpu-name", "NVIDIA H200", "--model", "base"]) == 0
    out = capsys.readouterr().out
    for word in ("weights", "working", "context", "total", "GiB", "source: profile"):
        assert word in out
