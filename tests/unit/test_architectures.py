"""Model names: gpuscribe's, their aliases, and the names other servers use."""

from __future__ import annotations

import pytest

from gpuscribe.memory.architectures import canonical_model_name


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("tiny.en", "tiny.en"),
        ("Large-V3", "large-v3"),
        ("large", "large-v3"),
        ("turbo", "large-v3-turbo"),
        ("openai/whisper-large-v3", "large-v3"),
        ("openai/whisper-tiny.en", "tiny.en"),
        ("whisper-large-v3", "large-v3"),
        ("Systran/faster-whisper-large-v3", "large-v3"),
        ("Systran/faster-whisper-small", "small"),
        ("deepdml/faster-whisper-large-v3-turbo-ct2", "large-v3-turbo"),
        ("mobiuslabsgmbh/faster-whisper-large-v3-turbo", "large-v3-turbo"),
        ("openai/whisper-large-v3-turbo", "large-v3-turbo"),
    ],
)
def test_names_resolve_to_the_model_they_name(name: str, canonical: str) -> None:
    assert canonical_model_name(name) == canonical


@pytest.mark.parametrize(
    "name",
    [
        "banana",
        "largev3",
        "whisper-1",
        "large-v4",
        "tiny.ne",
        "Systran/faster-distil-whisper-large-v3",
    ],
)
def test_unknown_names(name: str) -> None:
    assert canonical_model_name(name) is None
