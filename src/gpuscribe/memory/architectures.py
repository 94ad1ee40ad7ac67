"""Published Whisper architectures: the model names gpuscribe knows and their sizes.

Used to name models, to compute weights from parameter counts (the prior), and to build
random-weight models of the right shape in benchmark-only mode.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WhisperArchitecture:
    name: str
    d_model: int
    encoder_layers: int
    decoder_layers: int
    attention_heads: int
    n_mels: int = 80
    vocab_size: int = 51865
    max_source_positions: int = 1500
    max_target_positions: int = 448
    english_only: bool = False

    @property
    def ffn_dim(self) -> int:
        return 4 * self.d_model


def _arch(name: str, d: int, enc: int, dec: int, heads: int, **kw: object) -> WhisperArchitecture:
    return WhisperArchitecture(name, d, enc, dec, heads, **kw)  # type: ignore[arg-type]


_EN = {"vocab_size": 51864, "english_only": True}
ARCHITECTURES: dict[str, WhisperArchitecture] = {
    a.name: a
    for a in (
        _arch("tiny", 384, 4, 4, 6),
        _arch("tiny.en", 384, 4, 4, 6, **_EN),
        _arch("base", 512, 6, 6, 8),
        _arch("base.en", 512, 6, 6, 8, **_EN),
        _arch("small", 768, 12, 12, 12),
        _arch("small.en", 768, 12, 12, 12, **_EN),
        _arch("medium", 1024, 24, 24, 16),
        _arch("medium.en", 1024, 24, 24, 16, **_EN),
        _arch("large-v1", 1280, 32, 32, 20),
        _arch("large-v2", 1280, 32, 32, 20),
        _arch("large-v3", 1280, 32, 32, 20, n_mels=128, vocab_size=51866),
        _arch("large-v3-turbo", 1280, 32, 4, 20, n_mels=128, vocab_size=51866),
    )
}

ALIASES = {"large": "large-v3", "turbo": "large-v3-turbo"}

# How other servers and the Hugging Face hub name the same models: an owner
# (`openai/`, `Systran/`, `deepdml/`, `mobiuslabsgmbh/`), a prefix (`whisper-`,
# `faster-whisper-`) and a suffix (`-ct2`).
_HUB_PREFIXES = ("faster-whisper-", "whisper-")
_HUB_SUFFIXES = ("-ct2",)


def canonical_model_name(name: str) -> str | None:
    """The canonical name of a known model, or None: `turbo` -> `large-v3-turbo`,
    `openai/whisper-large-v3` and `Systran/faster-whisper-large-v3` -> `large-v3`,
    `deepdml/faster-whisper-large-v3-turbo-ct2` -> `large-v3-turbo`."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key in ARCHITECTURES:
        return key
    key = key.rsplit("/", 1)[-1]
    for prefix in _HUB_PREFIXES:
        key = key.removeprefix(prefix)
    for suffix in _HUB_SUFFIXES:
        key = key.removesuffix(suffix)
    key = ALIASES.get(key, key)
    return key if key in ARCHITECTURES else None


def known_model_names() -> list[str]:
    return sorted(ARCHITECTURES) + sorted(ALIASES)


def parameter_count(arch: WhisperArchitecture) -> int:
    """Parameters of the published architecture (encoder convs, attention, FFN, norms,
    embeddings; the output projection is tied to the token embedding)."""
    d, f = arch.d_model, arch.ffn_dim
    attention = 4 * d * d + 3 * d  # q, k, v, out projections; k has no bias
    ffn = 2 * d * f + f + d
    norm = 2 * d
    encoder_layer = attention + ffn + 2 * norm
    decoder_layer = 2 * attention + ffn + 3 * norm
    convs = (arch.n_mels * d * 3 + d) + (d * d * 3 + d)
    encoder = convs + arch.max_source_positions * d + arch.encoder_layers * encoder_layer + norm
    decoder = (
        arch.vocab_size * d
        + arch.max_target_positions * d
        + arch.decoder_layers * decoder_layer
        + norm
    )
    return encoder + decoder


BYTES_PER_PARAMETER = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int8_float16": 1,
    "int8_bfloat16": 1,
    "int8_float32": 1,
    "int8": 1,
}


def weights_bytes(model: str, compute_type: str, *, cuda: bool) -> int | None:
    """Bytes of the model's weights in a compute type; `default` means fp16 on GPUs, fp32 on the
    CPU. None for an unknown model."""
    canonical = canonical_model_name(model)
    if canonical is None:
        return None
    if compute_type in ("default", "auto"):
        compute_type = "float16" if cuda else "float32"
    per = BYTES_PER_PARAMETER.get(compute_type, 4)
    return parameter_count(ARCHITECTURES[canonical]) * per
