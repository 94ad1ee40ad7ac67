"""The languages Whisper knows, by code and by name, and which of them a model can do.

`LANGUAGES` is Whisper's own table (code -> English name; the codes are faster-whisper's
`_LANGUAGE_CODES`). A request may name a language by code (`en`), by name (`English`, any case),
by one of Whisper's other names (`castilian`, `mandarin`), or by a code with a region or script
subtag (`en-US`, `zh-Hans`). English-only models (`*.en`) do English alone; Cantonese (`yue`)
arrived with large-v3. Pure: no I/O.
"""

from __future__ import annotations

import re

from gpuscribe.domain import InvalidRequest
from gpuscribe.memory.architectures import ARCHITECTURES, canonical_model_name

LANGUAGES: dict[str, str] = {
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian",
    "ko": "korean", "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish",
    "pl": "polish", "ca": "catalan", "nl": "dutch", "ar": "arabic", "sv": "swedish",
    "it": "italian", "id": "indonesian", "hi": "hindi", "fi": "finnish", "vi": "vietnamese",
    "he": "hebrew", "uk": "ukrainian", "el": "greek", "ms": "malay", "cs": "czech",
    "ro": "romanian", "da": "danish", "hu": "hungarian", "ta": "tamil", "no": "norwegian",
    "th": "thai", "ur": "urdu", "hr": "croatian", "bg": "bulgarian", "lt": "lithuanian",
    "la": "latin", "mi": "maori", "ml": "malayalam", "cy": "welsh", "sk": "slovak",
    "te": "telugu", "fa": "persian", "lv": "latvian", "bn": "bengali", "sr": "serbian",
    "az": "azerbaijani", "sl": "slovenian", "kn": "kannada", "et": "estonian",
    "mk": "macedonian", "br": "breton", "eu": "basque", "is": "icelandic", "hy": "armenian",
    "ne": "nepali", "mn": "mongolian", "bs": "bosnian", "kk": "kazakh", "sq": "albanian",
    "sw": "swahili", "gl": "galician", "mr": "marathi", "pa": "punjabi", "si": "sinhala",
    "km": "khmer", "sn": "shona", "yo": "yoruba", "so": "somali", "af": "afrikaans",
    "oc": "occitan", "ka": "georgian", "be": "belarusian", "tg": "tajik", "sd": "sindhi",
    "gu": "gujarati", "am": "amharic", "yi": "yiddish", "lo": "lao", "uz": "uzbek",
    "fo": "faroese", "ht": "haitian creole", "ps": "pashto", "tk": "turkmen", "nn": "nynorsk",
    "mt": "maltese", "sa": "sanskrit", "lb": "luxembourgish", "my": "myanmar", "bo": "tibetan",
    "tl": "tagalog", "mg": "malagasy", "as": "assamese", "tt": "tatar", "haw": "hawaiian",
    "ln": "lingala", "ha": "hausa", "ba": "bashkir", "jw": "javanese", "su": "sundanese",
    "yue": "cantonese",
}  # fmt: skip

# Whisper's other names for some languages (its TO_LANGUAGE_CODE).
OTHER_NAMES: dict[str, str] = {
    "burmese": "my", "valencian": "ca", "flemish": "nl", "haitian": "ht",
    "letzeburgesch": "lb", "pushto": "ps", "panjabi": "pa", "moldavian": "ro",
    "moldovan": "ro", "sinhalese": "si", "castilian": "es", "mandarin": "zh",
}  # fmt: skip

BY_NAME: dict[str, str] = {name: code for code, name in LANGUAGES.items()} | OTHER_NAMES

# Languages only some multilingual models know, and the models that know them.
LATER_LANGUAGES: dict[str, frozenset[str]] = {"yue": frozenset({"large-v3", "large-v3-turbo"})}

# A region, script or numeric subtag after a code: en-US, zh-Hans, es-419.
_SUBTAG = re.compile(r"^([a-z]{2,3})[-_]([a-z]{2}|[a-z]{4}|[0-9]{3})$")


def language_code(value: str) -> str | None:
    """The Whisper code of a language named by code, name or code with a subtag, or None."""
    text = " ".join(value.strip().lower().replace("_", " ").split())
    if text in LANGUAGES:
        return text
    if text in BY_NAME:
        return BY_NAME[text]
    match = _SUBTAG.match(value.strip().lower())
    if match and match.group(1) in LANGUAGES:
        return match.group(1)
    return None


def model_languages(model: str) -> list[str]:
    """The codes a model can transcribe (every code for an unknown model name)."""
    canonical = canonical_model_name(model)
    if canonical is not None and ARCHITECTURES[canonical].english_only:
        return ["en"]
    return [
        code
        for code in LANGUAGES
        if code not in LATER_LANGUAGES or canonical is None or canonical in LATER_LANGUAGES[code]
    ]


def check_language(value: str | None, model: str, *, param: str = "language") -> str | None:
    """The code of `value` if `model` can do it; None stays None (detect). Raises
    `InvalidRequest` naming `param` for an unknown language or one the model cannot do."""
    if value is None or not value.strip():
        return None
    code = language_code(value)
    if code is None:
        raise InvalidRequest(
            f"unknown language {value!r}: give a code such as en or de, or a name such as "
            "english or german",
            code="unsupported_language",
            param=param,
        )
    known = model_languages(model)
    if code not in known:
        if known == ["en"]:
            reason = f"model {model!r} is English-only: it can transcribe en alone"
            hint = "use a multilingual model (e.g. small, large-v3) for other languages"
        else:
            reason = f"model {model!r} cannot transcribe {LANGUAGES[code]} ({code})"
            hint = "use " + " or ".join(sorted(LATER_LANGUAGES.get(code, frozenset())))
        raise InvalidRequest(
            f"language {value!r} is not supported: {reason}; {hint}",
            code="unsupported_language",
            param=param,
        )
    return code
