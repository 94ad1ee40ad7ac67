"""Whisper's encoder run with fewer passes over memory than Hugging Face's module.

The encoder is most of the batch's work for a model with a small decoder (large-v3-turbo spends
three times as long encoding a window as decoding it). Hugging Face's layer runs three
projections for the attention's queries, keys and values, scales the queries in a pass of its
own, copies each into a contiguous layout, and clamps the output in a further pass; and its
hidden states keep the transposed layout of the convolutions' output through every layer. Here
the three projections are one matrix product whose output the attention kernel reads in place,
and the hidden states are made contiguous once.

The fused weights are one tensor; the Hugging Face module's own query/key/value weights become
views of it, so the model holds them once and the module still runs (language detection and
baselines use it).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)

# cuDNN's attention is called from one thread at a time: with several threads at once it failed
# on an H100 ("mha_graph.execute(...).is_good()"; see `transformers_engine._configure_cuda`),
# and two models in one worker each have a batcher thread. The lock is held while the kernel is
# queued, not while it runs.
_CUDNN_LOCK = threading.Lock()


class _EncoderLayer:
    def __init__(self, torch: Any, layer: Any) -> None:
        attn = layer.self_attn
        self.heads = int(attn.num_heads)
        d = int(attn.q_proj.weight.shape[0])
        qkv_w = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
        zero = torch.zeros_like(attn.q_proj.bias)
        qkv_b = torch.cat([attn.q_proj.bias, zero, attn.v_proj.bias])
        parameter = torch.nn.Parameter
        attn.q_proj.weight = parameter(qkv_w[:d], requires_grad=False)
        attn.k_proj.weight = parameter(qkv_w[d : 2 * d], requires_grad=False)
        attn.v_proj.weight = parameter(qkv_w[2 * d :], requires_grad=False)
        attn.q_proj.bias = parameter(qkv_b[:d], requires_grad=False)
        attn.v_proj.bias = parameter(qkv_b[2 * d :], requires_grad=False)
        self.qkv_w, self.qkv_b = qkv_w, qkv_b
        self.out_w, self.out_b = attn.out_proj.weight, attn.out_proj.bias
        self.ln1, self.ln2 = layer.self_attn_layer_norm, layer.final_layer_norm
        self.fc1_w, self.fc1_b = layer.fc1.weight, layer.fc1.bias
        self.fc2_w, self.fc2_b = layer.fc2.weight, layer.fc2.bias


class FusedEncoder:
    """The encoder of a loaded `WhisperForConditionalGeneration`, same weights, same output."""

    def __init__(self, encoder: Any, *, cudnn_attention: bool = False) -> None:
        import torch

        self._torch = torch
        self._encoder = encoder
        # cuDNN's fused attention (CUDA only): on an H200, large-v3 at batch 64, 1.1 ms a
        # window against the flash kernel's 1.5 (benchmarks/gpu_encoder.py). It is called by
        # name, so the process-wide switch that keeps cuDNN from other callers stays off.
        self.cudnn_attention = cudnn_attention
        with torch.no_grad():
            self._layers = [_EncoderLayer(torch, layer) for layer in encoder.layers]

    def __call__(self, features: Any) -> Any:
        """Hidden states `[batch, frames, d_model]` of mel features `[batch, mels, 3000]`."""
        torch = self._torch
        F = torch.nn.functional
        e = self._encoder
        with torch.inference_mode():
            x = F.gelu(e.conv1(features))
            # Contiguous once, here: a permuted tensor keeps its layout through every later
            # add and clamp (PyTorch gives a result its input's strides), and each of those
            # then runs PyTorch's slow strided kernel. On an H200 (large-v3, batch 64) those
            # kernels took 1.7 ms of a 6.5 ms window; made contiguous, a window takes 5.4.
            x = F.gelu(e.conv2(x)).permute(0, 2, 1).contiguous()
            x = x + e.embed_positions.weight[: x.shape[1]]
            clamp = torch.finfo(x.dtype).max - 1000 if x.dtype == torch.float16 else None
            for layer in self._layers:
                x = self._layer(layer, x, clamp)
            return e.layer_norm(x)

    def _layer(self, layer: _EncoderLayer, x: Any, clamp: float | None) -> Any:
        F = self._torch.nn.functional
        batch, frames, d = x.shape
        heads = layer.heads
        qkv = F.linear(layer.ln1(x), layer.qkv_w, layer.qkv_b)
        q, k, v = qkv.view(batch, frames, 3, heads, d // heads).permute(2, 0, 3, 1, 4).unbind(0)
        a = self._attend(q, k, v)
        x = x + F.linear(a.transpose(1, 2).reshape(batch, frames, d), layer.out_w, layer.out_b)
        h = F.gelu(F.linear(layer.ln2(x), layer.fc1_w, layer.fc1_b))
        x = x + F.linear(h, layer.fc2_w, layer.fc2_b)
        if clamp is not None:  # as Hugging Face's layer does in float16
            x = x.clamp_(-clamp, clamp)
        return x

    def _attend(self, q: Any, k: Any, v: Any) -> Any:
        """cuDNN's kernel serves float16 and bfloat16 only. Called by name it does not refuse
        float32: on an H100 it returned NaN for some windows of a float32 model and wrong
        values for the rest, so float32 takes PyTorch's own choice of kernel."""
        torch = self._torch
        if self.cudnn_attention and q.dtype in (torch.float16, torch.bfloat16):
            try:
                with _CUDNN_LOCK:
                    out = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, False)
                return out[0]
            except RuntimeError:
                log.warning("cuDNN attention failed in the encoder; the flash kernel from now on",
                            exc_info=True)  # fmt: skip
                self.cudnn_attention = False
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)
