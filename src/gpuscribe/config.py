"""Settings: embedded defaults < `gpuscribe.toml` < environment < command-line flags.

The user's design names four variables (`MAX_MEMORY_UTILIZATION`, `CALIBRATION_SAMPLE_SIZE`,
`MEMORY_CONFIDENCE_FACTOR`, `MAX_TASKS_PER_GPU`); they keep those exact names. Every other
setting `foo_bar` reads `GPUSCRIBE_FOO_BAR` and the toml key `foo_bar`. A bad value stops
start-up with `ConfigError` naming the setting, where it came from, and the value.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuscribe.memory.types import GIB

MEMORY_WARNING_BELOW_CAP = 0.05  # the default warning level, as a fraction of total memory

DESIGN_ENV_NAMES = {
    "max_memory_utilization": "MAX_MEMORY_UTILIZATION",
    "calibration_sample_size": "CALIBRATION_SAMPLE_SIZE",
    "memory_confidence_factor": "MEMORY_CONFIDENCE_FACTOR",
    "max_tasks_per_gpu": "MAX_TASKS_PER_GPU",
}


def default_data_dir(env: Mapping[str, str] | None = None) -> str:
    """Where the store, audio and models live when no setting says: `$XDG_DATA_HOME/gpuscribe`
    (`~/.local/share/gpuscribe`), the same wherever a command runs, so that `serve`,
    `estimate` and `calibrate` share their calibration."""
    env = os.environ if env is None else env
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "gpuscribe")


class ConfigError(ValueError):
    """A setting has a value gpuscribe cannot run with. `setting` names it, when one does."""

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


@dataclass(frozen=True, slots=True)
class Settings:
    # The user's design.
    max_memory_utilization: float = 0.9
    calibration_sample_size: int = 50
    memory_confidence_factor: float = 1.2
    max_tasks_per_gpu: int = 5
    # Service.
    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: str = field(default_factory=lambda: default_data_dir())  # see default_data_dir
    store: str = ""  # empty: sqlite:///<data_dir>/gpuscribe.db
    node_name: str = field(default_factory=socket.gethostname)
    simulate_gpus: str = ""  # e.g. "2x24GiB" or "1x80GiB,1x40GiB"
    devices: str = ""  # empty: every local GPU (the CPU if none); "cpu"; or GPU indexes/UUIDs
    # Memory.
    system_reserve_bytes: int = 1 * GIB
    # Early warning (memory/warning.py): a GPU whose used memory passes the level, or whose other
    # processes grow while tasks run, takes no new task until it has been calm for a while.
    memory_warning_fraction: float = 0.0  # of total memory; 0: 0.05 below the cap
    memory_warning_clear_margin: float = 0.05  # calm: used below the level less this fraction
    memory_warning_foreign_growth_bytes: int = 1 * GIB
    memory_warning_clear_seconds: float = 10.0
    # Models and engines.
    default_model: str = "tiny.en"
    default_engine: str = ""  # empty: faster-whisper on the CPU, transformers on GPUs
    models_dir: str = ""  # empty: <data_dir>/models (see `models_path`)
    cpu_threads: int = 0  # 0: let the engine choose
    cpu_max_tasks: int = 2  # tasks at once on the CPU device (cores, not memory, limit it)
    benchmark_only: bool = False  # absent weights are built random: outputs are not transcripts
    # benchmark-only: tokens decoded per 30 s window (224: worst case; 0: drawn per window, mean
    # about 100, 10 to 224, so that a batch's rows end at different steps)
    benchmark_tokens: int = 224
    batch_rows: int = 0  # rows of a model's GPU batch (transformers); 0: memory/batch.py decides
    # How a batch's cache holds the windows' audio: "pooled" (one copy a window, beside rows of
    # self-attention: a window of 5 beams takes 1.9 rows' bytes instead of 5; needs Triton on
    # CUDA; engines/batched/slots.py), "per-row" (a copy in every row), or "auto": pooled on
    # GPUs where Triton's kernel passes its trial at load, per-row elsewhere
    batch_layout: str = "auto"
    allow_downloads: bool = False  # fetch absent models from the hub (never in tests)
    simulation_speed: float = 200.0  # simulated GPUs: audio seconds transcribed per second
    # Scheduling.
    scheduler_interval_seconds: float = 0.2
    aging_seconds: float = 120.0  # a queued task gains one priority level per this many seconds
    starvation_seconds: float = 300.0  # after this, the oldest blocked task stops backfill
    # Tasks.
    task_timeout_seconds: float = 3600.0
    max_attempts: int = 3
    lease_seconds: float = 60.0  # a heartbeat renews it; generous for loaded machines
    heartbeat_seconds: float = 5.0
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 300.0
    retention_seconds: float = 7 * 24 * 3600.0
    # Limits.
    max_upload_bytes: int = 1 * GIB
    max_audio_seconds: float = 4 * 3600.0
    max_queue_length: int = 10_000
    # Security.
    api_keys: tuple[str, ...] = ()
    insecure: bool = False

    @property
    def store_url(self) -> str:
        return self.store or f"sqlite:///{Path(self.data_dir) / 'gpuscribe.db'}"

    @property
    def audio_dir(self) -> Path:
        return Path(self.data_dir) / "audio"

    @property
    def models_path(self) -> Path:
        """Where local models live: `<models_path>/<engine>/<model>` (a CTranslate2 directory
        for faster-whisper, a Hugging Face checkpoint for transformers)."""
        return Path(self.models_dir) if self.models_dir else Path(self.data_dir) / "models"

    @property
    def memory_warning_level(self) -> float:
        """The fraction of a GPU's total memory whose use warns: the setting, or by default
        `MEMORY_WARNING_BELOW_CAP` below the cap (never under half of it)."""
        if self.memory_warning_fraction:
            return self.memory_warning_fraction
        cap = self.max_memory_utilization
        return max(cap - MEMORY_WARNING_BELOW_CAP, cap / 2)

    def validate(self) -> Settings:
        for name, check, rule in _RULES:
            value = getattr(self, name)
            if not check(value):
                raise ConfigError(f"invalid setting {name}={value!r}: must be {rule}", name)
        for name, checker in _CHECKS:
            problem = checker(getattr(self, name))
            if problem:
                raise ConfigError(
                    f"invalid setting {name}={getattr(self, name)!r}: {problem}", name
                )
        self._check_warning_level()
        return self

    def _check_warning_level(self) -> None:
        """A memory warning ends once used memory is below the level less the clear margin:
        at or below zero it could never end, and the GPU would take no task again."""
        level, margin = self.memory_warning_level, self.memory_warning_clear_margin
        if margin < level:
            return
        name = (
            "memory_warning_fraction" if self.memory_warning_fraction else "max_memory_utilization"
        )
        raise ConfigError(
            f"invalid setting {name}={getattr(self, name)!r}: the memory warning level "
            f"({level:g} of a GPU's memory) must be above memory_warning_clear_margin "
            f"({margin:g}), or a warning could never end",
            name,
        )


_RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("max_memory_utilization", lambda v: 0.0 < v <= 1.0, "a fraction in (0, 1]"),
    ("calibration_sample_size", lambda v: v >= 1, "at least 1"),
    ("memory_confidence_factor", lambda v: v >= 0.0, "zero or more"),
    ("max_tasks_per_gpu", lambda v: v >= 1, "at least 1"),
    ("port", lambda v: 0 <= v <= 65535, "a TCP port (0-65535)"),
    ("system_reserve_bytes", lambda v: v >= 0, "zero or more"),
    ("memory_warning_fraction", lambda v: 0.0 <= v <= 1.0, "0 (below the cap) or in (0, 1]"),
    ("memory_warning_clear_margin", lambda v: 0.0 <= v < 1.0, "a fraction in [0, 1)"),
    ("memory_warning_foreign_growth_bytes", lambda v: v > 0, "more than 0"),
    ("memory_warning_clear_seconds", lambda v: v >= 0, "zero or more"),
    ("cpu_threads", lambda v: v >= 0, "zero or more"),
    ("cpu_max_tasks", lambda v: v >= 1, "at least 1"),
    ("simulation_speed", lambda v: v > 0, "more than 0"),
    ("benchmark_tokens", lambda v: 0 <= v <= 224, "between 0 (drawn per window) and 224"),
    ("batch_rows", lambda v: v >= 0, "zero (chosen from the GPU's memory) or more"),
    ("scheduler_interval_seconds", lambda v: v > 0, "more than 0"),
    ("aging_seconds", lambda v: v > 0, "more than 0"),
    ("starvation_seconds", lambda v: v > 0, "more than 0"),
    ("task_timeout_seconds", lambda v: v > 0, "more than 0"),
    ("max_attempts", lambda v: v >= 1, "at least 1"),
    ("lease_seconds", lambda v: v > 0, "more than 0"),
    ("heartbeat_seconds", lambda v: v > 0, "more than 0"),
    ("retry_base_seconds", lambda v: v >= 0, "zero or more"),
    ("retry_max_seconds", lambda v: v >= 0, "zero or more"),
    ("retention_seconds", lambda v: v > 0, "more than 0"),
    ("max_upload_bytes", lambda v: v > 0, "more than 0"),
    ("max_audio_seconds", lambda v: v > 0, "more than 0"),
    ("max_queue_length", lambda v: v >= 1, "at least 1"),
]


def _store_problem(url: str) -> str | None:
    if not url:
        return None
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("postgresql", "postgres", "memory"):
        return None
    if scheme == "sqlite":
        return (
            None
            if url.lower().startswith("sqlite:///") and len(url) > 10
            else ("expected sqlite:///relative/path.db or sqlite:////absolute/path.db")
        )
    return "expected sqlite:///path.db, postgresql://user@host/db or memory://"


def _simulation_problem(spec: str) -> str | None:
    if not spec.strip():
        return None
    from gpuscribe.telemetry.simulated import parse_simulation_spec

    try:
        parse_simulation_spec(spec)
    except ValueError as exc:
        return str(exc)
    return None


def _model_problem(name: str) -> str | None:
    from gpuscribe.memory.architectures import canonical_model_name, known_model_names

    if canonical_model_name(name) is not None:
        return None
    close = difflib.get_close_matches(name.strip().lower(), known_model_names(), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown model: {hint}known models are {', '.join(known_model_names())}"


def _layout_problem(name: str) -> str | None:
    return None if name in ("auto", "per-row", "pooled") else "expected auto, per-row or pooled"


def _engine_problem(name: str) -> str | None:
    engines = ("faster-whisper", "transformers")
    if not name or name in engines:
        return None
    return f"expected {' or '.join(engines)} (or empty: chosen by device)"


_CHECKS: list[tuple[str, Callable[[Any], str | None]]] = [
    ("store", _store_problem),
    ("simulate_gpus", _simulation_problem),
    ("default_model", _model_problem),
    ("default_engine", _engine_problem),
    ("batch_layout", _layout_problem),
]

# Variables of gpuscribe's that are not settings (the client's, the config file's, the tests').
OTHER_VARIABLES = frozenset({"GPUSCRIBE_CONFIG", "GPUSCRIBE_SERVER", "GPUSCRIBE_API_KEY"})
OTHER_PREFIXES = ("GPUSCRIBE_TEST_",)


def unknown_variables(env: Mapping[str, str] | None = None) -> list[str]:
    """A warning for each `GPUSCRIBE_*` variable that names no setting (a typo is otherwise
    silently ignored), naming the closest setting."""
    env = os.environ if env is None else env
    known = {env_name(name) for name in _fields()} | OTHER_VARIABLES
    warnings = []
    for var in sorted(env):
        if not var.startswith("GPUSCRIBE_") or var in known or var.startswith(OTHER_PREFIXES):
            continue
        suffixes = {name.removeprefix("GPUSCRIBE_"): name for name in known}
        close = difflib.get_close_matches(var.removeprefix("GPUSCRIBE_"), sorted(suffixes), n=1)
        hint = f"; did you mean {suffixes[close[0]]}?" if close else ""
        warnings.append(f"environment variable {var} is not a gpuscribe setting: ignored{hint}")
    return warnings


def env_name(setting: str) -> str:
    return DESIGN_ENV_NAMES.get(setting, f"GPUSCRIBE_{setting.upper()}")


def _fields() -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(Settings)}


def _convert(name: str, raw: Any, source: str) -> Any:
    """Turn a raw value (a string from the environment, or a toml value) into the field's type."""
    default = getattr(Settings(), name)
    try:
        if isinstance(default, bool):
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if isinstance(default, tuple):
            items = raw if isinstance(raw, list) else str(raw).split(",")
            return tuple(str(i).strip() for i in items if str(i).strip())
        if isinstance(default, int):
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            return int(_parse_size(raw) if name.endswith("_bytes") else raw)
        if isinstance(default, float):
            return float(raw)
        return str(raw)
    except (TypeError, ValueError) as exc:
        kind = type(default).__name__
        raise ConfigError(
            f"invalid setting {name}={raw!r} (from {source}): expected {kind}"
        ) from exc


def _parse_size(raw: Any) -> int:
    """`1073741824`, `1GiB`, `512MiB`, `2GB`."""
    if isinstance(raw, int):
        return raw
    text = str(raw).strip()
    units = {
        "KIB": 1024,
        "MIB": 1024**2,
        "GIB": 1024**3,
        "TIB": 1024**4,
        "KB": 1000,
        "MB": 1000**2,
        "GB": 1000**3,
        "TB": 1000**4,
        "B": 1,
    }
    upper = text.upper()
    for unit, scale in units.items():
        if upper.endswith(unit):
            return int(float(upper[: -len(unit)].strip()) * scale)
    return int(text)


def load_settings(
    *,
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
) -> Settings:
    """Build validated settings. `flags` holds command-line values (None means not given)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}  # setting -> where its value came from
    path = Path(config_file or env.get("GPUSCRIBE_CONFIG") or "gpuscribe.toml")
    if path.exists():
        try:
            table = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, OSError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        table = table.get("gpuscribe", table)
        for key, raw in table.items():
            if key not in _fields():
                close = difflib.get_close_matches(key, sorted(_fields()), n=1)
                hint = f": did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"unknown setting {key!r} in {path}{hint}")
            values[key] = _convert(key, raw, str(path))
            sources[key] = str(path)
    elif config_file is not None:
        raise ConfigError(f"config file {path} does not exist")
    for name in _fields():
        var = env_name(name)
        if var in env:
            sources[name] = f"environment variable {var}"
            values[name] = _convert(name, env[var], sources[name])
    for name, raw in (flags or {}).items():
        if raw is None:
            continue
        if name not in _fields():
            raise ConfigError(f"unknown setting {name!r}")
        sources[name] = f"--{name.replace('_', '-')}"
        values[name] = _convert(name, raw, sources[name])
    try:
        settings = Settings(**values).validate()
    except ConfigError as exc:
        source = sources.get(exc.setting or "")
        if source is None:
            raise
        raise ConfigError(f"{exc} (from {source})", exc.setting) from None
    data_dir = Path(settings.data_dir).expanduser()
    if not data_dir.is_absolute():  # relative to the file that says it, else to the cwd
        base = path.parent if sources.get("data_dir") == str(path) else Path.cwd()
        data_dir = base / data_dir
    settings = dataclasses.replace(settings, data_dir=str(data_dir.resolve()))
    if not settings.models_dir:
        settings = dataclasses.replace(settings, models_dir=str(settings.models_path))
    return settings
