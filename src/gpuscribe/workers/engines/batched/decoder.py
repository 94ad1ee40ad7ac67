"""Whisper's decoder over a static, slot-addressed key/value cache.

The Hugging Face model keeps its weights; this module runs them its own way, because a
continuous batch needs what `generate` cannot give: every row of the batch at its own position,
rows that come and go between steps, and a step whose shapes never change so that it can be
captured in a CUDA graph and replayed without Python in the way.

Layout: rows `0..n-1` of the cache are the active sequences (the batcher keeps them compact).
Self-attention keys/values: `[layers, rows, heads, max_len, head_dim]`; cross-attention
keys/values (computed once per window from the encoder output): `[layers, rows, heads, frames,
head_dim]`. A step feeds one token per row at that row's position and writes that position's
keys/values before attending to positions `<= pos`; what lies beyond a row's position is
never read, so rows need no clearing when they are reused. Every row of a window holds the
window's cross-attention keys and values; a grouped step (beams in the batch) reads them once a
window for all its rows (`crossattn.py`), from where the batcher last said the rows are.

Pooled (`slots.py`): the same bytes hold self-attention rows from the bottom and one
cross-attention slot a window from the top (`cross_k` is `[layers, slots, heads, frames,
head_dim]`); every step is grouped, each window's rows reading its slot. A window of 5 beams
then holds one copy of its audio instead of five.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from gpuscribe.workers.engines.batched import crossattn, selfattn
from gpuscribe.workers.engines.batched.encoder import FusedEncoder
from gpuscribe.workers.engines.batched.rowcopy import copy_layers, copy_moved
from gpuscribe.workers.engines.batched.slots import PoolLayout

log = logging.getLogger(__name__)

LENGTH_BUCKETS = (64, 128, 256, 448)
PYTORCH_KINDS = ("sdpa", "bmm", "kq")
ATTENTION_KINDS = (*PYTORCH_KINDS, "ragged")  # "ragged": `selfattn.py`, where Triton works
TUNE_REPLAYS = 3
FINE_BUCKETS_FROM = 64
FINE_BUCKET_STEP = 32


def batch_buckets(max_rows: int, also: tuple[int, ...] = ()) -> tuple[int, ...]:
    """Row counts a step is run (and, on CUDA, captured) at: powers of two up to
    `FINE_BUCKETS_FROM`, then every `FINE_BUCKET_STEP` rows, `max_rows` itself and the sizes
    `also`. A step reads every row of its bucket's cache (cross-attention keys and values
    dominate it), so a batch of 200 rows stepped at 256 would read 28 % more than it needs."""
    sizes = []
    size = 1
    while size < min(max_rows, FINE_BUCKETS_FROM):
        sizes.append(size)
        size *= 2
    while size < max_rows:
        sizes.append(size)
        size += FINE_BUCKET_STEP
    sizes.append(max_rows)
    return tuple(sorted(set(sizes) | {a for a in also if 0 < a <= max_rows}))


def bucket_for(value: int, buckets: tuple[int, ...]) -> int:
    for size in buckets:
        if value <= size:
            return size
    raise ValueError(f"{value} is above the largest bucket {buckets[-1]}")


def spread_positions(rows: int, max_len: int) -> list[int]:
    """Positions for rows at every stage of their windows, so that the first `n` rows of any
    bucket are spread evenly over `0..max_len - 1` (van der Corput's sequence: 1/2, 1/4, 3/4,
    1/8, ...; mean about half): what a continuous batch holds, for timing the attention forms
    at load. Rows at position 0 would flatter the form that reads each row's own positions
    only ("ragged"); rows at the end would hide what it saves."""
    positions = []
    for row in range(1, rows + 1):
        fraction, scale = 0.0, 0.5
        while row:
            fraction += (row & 1) * scale
            row, scale = row >> 1, scale / 2
        positions.append(min(int(fraction * max_len), max_len - 1))
    return positions


def capture_graph(torch: Any, run: Callable[[], object], pool: Any, warm_ups: int = 2) -> Any:
    """`run` captured in a CUDA graph drawing on memory `pool`, after `warm_ups` runs outside
    the graph on a side stream (kernel choices, workspaces). Capture errors are this thread's
    only: another model's batcher thread may use the device meanwhile."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warm_ups):
            run()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        run()
    return graph


def _cudnn_first() -> Callable[[], AbstractContextManager[None]]:
    """The fused attention backends for a decode step's cross-attention, cuDNN's first.

    One query per sequence against 1,500 frames, on an H200 (benchmarks/gpu_attention.py,
    large-v3 at 256 rows, a layer): cuDNN's kernel reads the keys and values at 4.6 TB/s
    (0.43 ms), also captured in a CUDA graph; the flash kernel at 2.3 (0.87 ms); q.K^T and
    weights.V as batched products take 0.83 ms. The worker turns cuDNN attention off for
    everything else (`transformers_engine._configure_cuda`); the step asks for it by name,
    and takes flash or memory-efficient where cuDNN cannot serve the shapes. The backend
    flags are process-wide while the context lasts: graphs are captured at load."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
    ]
    return functools.partial(sdpa_kernel, order, set_priority=True)


@dataclass(frozen=True, slots=True)
class DecoderShape:
    layers: int
    heads: int
    head_dim: int
    d_model: int
    vocab: int
    max_len: int
    frames: int

    def row_bytes(self, element_size: int) -> int:
        """Cache bytes one row (one sequence) holds: self- and cross-attention keys and values."""
        per_layer = 2 * self.heads * self.head_dim * (self.max_len + self.frames)
        return self.layers * per_layer * element_size


class _Layer:
    """One decoder layer's weights, with the self-attention projections fused into one matmul."""

    def __init__(self, torch: Any, layer: Any) -> None:
        attn = layer.self_attn
        zero = torch.zeros_like(attn.q_proj.bias)
        self.qkv_w = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        self.qkv_b = torch.cat([attn.q_proj.bias, zero, attn.v_proj.bias])
        self.out_w, self.out_b = attn.out_proj.weight, attn.out_proj.bias
        self.ln1 = layer.self_attn_layer_norm
        cross = layer.encoder_attn
        self.xq_w, self.xq_b = cross.q_proj.weight, cross.q_proj.bias
        self.xk_w = cross.k_proj.weight
        self.xv_w, self.xv_b = cross.v_proj.weight, cross.v_proj.bias
        self.xout_w, self.xout_b = cross.out_proj.weight, cross.out_proj.bias
        self.ln2 = layer.encoder_attn_layer_norm
        self.fc1_w, self.fc1_b = layer.fc1.weight, layer.fc1.bias
        self.fc2_w, self.fc2_b = layer.fc2.weight, layer.fc2.bias
        self.ln3 = layer.final_layer_norm


class StaticDecoder:
    """The decoder of a loaded `WhisperForConditionalGeneration`, over a cache of `rows` rows'
    bytes: as many rows (per-row layout), or pooled (`pooled`; CUDA needs the Triton
    cross-attention, `crossattn.triton_works`): then `rows` becomes the rows a step takes, and
    `cache_rows` keeps what was asked for."""

    def __init__(self, whisper: Any, rows: int, *, use_graphs: bool, pooled: bool = False) -> None:
        import torch

        self._torch = torch
        decoder = whisper.model.decoder
        config = whisper.config
        heads = int(config.decoder_attention_heads)
        d_model = int(config.d_model)
        self.shape = DecoderShape(
            layers=int(config.decoder_layers),
            heads=heads,
            head_dim=d_model // heads,
            d_model=d_model,
            vocab=int(decoder.embed_tokens.weight.shape[0]),
            max_len=int(config.max_target_positions),
            frames=int(config.max_source_positions),
        )
        self.cache_rows = rows  # the cache's bytes, in rows of the per-row layout
        weight = decoder.embed_tokens.weight
        self.device, self.dtype = weight.device, weight.dtype
        self._embed = weight
        self._positions = decoder.embed_positions.weight
        self._final_ln = decoder.layer_norm
        self.hf_encoder = whisper.model.encoder  # Hugging Face's module (baselines)
        self.encoder = FusedEncoder(self.hf_encoder, cudnn_attention=self.device.type == "cuda")
        with torch.no_grad():
            self._layers = [_Layer(torch, layer) for layer in decoder.layers]
        s = self.shape
        self.layout: PoolLayout | None = None
        if pooled:
            self.layout = PoolLayout.sized(
                rows, s.heads * s.max_len * s.head_dim, s.heads * s.frames * s.head_dim
            )
            rows = self.layout.rows
        self.rows = rows
        self._allocate_cache()
        # The step's static inputs and output (graphs read and write these addresses).
        self.tokens = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.logits = torch.zeros(rows, s.vocab, dtype=torch.float32, device=self.device)
        self._arange = torch.arange(s.max_len, device=self.device)
        self._rows_index = torch.arange(rows, device=self.device)
        # Where each window's rows are (`crossattn.window_table`), for grouped steps.
        leaders, members = crossattn.window_table([], rows)
        self.leaders = torch.from_numpy(leaders).to(self.device)
        self.members = torch.from_numpy(members).to(self.device)
        # How a grouped step attends to its windows' audio: "kernel" (one read a window,
        # `crossattn.py`; CUDA where its trial passes at load), "gathered" (tests), or None:
        # no grouped steps, every step attends row by row. Pooled: every step is grouped.
        self.grouped: str | None = None
        if pooled:
            self.grouped = "kernel" if self.device.type == "cuda" else "gathered"
        self.use_graphs = use_graphs and self.device.type == "cuda"
        self._decode_cross = _cudnn_first() if self.device.type == "cuda" else None
        self._graphs: dict[tuple[int, int, bool], Any] = {}
        self._pool: Any = None
        # Pooled, the cache's own rows are a bucket too: greedy windows fill the pool at that
        # many rows, and rows in use keep their whole bucket below the slots (`slots.py`).
        self.batch_buckets = batch_buckets(rows, (self.cache_rows,) if pooled else ())
        # "auto" on CUDA: each captured step shape keeps the fastest kind, timed at capture.
        self.attention = "auto" if self.use_graphs else "sdpa"
        self.chosen: dict[tuple[int, int], str] = {}
        self._forms: tuple[str, ...] | None = None  # what "auto" times (None: all that work)
        self._kind = "sdpa"  # the kind a capture in progress uses (under "auto")

    @property
    def pooled(self) -> bool:
        return self.layout is not None

    def _allocate_cache(self) -> None:
        """The key/value caches: four tensors (per-row), or views into two pools."""
        torch = self._torch
        s = self.shape
        options = {"device": self.device, "dtype": self.dtype}
        if self.layout is None:
            cache = (s.layers, self.rows, s.heads)
            self.self_k = torch.zeros(*cache, s.max_len, s.head_dim, **options)
            self.self_v = torch.zeros_like(self.self_k)
            self.cross_k = torch.zeros(*cache, s.frames, s.head_dim, **options)
            self.cross_v = torch.zeros_like(self.cross_k)
            return
        layout = self.layout
        end = self.rows * layout.row_elements
        first = layout.slots_start()
        views = []
        for _ in range(2):  # keys, values
            pool = torch.zeros(s.layers, layout.pool_elements, **options)
            rows = pool[:, :end].view(s.layers, self.rows, s.heads, s.max_len, s.head_dim)
            slots = pool[:, first:].view(s.layers, layout.slots, s.heads, s.frames, s.head_dim)
            views.append((rows, slots))
        (self.self_k, self.cross_k), (self.self_v, self.cross_v) = views

    def release(self) -> None:
        """Drop every tensor, captured graph and memory pool the decoder holds (its model is
        unloaded, its batcher stopped); its rows and shape stay readable."""
        kept = {"rows": self.rows, "cache_rows": self.cache_rows, "shape": self.shape,
                "device": self.device, "dtype": self.dtype, "layout": self.layout}  # fmt: skip
        vars(self).clear()
        vars(self).update(kept)

    def set_attention(self, kind: str, forms: tuple[str, ...] | None = None) -> None:
        """How a step's self-attention (over the text so far, masked per row) attends to one
        query row: "sdpa" (PyTorch's fused kernels), "bmm" (q·Kᵀ and the weights·V as batched
        products), "kq" (K·q, the keys as the big operand of a matrix-vector product),
        "ragged" (each row reads its own positions only, `selfattn.py`; needs Triton), or
        "auto": the fastest of `forms` (by default every form that works here), timed at each
        row bucket's capture. Captured graphs are dropped."""
        if kind not in (*ATTENTION_KINDS, "auto") or not set(forms or ()) <= {*ATTENTION_KINDS}:
            raise ValueError(f"unknown attention {kind!r} {forms or ''}")
        self.attention = kind
        self._forms = forms
        self._graphs.clear()
        self.chosen.clear()
        self._pool = None  # a pool outlives its graphs only to be reused by new captures

    # --- encoder and cross-attention -------------------------------------------------------
    def encode(self, features: Any) -> Any:
        """Encoder hidden states `[batch, frames, d_model]` of mel features `[batch, mels,
        3000]`."""
        torch = self._torch
        with torch.inference_mode():
            features = features.to(self.device, self.dtype)
            return self.encoder(features)

    def fill_cross(self, rows: Any, hidden: Any, windows: Any = None) -> None:
        """Write the cross-attention keys/values of `hidden` (`[w, frames, d]`) into cache
        `rows` (a long tensor; pooled: slots): row `rows[i]` gets window `windows[i]` (by
        default window `i`). The beams of one window share its keys and values, computed
        once."""
        torch = self._torch
        s = self.shape
        w = hidden.shape[0]
        with torch.inference_mode():
            for index, layer in enumerate(self._layers):
                k = torch.nn.functional.linear(hidden, layer.xk_w)
                v = torch.nn.functional.linear(hidden, layer.xv_w, layer.xv_b)
                k = k.view(w, s.frames, s.heads, s.head_dim).transpose(1, 2)
                v = v.view(w, s.frames, s.heads, s.head_dim).transpose(1, 2)
                if windows is not None:
                    k, v = k.index_select(0, windows), v.index_select(0, windows)
                self.cross_k[index].index_copy_(0, rows, k)
                self.cross_v[index].index_copy_(0, rows, v)

    def copy_rows(self, source: Any, target: Any) -> None:
        """Cache rows `source` copied onto rows `target` (compaction), a layer at a time
        (`rowcopy.copy_layers`); pooled, a window's audio stays in its slot."""
        caches: tuple[Any, ...] = (self.self_k, self.self_v)
        if not self.pooled:
            caches += (self.cross_k, self.cross_v)
        for cache in caches:
            copy_layers(cache, source, target, cache.shape[3])

    def clear_rows(self, rows: Any, slot: int = -1) -> None:
        """Zero the self-attention of cache `rows` (a long tensor) at every position, and
        pooled, the cross-attention of `slot` (where given). A step masks the positions past a
        row's own, but a masked value that is not a number still makes the attention's weighted
        sum NaN (0 x NaN), so a row that held NaN would poison every window that takes it later;
        and a pooled slot's memory becomes rows when the slots recede."""
        for cache in (self.self_k, self.self_v):
            cache.index_fill_(1, rows, 0)
        if self.pooled and slot >= 0:
            for cache in (self.cross_k, self.cross_v):
                cache[:, slot] = 0

    def move_beams(self, sources: Any, targets: Any, lengths: Any, moved: Any, end: int) -> None:
        """Beam rows `targets[i]` with `moved[i]` take rows `sources[i]`'s self-attention keys
        and values up to `lengths[i]` positions (beams of one window share their
        cross-attention). Which rows moved is known only on the device: `rowcopy.py`."""
        caches = (self.self_k, self.self_v)
        end = min(end, self.shape.max_len)
        copy_moved(self._torch, caches, sources, targets, lengths, moved, end)

    # --- prompt (many positions at once, eager) ---------------------------------------------
    def prefill(self, rows: Any, tokens: Any, *, at: Any = None, slots: Any = None) -> Any:
        """Run prompts `tokens` (`[n, P]`) on cache `rows` from position 0, writing their
        keys/values; pooled, row `rows[i]` hears the window in slot `slots[i]`. Returns float32
        logits `[n, P, vocab]`, or with `at` (`[n, k]` positions) only those `[n, k, vocab]`: a
        long prompt's logits at every position would take P x vocab x 4 bytes a row, and the
        batch needs one of them (at <|startoftranscript|>, for the no-speech probability). Rows
        of one call share their prompt length."""
        torch = self._torch
        F = torch.nn.functional
        n, length = tokens.shape
        with torch.inference_mode():
            x = F.embedding(tokens, self._embed) + self._positions[:length]
            causal = torch.ones(length, length, dtype=torch.bool, device=self.device).tril()
            for index, layer in enumerate(self._layers):
                h = layer.ln1(x)
                q, k, v = self._split_heads(F.linear(h, layer.qkv_w, layer.qkv_b), n, length)
                self.self_k[index, rows, :, :length] = k
                self.self_v[index, rows, :, :length] = v
                a = F.scaled_dot_product_attention(q, k, v, attn_mask=causal)
                x = x + F.linear(self._merge(a, n, length), layer.out_w, layer.out_b)
                cross = rows if slots is None else slots
                x = x + self._cross(layer, index, x, cross, n, length)
                x = x + self._mlp(layer, x)
            if at is not None:
                x = x.gather(1, at[:, :, None].expand(-1, -1, x.shape[-1]))
            x = self._final_ln(x)
            return F.linear(x, self._embed).float()

    def teacher_forced(
        self, hidden: Any, tokens: Any, heads: list[tuple[int, int]]
    ) -> tuple[Any, Any]:
        """A pass over `tokens` (`[n, P]`, causal) attending to encoder output `hidden` (`[n,
        frames, d]`), touching no cache: float32 logits `[n, P, vocab]` and the scaled
        cross-attention scores (before softmax) of `heads`, (layer, head) pairs, as `[n,
        len(heads), P, frames]` (None when no heads are asked for)."""
        torch = self._torch
        F = torch.nn.functional
        s = self.shape
        n, length = tokens.shape
        collected: dict[tuple[int, int], Any] = {}
        with torch.inference_mode():
            hidden = hidden.to(self.dtype)
            x = F.embedding(tokens, self._embed) + self._positions[:length]
            causal = torch.ones(length, length, dtype=torch.bool, device=self.device).tril()
            for index, layer in enumerate(self._layers):
                h = layer.ln1(x)
                q, k, v = self._split_heads(F.linear(h, layer.qkv_w, layer.qkv_b), n, length)
                a = F.scaled_dot_product_attention(q, k, v, attn_mask=causal)
                x = x + F.linear(self._merge(a, n, length), layer.out_w, layer.out_b)
                frames = hidden.shape[1]
                keys = F.linear(hidden, layer.xk_w).view(n, frames, s.heads, s.head_dim)
                values = F.linear(hidden, layer.xv_w, layer.xv_b).view(
                    n, frames, s.heads, s.head_dim
                )
                keys, values = keys.transpose(1, 2), values.transpose(1, 2)
                q = self._heads(F.linear(layer.ln2(x), layer.xq_w, layer.xq_b), n, length)
                for layer_index, head in heads:
                    if layer_index == index:
                        qk = q[:, head].float() @ keys[:, head].float().transpose(-1, -2)
                        collected[(layer_index, head)] = qk / math.sqrt(s.head_dim)
                a = F.scaled_dot_product_attention(q, keys, values)
                x = x + F.linear(self._merge(a, n, length), layer.xout_w, layer.xout_b)
                x = x + self._mlp(layer, x)
            logits = F.linear(self._final_ln(x), self._embed).float()
        if not heads:
            return logits, None
        return logits, torch.stack([collected[pair] for pair in heads], dim=1)

    def set_windows(self, leaders: Any, members: Any) -> None:
        """Where each window's rows are now (`crossattn.window_table`, on the device), for the
        grouped steps that follow; queued in order after the steps before."""
        self.leaders.copy_(leaders)
        self.members.copy_(members)

    # --- one step over the first `count` rows ----------------------------------------------
    def step(self, count: int, max_position: int, *, grouped: bool = False) -> Any:
        """One decoding step of rows `0..count-1` with the tokens and positions already written
        to `self.tokens` / `self.positions`; returns float32 logits `[count, vocab]` (a view of
        a static buffer of at least `count` rows: read it before the next step). `grouped`
        (where `self.grouped` allows): each window's rows attend to its audio together, as the
        last `set_windows` says they lie."""
        batch = bucket_for(count, self.batch_buckets)
        length = bucket_for(max_position + 1, LENGTH_BUCKETS)
        grouped = (grouped or self.pooled) and self.grouped is not None
        if not self.use_graphs:
            self._step_into(batch, length, grouped)
            return self.logits[:count]
        graph = self._graphs.get((batch, length, grouped))
        if graph is None:
            graph = self._capture(batch, length, grouped)
        graph.replay()
        return self.logits[:count]

    def capture_all(self) -> None:
        """Capture the step at every row bucket and length now (at load), longest first, after
        compiling the beams' row copy. A capture in the middle of a stream stalls every row
        while it runs (about 7 step times, or 21 where the attention form is chosen), and the
        graphs' memory is held from the start instead of growing as new shapes come."""
        self._warm_beam_copy()
        if not self.use_graphs:
            return
        if self.grouped is None and crossattn.triton_works(str(self.device)):
            self.grouped = "kernel"
        variants = (False, True) if self.grouped else (False,)
        self.positions.copy_(self._torch.tensor(spread_positions(self.rows, self.shape.max_len)))
        for grouped in (True,) if self.pooled else variants:
            for batch in self.batch_buckets:
                for length in reversed(LENGTH_BUCKETS):
                    if (batch, length, grouped) not in self._graphs:
                        self._capture(batch, length, grouped)
        self.positions.zero_()

    def _warm_beam_copy(self) -> None:
        """Compile the beams' row copy for this cache now (on CUDA, a Triton kernel is tried and
        compiled for these shapes), not in the first step that has beams: a copy that moves
        nothing."""
        torch = self._torch
        none = torch.zeros(1, dtype=torch.long, device=self.device)
        self.move_beams(none, none, none, none.bool(), 1)

    def _capture(self, batch: int, length: int, grouped: bool) -> Any:
        """The graph of a step shape. Under "auto" the attention form is timed once per row
        bucket (at the first length captured, the longest under `capture_all`, with the rows
        spread over it) and kept for its other lengths and for grouped steps."""
        if self.attention != "auto":
            return self._capture_kind(batch, length, grouped, self.attention)
        known = next((k for (b, _), k in self.chosen.items() if b == batch), None)
        if known is not None:
            self.chosen[(batch, length)] = known
            return self._capture_kind(batch, length, grouped, known)
        timed = []
        for kind in self._timed_kinds():
            graph = self._capture_kind(batch, length, grouped, kind)
            timed.append((self._time(graph), kind, graph))
        _, kind, graph = min(timed, key=lambda t: t[0])
        self._graphs[(batch, length, grouped)] = graph
        self.chosen[(batch, length)] = kind
        log.info(
            "decode step of %d rows, %d positions: %s attention (%s)", batch, length, kind,
            ", ".join(f"{k} {t * 1000:.2f} ms" for t, k, _ in timed),
        )  # fmt: skip
        return graph

    def _timed_kinds(self) -> tuple[str, ...]:
        if self._forms is not None:
            return self._forms
        return ATTENTION_KINDS if selfattn.triton_works(str(self.device)) else PYTORCH_KINDS

    def _time(self, graph: Any) -> float:
        torch = self._torch
        graph.replay()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(TUNE_REPLAYS):
            graph.replay()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end)) / 1000 / TUNE_REPLAYS

    def _capture_kind(self, batch: int, length: int, grouped: bool, kind: str) -> Any:
        self._kind = kind
        torch = self._torch
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = capture_graph(torch, lambda: self._step_into(batch, length, grouped), self._pool)
        self._graphs[(batch, length, grouped)] = graph
        log.debug(
            "captured a decode step: %d rows, %d positions, %s%s", batch, length, kind,
            ", grouped" if grouped else "",
        )  # fmt: skip
        return graph

    def _step_into(self, batch: int, length: int, grouped: bool = False) -> None:
        torch = self._torch
        F = torch.nn.functional
        with torch.inference_mode():
            tokens = self.tokens[:batch]
            positions = self.positions[:batch]
            rows = self._rows_index[:batch]
            x = (F.embedding(tokens, self._embed) + self._positions[positions]).unsqueeze(1)
            kind = self._kind if self.attention == "auto" else self.attention
            if kind != "ragged":
                visible = (self._arange[:length][None, :] <= positions[:, None])[:, None, None, :]
            for index, layer in enumerate(self._layers):
                h = layer.ln1(x)
                q, k, v = self._split_heads(F.linear(h, layer.qkv_w, layer.qkv_b), batch, 1)
                self.self_k[index, rows, :, positions] = k[:, :, 0]
                self.self_v[index, rows, :, positions] = v[:, :, 0]
                if kind == "ragged":
                    a = torch.empty_like(q, memory_format=torch.contiguous_format)
                    selfattn.attend(q, self.self_k[index], self.self_v[index], positions, length, a)
                else:
                    keys = self.self_k[index, :batch, :, :length]
                    values = self.self_v[index, :batch, :, :length]
                    a = self._attend(q, keys, values, visible, kind)
                x = x + F.linear(self._merge(a, batch, 1), layer.out_w, layer.out_b)
                if grouped:
                    x = x + self._grouped_cross(layer, index, x, batch)
                else:
                    x = x + self._cross(layer, index, x, slice(0, batch), batch, 1)
                x = x + self._mlp(layer, x)
            x = self._final_ln(x[:, 0])
            self.logits[:batch] = F.linear(x, self._embed).float()

    # --- pieces -----------------------------------------------------------------------------
    def _cross(self, layer: _Layer, index: int, x: Any, rows: Any, n: int, length: int) -> Any:
        F = self._torch.nn.functional
        h = layer.ln2(x)
        q = self._heads(F.linear(h, layer.xq_w, layer.xq_b), n, length)
        keys, values = self.cross_k[index, rows], self.cross_v[index, rows]
        if length == 1 and self._decode_cross is not None:
            with self._decode_cross():
                a = F.scaled_dot_product_attention(q, keys, values)
        else:
            a = F.scaled_dot_product_attention(q, keys, values)
        return F.linear(self._merge(a, n, length), layer.xout_w, layer.xout_b)

    def _grouped_cross(self, layer: _Layer, index: int, x: Any, batch: int) -> Any:
        """A step's cross-attention with each window's rows reading its audio together
        (`crossattn.py`); rows in no window (padding up to the bucket) attend to nothing."""
        torch = self._torch
        F = torch.nn.functional
        s = self.shape
        q = F.linear(layer.ln2(x), layer.xq_w, layer.xq_b).view(batch, s.heads, s.head_dim)
        keys, values = self.cross_k[index], self.cross_v[index]
        table = (self.leaders[:batch], self.members[:batch])  # a step's pieces lie in its rows
        if self.grouped == "kernel":
            a = torch.zeros_like(q)
            crossattn.attend(q, keys, values, *table, a)
        else:
            a = crossattn.attend_gathered(torch, q, keys, values, *table)
        return F.linear(a.reshape(batch, 1, s.d_model), layer.xout_w, layer.xout_b)

    def _attend(self, q: Any, keys: Any, values: Any, visible: Any, kind: str) -> Any:
        """Attention of one query row per sequence (`q` `[n, heads, 1, d]`) through PyTorch."""
        F = self._torch.nn.functional
        if kind == "sdpa":
            return F.scaled_dot_product_attention(q, keys, values, attn_mask=visible)
        scale = q.shape[-1] ** -0.5
        if kind == "kq":
            scores = (keys @ q.transpose(-1, -2)).transpose(-1, -2) * scale
        else:
            scores = (q @ keys.transpose(-1, -2)) * scale
        if visible is not None:
            scores = scores.masked_fill(~visible, -math.inf)
        return scores.float().softmax(-1).to(values.dtype) @ values

    def _mlp(self, layer: _Layer, x: Any) -> Any:
        F = self._torch.nn.functional
        h = F.gelu(F.linear(layer.ln3(x), layer.fc1_w, layer.fc1_b))
        return F.linear(h, layer.fc2_w, layer.fc2_b)

    def _heads(self, x: Any, n: int, length: int) -> Any:
        s = self.shape
        return x.view(n, length, s.heads, s.head_dim).transpose(1, 2)

    def _split_heads(self, qkv: Any, n: int, length: int) -> tuple[Any, Any, Any]:
        q, k, v = qkv.split(self.shape.d_model, dim=-1)
        return self._heads(q, n, length), self._heads(k, n, length), self._heads(v, n, length)

    def _merge(self, a: Any, n: int, length: int) -> Any:
        return a.transpose(1, 2).reshape(n, length, self.shape.d_model)
