"""workers/calibrate.py's choice of how many windows put every row of a loaded batch in use."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from gpuscribe.workers.calibrate import _windows_in
from gpuscribe.workers.engines.batched.decoder import StaticDecoder

pytest.importorskip("torch")


def test_a_per_row_batch_is_filled_by_rows_over_beams(whisper: Any) -> None:
    loaded = SimpleNamespace(decoder=StaticDecoder(whisper, 40, use_graphs=False))
    assert [_windows_in(loaded, 40, beams) for beams in (1, 5, 64)] == [40, 8, 1]


def test_a_pooled_batch_is_filled_by_what_its_slots_and_rows_hold(whisper: Any) -> None:
    """40 rows' bytes pooled hold 40 greedy windows, and 20 of 5 beams where rows would hold 8:
    calibrating it with 8 would leave most of its step's rows idle and measure too little."""
    decoder = StaticDecoder(whisper, 40, use_graphs=False, pooled=True)
    loaded = SimpleNamespace(decoder=decoder)
    assert _windows_in(loaded, 40, 1) == 40
    assert _windows_in(loaded, 40, 5) == 20 == decoder.rows // 5
