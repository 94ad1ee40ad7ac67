"""Languages by code and by name, and which of them a model can do."""

from __future__ import annotations

import pytest
from faster_whisper.tokenizer import _LANGUAGE_CODES

from gpuscribe.domain import InvalidRequest
from gpuscribe.languages import LANGUAGES, check_language, language_code, model_languages


def test_codes_are_faster_whispers() -> None:
    assert set(LANGUAGES) == set(_LANGUAGE_CODES)


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("en", "en"),
        ("EN", "en"),
        ("english", "en"),
        ("English", "en"),
        (" german ", "de"),
        ("castilian", "es"),
        ("mandarin", "zh"),
        ("haitian creole", "ht"),
        ("haitian_creole", "ht"),
        ("en-US", "en"),
        ("pt_BR", "pt"),
        ("zh-Hans", "zh"),
        ("es-419", "es"),
        ("yue", "yue"),
    ],
)
def test_language_code(value: str, code: str) -> None:
    assert language_code(value) == code


@pytest.mark.parametrize("value", ["xx", "xx-notalang", "en-notalang", "klingon", "e"])
def test_unknown_languages(value: str) -> None:
    assert language_code(value) is None


def test_english_only_models_do_english_alone() -> None:
    assert model_languages("tiny.en") == ["en"]
    assert check_language("english", "tiny.en") == "en"
    with pytest.raises(InvalidRequest) as err:
        check_language("fr", "tiny.en")
    assert err.value.param == "language"
    assert "English-only" in err.value.message


def test_multilingual_models_do_every_language_but_later_ones() -> None:
    assert check_language("French", "small") == "fr"
    assert "yue" not in model_languages("small")
    assert check_language("cantonese", "large-v3") == "yue"
    with pytest.raises(InvalidRequest) as err:
        check_language("yue", "large-v2")
    assert "large-v3" in err.value.message


def test_unknown_language_is_refused_everywhere() -> None:
    for model in ("tiny.en", "large-v3"):
        with pytest.raises(InvalidRequest) as err:
            check_language("xx-notalang", model)
        assert err.value.param == "language"
        assert "xx-notalang" in err.value.message


def test_absent_language_means_detect() -> None:
    assert check_language(None, "tiny.en") is None
    assert check_language("  ", "large-v3") is None
