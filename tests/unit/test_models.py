"""resolve_model() and available_models(): names to weights, per engine, never downloading."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuscribe.domain import InvalidRequest
from gpuscribe.workers.models import (
    CT2,
    ENGINES,
    HF,
    ModelSource,
    available_models,
    bundled_model_dir,
    resolve_model,
)


def _ct2_dir(root: Path, *parts: str) -> Path:
    path = root.joinpath(*parts)
    path.mkdir(parents=True)
    (path / "model.bin").write_bytes(b"ct2")
    return path


def _hf_dir(root: Path, *parts: str) -> Path:
    path = root.joinpath(*parts)
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"hf")
    return path


def test_engines() -> None:
    assert ENGINES == ("faster-whisper", "transformers")


def test_tiny_en_is_bundled_for_faster_whisper() -> None:
    source = resolve_model("tiny.en", "faster-whisper")
    bundled = str(bundled_model_dir())
    assert source == ModelSource("tiny.en", "faster-whisper", bundled, False, format=CT2)
    assert (Path(str(source.path)) / "model.bin").is_file()


def test_names_are_canonical(tmp_path: Path) -> None:
    _ct2_dir(tmp_path, "large-v3-turbo")
    source = resolve_model(" Turbo ", "faster-whisper", models_dir=str(tmp_path))
    assert source.name == "large-v3-turbo"
    assert source.path == str(tmp_path / "large-v3-turbo")


def test_unknown_model_lists_known_ones() -> None:
    with pytest.raises(InvalidRequest) as caught:
        resolve_model("huge-v9", "faster-whisper")
    assert caught.value.code == "unknown_model"
    assert caught.value.message.startswith("unknown model 'huge-v9': known models are ")
    assert "large-v3" in caught.value.message


def test_unknown_engine() -> None:
    with pytest.raises(InvalidRequest, match=r"unknown engine 'whisper\.cpp'"):
        resolve_model("tiny", "whisper.cpp")


def test_absent_model_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest) as caught:
        resolve_model("small", "faster-whisper", models_dir=str(tmp_path))
    assert caught.value.code == "model_not_found"
    assert "model 'small' is not available on this server" in caught.value.message
    assert str(tmp_path / "small") in caught.value.message


def test_models_dir_by_engine_comes_first(tmp_path: Path) -> None:
    _ct2_dir(tmp_path, "base")
    own = _ct2_dir(tmp_path, "faster-whisper", "base")
    assert resolve_model("base", "faster-whisper", models_dir=str(tmp_path)).path == str(own)


def test_a_directory_without_weights_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text("{}")
    with pytest.raises(InvalidRequest):
        resolve_model("base", "faster-whisper", models_dir=str(tmp_path))
    with pytest.raises(InvalidRequest):
        resolve_model("base", "transformers", models_dir=str(tmp_path))


def test_transformers_checkpoint(tmp_path: Path) -> None:
    path = _hf_dir(tmp_path, "transformers", "small")
    source = resolve_model("small", "transformers", models_dir=str(tmp_path))
    assert source == ModelSource("small", "transformers", str(path), benchmark_only=False)


def test_bundled_ct2_model_serves_transformers_too() -> None:
    source = resolve_model("tiny.en", "transformers")
    assert source == ModelSource("tiny.en", "transformers", str(bundled_model_dir()), format=CT2)


def test_transformers_prefers_a_checkpoint_to_a_ct2_directory(tmp_path: Path) -> None:
    ct2 = _ct2_dir(tmp_path, "base")
    assert resolve_model("base", "transformers", models_dir=str(tmp_path)).format == CT2
    _hf_dir(tmp_path, "transformers", "base")
    source = resolve_model("base", "transformers", models_dir=str(tmp_path))
    assert (source.format, source.path) == (HF, str(tmp_path / "transformers" / "base"))
    assert resolve_model("base", "faster-whisper", models_dir=str(tmp_path)).path == str(ct2)


def test_transformers_without_a_local_model_points_at_benchmark_only(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="benchmark-only"):
        resolve_model("small", "transformers", models_dir=str(tmp_path))


def test_transformers_benchmark_only_builds_random_weights() -> None:
    source = resolve_model("large", "transformers", benchmark_only=True)
    assert source == ModelSource("large-v3", "transformers", None, benchmark_only=True)


def test_benchmark_only_does_not_apply_to_faster_whisper() -> None:
    with pytest.raises(InvalidRequest):
        resolve_model("medium", "faster-whisper", benchmark_only=True)


def test_downloads_are_left_to_the_engine() -> None:
    source = resolve_model("small.en", "faster-whisper", allow_downloads=True)
    assert (source.path, source.download, source.hub_id) == (None, True, "small.en")
    hf = resolve_model("turbo", "transformers", allow_downloads=True)
    assert hf.hub_id == "openai/whisper-large-v3-turbo"


def test_available_models(tmp_path: Path) -> None:
    _ct2_dir(tmp_path, "base")
    _hf_dir(tmp_path, "medium")
    assert available_models("faster-whisper", models_dir=str(tmp_path)) == ["base", "tiny.en"]
    assert available_models("transformers", models_dir=str(tmp_path)) == [
        "base",
        "medium",
        "tiny.en",
    ]
    everything = available_models("transformers", benchmark_only=True)
    assert "large-v3-turbo" in everything
    assert "turbo" not in everything
    assert available_models("faster-whisper", allow_downloads=True) == everything
