"""Tests that need an outside service skip without it, and fail where CI requires it."""

from __future__ import annotations

import pytest

from support.services import require_service, services_required


def test_present_service_neither_skips_nor_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUSCRIBE_TEST_REQUIRE_SERVICES", "1")
    require_service(True, "no browser")


@pytest.mark.parametrize("value", [None, "", "0", "no"])
def test_missing_service_skips_with_its_reason(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("GPUSCRIBE_TEST_REQUIRE_SERVICES", raising=False)
    else:
        monkeypatch.setenv("GPUSCRIBE_TEST_REQUIRE_SERVICES", value)
    assert not services_required()
    with pytest.raises(pytest.skip.Exception, match=r"no PostgreSQL server at 127\.0\.0\.1:5432"):
        require_service(False, "no PostgreSQL server at 127.0.0.1:5432")


@pytest.mark.parametrize("value", ["1", "true", "YES", "on"])
def test_missing_service_fails_where_required(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("GPUSCRIBE_TEST_REQUIRE_SERVICES", value)
    assert services_required()
    with pytest.raises(pytest.fail.Exception, match=r"no browser \(GPUSCRIBE_TEST_REQUIRE"):
        require_service(False, "no browser")


def test_a_missing_browser_skips_naming_it_and_fails_where_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from support import browser

    monkeypatch.setattr(browser, "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.delenv("GPUSCRIBE_TEST_REQUIRE_SERVICES", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no /nonexistent/chromium: apt-get install"):
        browser.chromium_or_skip()
    monkeypatch.setenv("GPUSCRIBE_TEST_REQUIRE_SERVICES", "1")
    with pytest.raises(pytest.fail.Exception, match="no /nonexistent/chromium"):
        browser.chromium_or_skip()
