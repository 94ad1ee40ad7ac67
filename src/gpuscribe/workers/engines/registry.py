"""Engines by name, configured from the settings."""

from __future__ import annotations

from gpuscribe.config import Settings
from gpuscribe.domain import InvalidRequest
from gpuscribe.workers.base import Engine
from gpuscribe.workers.engines.faster_whisper_engine import FasterWhisperEngine
from gpuscribe.workers.engines.transformers_engine import TransformersEngine
from gpuscribe.workers.models import ENGINES, FASTER_WHISPER, TRANSFORMERS


def create_engine(name: str, settings: Settings) -> Engine:
    """The engine called `name` (`faster-whisper` or `transformers`). Neither imports its heavy
    library before it loads a model."""
    if name == FASTER_WHISPER:
        return FasterWhisperEngine(
            cpu_threads=settings.cpu_threads,
            models_dir=settings.models_dir,
            allow_downloads=settings.allow_downloads,
        )
    if name == TRANSFORMERS:
        return TransformersEngine(
            models_dir=settings.models_dir,
            benchmark_only=settings.benchmark_only,
            allow_downloads=settings.allow_downloads,
            benchmark_tokens=settings.benchmark_tokens,
            batch_layout=settings.batch_layout,
        )
    raise InvalidRequest(
        f"unknown engine {name!r}: known engines are {', '.join(ENGINES)}",
        code="unknown_engine",
        param="engine",
    )
