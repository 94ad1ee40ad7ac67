"""node/estimates.py: the estimator is built from the settings alike wherever it is used."""

from __future__ import annotations

from dataclasses import replace

from gpuscribe.config import Settings
from gpuscribe.memory.calibration import CalibrationBook
from gpuscribe.node.estimates import estimator_for


def test_the_settings_cap_rows_and_layout_reach_the_estimator() -> None:
    settings = replace(Settings(), max_memory_utilization=0.8, batch_rows=48)
    book = CalibrationBook(10, 1.2)
    estimator = estimator_for(settings, book)
    assert (estimator.book, estimator.cap_fraction, estimator.batch_rows) == (book, 0.8, 48)
    assert estimator.pooled  # auto: the ledger charges a pooled cache's larger steps
    assert estimator_for(replace(settings, batch_layout="pooled"), book).pooled
    assert not estimator_for(replace(settings, batch_layout="per-row"), book).pooled
