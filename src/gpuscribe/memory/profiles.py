"""Measured memory profiles shipped with the package, and the ground truth of simulated GPUs.

A profile (`memory/profiles/*.json`) holds, for one GPU model and engine, the CUDA context of a
worker process and, per Whisper model, its weights and its working memory at measured batch
sizes. It was converted once from `measurements/h200-whisper-transformers-fp16.json` by
`convert_measurements`; the package never reads the measurement file at run time.

Working memory of a run is PyTorch's peak *reserved* memory minus the weights: reserved is what
the process holds on the device (NVML adds the context). The beam-search rows of the measurement
are not used: they ran right after a batch-16 run and their reserved figure still holds that
run's cache. Beam search of batch b with k beams is modelled as an effective batch of b x k on
the batch curve, interpolated linearly between measured points and extrapolated linearly past
the largest one.

A model measured as a continuous batch (`gpuscribe calibrate` with the transformers engine on a
GPU) also has a `batch` entry: the workspace of batches of several sizes and its fit
`fixed + per_row x rows` (`memory/batch.py`). `ProfileBook.batch` gives it, with the weights and
the context, to the estimator of a batched model.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, TypeVar

from gpuscribe.memory.architectures import ARCHITECTURES, canonical_model_name, parameter_count
from gpuscribe.memory.batch import Workspace
from gpuscribe.memory.types import GIB, EstimateSource, MemoryEstimate, ProfileKey

PROFILE_FORMAT = 1
# A profile point is one measurement, and points between them are interpolated: estimates
# from a profile carry this margin (calibrated estimates carry mean + std x k instead).
PROFILE_MARGIN = 1.05
_REFERENCE = "h200-transformers-float16.json"  # the measured truth of simulated GPUs
PER_TASK_ENGINE_NOTE = (  # what the shipped profiles say of the batched engine
    " Measured with the per-task transformers engine, before the continuous batch (commit "
    "bed4514); not re-measured with the batched engine (no GPU time was left for it). For the "
    "transformers engine on a real GPU the estimator uses only context_bytes and weights_bytes "
    "of this profile: the batch is charged by the formula of memory/batch.py until `gpuscribe "
    "calibrate` has measured its occupancies on this GPU model. The working points are still "
    "the ground truth of simulated GPUs."
)


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """One model on one GPU model: weights, and working bytes at measured batch sizes."""

    weights_bytes: int
    batch_points: tuple[tuple[int, int], ...]  # greedy: (batch size, working bytes), ascending
    derived_from: str | None = None  # the measured model this one was scaled from, if any
    beam_points: Mapping[int, tuple[tuple[int, int], ...]] = field(default_factory=dict)
    # measured beam search: beam size -> ((batch size, working bytes), ...), ascending batch
    batch_workspace: Workspace | None = None  # the fit of a batch's measured workspace

    @property
    def per_task(self) -> bool:
        """Whether tasks were measured (a model measured only as a batch has no task curve)."""
        return bool(self.batch_points)

    def working_bytes(self, batch_size: int, beam_size: int) -> int:
        """Measured beam widths interpolate over batch on their own curve; others are modelled
        as an effective batch of batch_size x beam_size on the greedy curve."""
        beams = max(1, beam_size)
        if beams in self.beam_points:
            return math.ceil(_interpolate(self.beam_points[beams], max(1, batch_size)))
        effective = max(1, batch_size) * beams
        return math.ceil(_interpolate(self.batch_points, effective))


def _interpolate(points: tuple[tuple[int, int], ...], x: int) -> float:
    if len(points) == 1 or x <= points[0][0]:
        return float(points[0][1])
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    (x0, y0), (x1, y1) = points[-2], points[-1]
    return y1 + (y1 - y0) * (x - x1) / (x1 - x0)


@dataclass(frozen=True, slots=True)
class GpuProfile:
    """Every model measured on one GPU model with one engine."""

    gpu_name_contains: str
    engine: str
    compute_types: frozenset[str]
    context_bytes: int
    models: Mapping[str, ModelProfile]  # canonical model name -> profile, derived ones included

    def matches(self, key: ProfileKey) -> bool:
        return (
            self.gpu_name_contains.upper() in key.gpu_name.upper()
            and key.engine == self.engine
            and key.compute_type in self.compute_types
        )

    def model(self, name: str) -> ModelProfile | None:
        canonical = canonical_model_name(name)
        return None if canonical is None else self.models.get(canonical)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GpuProfile:
        if data.get("format") != PROFILE_FORMAT:
            raise ValueError(f"unsupported profile format {data.get('format')!r}")
        measured = {
            name: _model_from_json(entry)
            for name, entry in data["models"].items()
            if entry.get("points") or (entry.get("batch") or {}).get("fit")
        }
        return cls(
            gpu_name_contains=str(data["gpu_name_contains"]),
            engine=str(data["engine"]),
            compute_types=frozenset(data["compute_types"]),
            context_bytes=int(data["context_bytes"]),
            models={**_derive_missing(measured), **measured},
        )


def _model_from_json(entry: Mapping[str, Any]) -> ModelProfile:
    """Points without `beam_size` (or with 1) are greedy; others form per-beam curves."""
    curves: dict[int, list[tuple[int, int]]] = {}
    for point in entry.get("points") or ():
        beam = int(point.get("beam_size", 1))
        curves.setdefault(beam, []).append((int(point["batch_size"]), int(point["working_bytes"])))
    greedy = curves.pop(1, None) or (curves.pop(min(curves)) if curves else [])
    fit = (entry.get("batch") or {}).get("fit")
    return ModelProfile(
        weights_bytes=int(entry["weights_bytes"]),
        batch_points=tuple(sorted(greedy)),
        beam_points={beam: tuple(sorted(points)) for beam, points in curves.items()},
        batch_workspace=Workspace(int(fit["fixed_bytes"]), int(fit["per_row_bytes"]))
        if fit
        else None,
    )


def _shape(name: str) -> tuple[int, int, int]:
    arch = ARCHITECTURES[name]
    return arch.d_model, arch.encoder_layers, arch.decoder_layers


def _derive_missing(measured: Mapping[str, ModelProfile]) -> dict[str, ModelProfile]:
    """Profiles for known models that were not measured, from a measured model of the same
    width and depth (large-v2 from large-v3, tiny.en from tiny): the same working curve and
    batch workspace, and weights scaled by the ratio of parameter counts (vocabulary and mel
    bins differ)."""
    derived: dict[str, ModelProfile] = {}
    for name in ARCHITECTURES:
        if name in measured:
            continue
        source = next((m for m in sorted(measured) if _shape(m) == _shape(name)), None)
        if source is None:
            continue
        base = measured[source]
        ratio = parameter_count(ARCHITECTURES[name]) / parameter_count(ARCHITECTURES[source])
        derived[name] = ModelProfile(
            round(base.weights_bytes * ratio), base.batch_points, source, base.beam_points,
            base.batch_workspace,
        )  # fmt: skip
    return derived


def convert_measurements(
    data: Mapping[str, Any], *, gpu_name_contains: str = "H200"
) -> dict[str, Any]:
    """Turn the measurement file (figures in GiB) into a profile (figures in bytes). Only the
    greedy batch rows are kept (see the module docstring about the beam rows)."""
    models: dict[str, dict[str, Any]] = {}
    for row in data["rows"]:
        if not row.get("ok") or int(row.get("beams", 1)) != 1:
            continue
        name = canonical_model_name(str(row["model"]))
        if name is None:
            raise ValueError(f"unknown model {row['model']!r} in measurements")
        weights = round(float(row["weights_gb"]) * GIB)
        working = round(float(row["peak_reserved_gb"]) * GIB) - weights
        entry = models.setdefault(name, {"weights_bytes": weights, "points": []})
        entry["points"].append({"batch_size": int(row["batch"]), "working_bytes": working})
    for entry in models.values():
        entry["points"].sort(key=lambda p: p["batch_size"])
    return {
        "format": PROFILE_FORMAT,
        "gpu_name_contains": gpu_name_contains,
        "engine": "transformers",
        "compute_types": ["default", "float16"],
        "context_bytes": round(float(data["ctx_used_gb"]) * GIB),
        "note": "working_bytes = peak reserved - weights, greedy decoding of one 30 s window "
        "per batch item; beam search = effective batch of batch x beams" + PER_TASK_ENGINE_NOTE,
        "models": dict(sorted(models.items())),
    }


@functools.cache
def shipped_profiles() -> tuple[GpuProfile, ...]:
    """The profiles in the package (read once)."""
    folder = resources.files("gpuscribe.memory") / "profiles"
    names = sorted(f.name for f in folder.iterdir() if f.name.endswith(".json"))
    return tuple(GpuProfile.from_json(json.loads((folder / n).read_text())) for n in names)


@dataclass(frozen=True, slots=True)
class ProfileBatch:
    """What a profile says of a batched model: `workspace` replaces the formula's."""

    context_bytes: int
    weights_bytes: int
    workspace: Workspace


K = TypeVar("K")
V = TypeVar("V")


def _memoised(memo: dict[K, V], key: K, find: Callable[[K], V]) -> V:
    """`find(key)`, computed once per key (None answers are kept too)."""
    if key not in memo:
        memo[key] = find(key)
    return memo[key]


class ProfileBook:
    """Looks up the shipped (or given) profiles by ProfileKey. Lookups are memoised: a profile
    estimate does not depend on the audio, and the scheduler asks for the same keys often."""

    def __init__(self, profiles: Iterable[GpuProfile] | None = None) -> None:
        self._profiles = tuple(shipped_profiles() if profiles is None else profiles)
        self._memo: dict[ProfileKey, MemoryEstimate | None] = {}
        self._batch_memo: dict[ProfileKey, ProfileBatch | None] = {}

    def lookup(self, key: ProfileKey) -> MemoryEstimate | None:
        return _memoised(self._memo, key, self._find)

    def batch(self, key: ProfileKey) -> ProfileBatch | None:
        """A batched model's context, weights and workspace fit on this GPU model, with the
        profile's margin; None where no profile measured it as a batch. Memoised, as `lookup`:
        every estimate of a batched task asks."""
        return _memoised(self._batch_memo, key, self._find_batch)

    def _find_batch(self, key: ProfileKey) -> ProfileBatch | None:
        for profile in self._profiles:
            model = profile.model(key.model) if profile.matches(key) else None
            if model is not None and model.batch_workspace is not None:
                ws = model.batch_workspace
                return ProfileBatch(
                    context_bytes=profile.context_bytes,
                    weights_bytes=math.ceil(model.weights_bytes * PROFILE_MARGIN),
                    workspace=Workspace(
                        math.ceil(ws.fixed_bytes * PROFILE_MARGIN),
                        math.ceil(ws.per_row_bytes * PROFILE_MARGIN),
                    ),
                )
        return None

    def _find(self, key: ProfileKey) -> MemoryEstimate | None:
        for profile in self._profiles:
            model = profile.model(key.model) if profile.matches(key) else None
            if model is not None and model.per_task:
                return MemoryEstimate(
                    context_bytes=profile.context_bytes,
                    weights_bytes=math.ceil(model.weights_bytes * PROFILE_MARGIN),
                    working_bytes=math.ceil(
                        model.working_bytes(key.batch_size, key.beam_size) * PROFILE_MARGIN
                    ),
                    source=EstimateSource.PROFILE,
                )
        return None


# --- ground truth of simulated GPUs -----------------------------------------------------------
@functools.cache
def _reference() -> GpuProfile:
    folder = resources.files("gpuscribe.memory") / "profiles"
    return GpuProfile.from_json(json.loads((folder / _REFERENCE).read_text()))


REFERENCE_CONTEXT_BYTES: int = _reference().context_bytes


def _reference_model(model: str) -> ModelProfile:
    found = _reference().model(model)
    if found is None:
        raise ValueError(f"no measured memory profile for model {model!r}")
    return found


def reference_working_bytes(model: str, batch_size: int, beam_size: int) -> int:
    """What a task of this model really holds above weights and context (measured, H200)."""
    return _reference_model(model).working_bytes(batch_size, beam_size)


def reference_weights_bytes(model: str) -> int:
    """What this model's fp16 weights really hold on the device (measured, H200)."""
    return _reference_model(model).weights_bytes
