"""The continuous batch of the transformers engine on a GPU: how many rows it gets, and what it
holds. Pure functions; the scheduler decides, the worker allocates exactly that.

Each model a GPU worker loads owns one batch (`workers/engines/batched/`): a static key/value
cache of `rows` rows allocated at load, and the workspace its batcher needs while it runs. What a
resident model holds is therefore fixed once it is loaded, whatever the number of tasks using it:

    resident(rows) = weights + rows x row_bytes + workspace(rows)
    row_bytes      = decoder layers x 2 (keys, values) x d_model x (448 + 1500) positions x element
                     (self-attention over the text, cross-attention over the encoder frames)
    workspace(rows) = fixed + per_row x rows
    fixed          = ENCODER_BATCH x (log-mel of one window + encoder activations of one window)
                     + READY_BATCHES x ENCODER_BATCH x one window's encoder output (the windows
                     encoded ahead of free rows, and the batch being encoded)
    per_row        = the encoder output a row's window keeps, the cross-attention keys/values
                     computed for it when it starts (FILL_WIDTHS), the logits of a prompt's
                     prefilled head (PREFILL_TOKENS x vocab in the model's type and in float32;
                     only a previous-text prompt is prefilled, the start sequence is fed as
                     decode steps), and the float32 vocabulary-wide tensors a decode step's
                     token choice holds (STEP_VOCAB_COPIES)

(`ENCODER_WIDTHS` counts, in units of `1500 frames x d_model` elements, what one window of the
encoder's batch holds at the batch's peak. The shapes alone gave 12: the residual, the layer
norm's output, the feed-forward's 4 x d_model input and activation, the output, and one spare.
Calibration on an H100 (docs/benchmarks/batch-calibration.md) measured up to 18 with greedy
windows, large-v3 at 40 rows: what its load allocates for its rows, and the decoder's
temporaries beside the encoder's. So 20 it is: the formula covers every measurement of that
grid, greedy and 5 beams. A first calibration, made while the cache copy still moved every
layer at once, had asked for 32.) `gpuscribe calibrate` measures `workspace` in batches of
several sizes, each with every row in use, and the fit (`fit_workspace`) replaces `fixed` and
`per_row` where it exists (this deployment's, else a shipped profile's); the formula is for GPU
models no profile measured.

Rows (`choose_rows`): `GPUSCRIBE_BATCH_ROWS` when set (>0); otherwise (0, auto) the most rows, in
steps of `ROW_STEP`, up to `MAX_ROWS`, such that the worker's context and the resident model fit
within `BATCH_SHARE` of the device's cap (`MAX_MEMORY_UTILIZATION` x total). The rest of the cap
(15 %) is left to the running tasks' own working memory and to the allocator's slack; at least
`MIN_ROWS`. With the default cap of 0.9 and a 1.2 GiB context: large-v3 gets 32 rows on a 24 GiB
GPU, 168 on an 80 GB one and 256 on a 141 GB H200; large-v3-turbo 216 on 24 GiB and 256 on the
others (tests/unit/test_memory_batch.py); with a pooled cache's larger steps charged
(`BatchShape.workspace_for`), turbo gets 208 on 24 GiB.

A pooled cache (`engines/batched/slots.py`, the default on GPUs where Triton works) holds the
same bytes as `rows` rows, laid out as self-attention rows and one cross-attention slot a
window: its step takes up to `pooled_step_rows` rows, each with the token choice's float32
vocabulary-wide tensors (`pooled_extra_per_row`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from gpuscribe.audio import HOP, MEL_FRAMES, N_FFT, WINDOW_SAMPLES, WINDOW_SECONDS
from gpuscribe.memory.architectures import ARCHITECTURES, WhisperArchitecture, canonical_model_name
from gpuscribe.memory.types import MIB

POOLED_WINDOW_ROWS = 5  # a pooled cache's step is sized for windows of this many rows (beams)
MAX_ROWS = 256  # the most rows the auto rule gives (the decode step's speed levels off there)
ROW_STEP = 8  # auto rows are a multiple of this
MIN_ROWS = 8  # and never fewer: a window takes up to 5 rows (beams, or best-of candidates)
BATCH_SHARE = 0.85  # of the cap: context + resident model; the rest is left to running tasks
ENCODER_BATCH = 32  # windows the batcher encodes at once (engines/batched/batcher.py)
READY_BATCHES = 2  # encoder outputs held ahead of free rows: up to one batch ready, one in flight
ENCODER_WIDTHS = 20  # one window of the encoder's batch at the peak, in frames x d_model units
FILL_WIDTHS = 3  # a starting row's encoder output (stacked) and its cross keys/values
PREFILL_TOKENS = 16  # prompt positions charged per row at prefill: the start sequence and a
# short initial prompt (a long initial prompt takes more: see docs, and calibration)
STEP_VOCAB_COPIES = 8  # float32 [rows, vocab] tensors of one step: logits, log-probs, masks, top-k
TASK_BASE_BYTES = 16 * MIB  # a running task beyond the batch: stray tensors (its log-mel is
# computed in the encoder's batch, its rows are the batch's)
TASK_KEPT_WINDOWS = 16  # windows of one task whose encoder output may outlive their rows
CPU_DEFAULT_ROWS = 0  # on the CPU the engine keeps its own default (RunTask says 0)


@dataclass(frozen=True, slots=True)
class Workspace:
    """What the batcher holds beyond weights and cache: `fixed + per_row x rows`."""

    fixed_bytes: int
    per_row_bytes: int

    def at(self, rows: int) -> int:
        return self.fixed_bytes + self.per_row_bytes * max(0, rows)


@dataclass(frozen=True, slots=True)
class BatchShape:
    """One model's batch in one element size: a row's cache and the workspace formula."""

    row_bytes: int
    workspace: Workspace
    window_hidden_bytes: int  # one window's encoder output
    pooled_per_row_bytes: int = 0  # what a pooled cache adds to any workspace per row

    def workspace_for(self, workspace: Workspace | None, *, pooled: bool) -> Workspace:
        """`workspace` (a calibration fit; None: the formula's), for a pooled cache or not."""
        ws = workspace or self.workspace
        if not pooled:
            return ws
        return Workspace(ws.fixed_bytes, ws.per_row_bytes + self.pooled_per_row_bytes)


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """The batch a model gets on one device, and what it holds there beyond the weights."""

    rows: int
    cache_bytes: int
    workspace_bytes: int

    @property
    def batch_bytes(self) -> int:
        return self.cache_bytes + self.workspace_bytes


def element_size(compute_type: str) -> int:
    """Bytes per element of the transformers engine's types: float32 is 4, the rest (float16,
    bfloat16, `default` on a GPU) 2."""
    return 4 if compute_type == "float32" else 2


def row_bytes(arch: WhisperArchitecture, element: int) -> int:
    """Cache bytes of one row; the engine's `DecoderShape.row_bytes` computes the same."""
    head_dim = arch.d_model // arch.attention_heads
    per_layer = 2 * arch.attention_heads * head_dim
    positions = arch.max_target_positions + arch.max_source_positions
    return arch.decoder_layers * per_layer * positions * element


def mel_bytes_per_window(n_mels: int) -> int:
    """Log-mel of one window on the device: the padded samples (float32), the STFT (complex64)
    and its power (float32), and the mel spectrogram's float32 steps plus its copy in the
    model's type (3 x 4 + 2 bytes an element)."""
    bins = N_FFT // 2 + 1
    return 4 * (WINDOW_SAMPLES + HOP) + 12 * bins * (MEL_FRAMES + 1) + 14 * n_mels * MEL_FRAMES


def batch_shape(arch: WhisperArchitecture, compute_type: str) -> BatchShape:
    element = element_size(compute_type)
    hidden = arch.max_source_positions * arch.d_model * element
    fixed = ENCODER_BATCH * (
        mel_bytes_per_window(arch.n_mels) + (ENCODER_WIDTHS + READY_BATCHES) * hidden
    )
    per_row = (
        hidden * (1 + FILL_WIDTHS)
        + PREFILL_TOKENS * arch.vocab_size * (element + 4)
        + STEP_VOCAB_COPIES * arch.vocab_size * 4
    )
    return BatchShape(
        row_bytes(arch, element), Workspace(fixed, per_row), hidden, pooled_extra_per_row(arch)
    )


def shape_of(model: str, compute_type: str) -> BatchShape | None:
    canonical = canonical_model_name(model)
    return None if canonical is None else batch_shape(ARCHITECTURES[canonical], compute_type)


def choose_rows(
    *,
    total_bytes: int,
    cap_fraction: float,
    context_bytes: int,
    weights_bytes: int,
    shape: BatchShape,
    workspace: Workspace | None = None,
    batch_rows: int = 0,
) -> int:
    """The rows of a model's batch on a device (see the module docstring). `batch_rows` > 0 is
    taken as given (the ledger then decides whether it fits); `workspace` replaces the formula's
    (a calibration fit). Never below `MIN_ROWS`: a model whose smallest batch does not fit is
    the ledger's to refuse."""
    if batch_rows > 0:
        return batch_rows
    ws = workspace or shape.workspace
    budget = total_bytes * cap_fraction * BATCH_SHARE - context_bytes - weights_bytes
    budget -= ws.fixed_bytes
    per_row = shape.row_bytes + ws.per_row_bytes
    fitting = int(budget // per_row) if budget > 0 else 0
    rows = min(MAX_ROWS, fitting)
    rows -= rows % ROW_STEP
    return max(MIN_ROWS, rows)


def pooled_step_rows(cache_rows: int, max_len: int, frames: int) -> int:
    """The rows a pooled cache of `cache_rows` rows' bytes steps at (`engines/batched/slots.py`):
    as many as windows of `POOLED_WINDOW_ROWS` rows fill, each row `max_len` positions of
    self-attention and each window `frames` of cross-attention."""
    windows = cache_rows * (max_len + frames) // (POOLED_WINDOW_ROWS * max_len + frames)
    return max(cache_rows, POOLED_WINDOW_ROWS * windows)


def pooled_extra_per_row(arch: WhisperArchitecture) -> int:
    """What a pooled cache's workspace adds per row of cache: its step takes more rows than the
    cache has rows' bytes (2.6 x for large-v3), and each takes the token choice's
    vocabulary-wide float32 tensors (`STEP_VOCAB_COPIES`); the rest (the encoder's batch, a
    starting window's fill) does not grow."""
    many = 1 << 20
    more = pooled_step_rows(many, arch.max_target_positions, arch.max_source_positions) / many
    return math.ceil((more - 1) * STEP_VOCAB_COPIES * arch.vocab_size * 4)


def plan_batch(rows: int, shape: BatchShape, workspace: Workspace | None = None) -> BatchPlan:
    ws = workspace or shape.workspace
    return BatchPlan(rows, rows * shape.row_bytes, ws.at(rows))


def task_working_bytes(
    shape: BatchShape, batch_size: int, audio_seconds: float, *, word_timestamps: bool = True
) -> int:
    """A running task's own memory on a batched model: its rows are the model's (charged
    with it); what is its own is a little slack and, with word timestamps, the encoder outputs
    of its windows that outlive their rows (word timing reads them again; without it none is
    kept): at most `TASK_KEPT_WINDOWS` (or its batch size), and never more windows than its
    audio has. On an H200, 300 large-v3 tasks at once held no memory NVML could see beyond the
    batch's estimate, where the earlier flat 0.12 GiB a task had the ledger reserve 35 GiB for
    them."""
    if not word_timestamps:
        return TASK_BASE_BYTES
    windows = max(1, math.ceil(audio_seconds / WINDOW_SECONDS))
    kept = min(windows, max(TASK_KEPT_WINDOWS, batch_size))
    return TASK_BASE_BYTES + kept * shape.window_hidden_bytes


# --- calibration ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class OccupancySample:
    """The workspace of a batch of `rows_in_use` rows measured with every row decoding: the
    process's peak less its context, the weights' parameters and the cache. What a load holds
    beyond those (the captured steps' memory pool, the batcher's buffers) grows with the batch's
    rows, so it is workspace, not weights."""

    rows_in_use: int
    workspace_bytes: int


def calibration_rows(rows: int) -> tuple[int, ...]:
    """Batch sizes calibration loads a model at, `rows` being what the scheduler gives it on
    this GPU: a quarter, half and all of it (multiples of `ROW_STEP`, at least `MIN_ROWS`; fewer
    sizes for a small batch). The estimator charges a batch at its full size, so the sizes vary
    the batch, not the rows in use of one batch: what a load allocates for its rows counts."""
    wanted = {max(MIN_ROWS, rows // d - rows // d % ROW_STEP) for d in (4, 2)} | {rows}
    return tuple(sorted(level for level in wanted if 0 < level <= rows))


def fit_workspace(samples: Sequence[OccupancySample]) -> Workspace | None:
    """`workspace = fixed + per_row x rows` from peaks of batches of several sizes: the slope
    by least squares (never negative), the intercept raised until the line covers every
    sample (an estimate must not fall below a measured peak). None with fewer than two
    distinct sizes (no slope to fit)."""
    points = [(s.rows_in_use, s.workspace_bytes) for s in samples if s.rows_in_use > 0]
    if len({x for x, _ in points}) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in points)
    slope = max(0.0, sxy / sxx)
    per_row = math.ceil(slope)
    fixed = max(y - per_row * x for x, y in points)
    return Workspace(max(0, fixed), per_row)
