"""Word error rate of a transcript against the text that was spoken."""

from __future__ import annotations

import re
import unicodedata

import jiwer

_TIMING = re.compile(r"^\s*(\d+\s*$|(\d{1,2}:)?\d{1,2}:\d{2}[.,]\d{3}\s*-->.*$)")


def normalise(text: str) -> str:
    """Lower case, no punctuation (apostrophes dropped, hyphens split words), single spaces."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = text.replace("'", "").replace("\u2019", "")
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


def word_error_rate(reference: str, hypothesis: str) -> float:
    ref = normalise(reference)
    hyp = normalise(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return float(jiwer.wer(ref, hyp if hyp else "<empty>"))


def strip_subtitles(text: str) -> str:
    """The spoken words of an SRT or WebVTT document: no header, cue numbers or timing lines."""
    words: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("WEBVTT", "NOTE", "Kind:", "Language:")):
            continue
        if _TIMING.match(stripped):
            continue
        words.append(stripped)
    return " ".join(words)
