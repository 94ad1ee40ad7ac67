"""`gpuscribe bench`: clips, the report, and the command with the service part skipped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gpuscribe.audio.decode import decode
from gpuscribe.bench import throughput
from gpuscribe.bench.placement import PlacementBench
from gpuscribe.bench.throughput import (
    BenchReport,
    Rate,
    ServiceBench,
    report_text,
    wav_seconds,
    write_clips,
)
from gpuscribe.cli.main import main

PLACEMENT = PlacementBench(placements_per_second=40_000.0, placements=10_000, seconds=0.25)


def test_rate_and_ratio() -> None:
    bench = ServiceBench(4, 20.0, Rate(2.0, 20.0), Rate(2.5, 20.0))
    assert bench.direct.audio_seconds_per_second == 10.0
    assert bench.ratio == pytest.approx(0.8)


def test_report_against_baseline_and_targets() -> None:
    bench = ServiceBench(4, 20.0, Rate(2.0, 20.0), Rate(2.0, 20.0))
    report = BenchReport(bench, None, PLACEMENT)
    data = report.to_dict()
    assert data["service"]["ratio"] == 1.0
    assert data["service"]["meets_target"] is True
    assert data["placement"]["ratio_to_target"] == 2.0
    assert report.meets_targets
    text = report_text(report)
    assert "1.00x (baseline)" in text
    assert "1.00x baseline" in text
    assert "2.00x target" in text


def test_missed_target_is_reported() -> None:
    slow = PlacementBench(placements_per_second=1000.0, placements=10_000, seconds=10.0)
    report = BenchReport(None, "the service would run on NVIDIA H100", slow)
    assert not report.meets_targets
    assert report.to_dict()["service"] == {"skipped": "the service would run on NVIDIA H100"}
    text = report_text(report)
    assert "skipped: the service would run on NVIDIA H100" in text
    assert "MISSED" in text


def test_clips_are_speech_of_a_few_seconds(tmp_path: Path) -> None:
    clips = write_clips(tmp_path, 10)  # more than the eight shipped: they are used in turn
    assert [c.name for c in clips[:2]] == ["clip-000.wav", "clip-001.wav"]
    assert all(5.0 < wav_seconds(c) < 15.0 for c in clips)
    assert clips[8].read_bytes() == clips[0].read_bytes() != clips[1].read_bytes()
    speech = decode(clips[0])
    assert speech.size == round(wav_seconds(clips[0]) * 16000)
    assert float(np.abs(speech).max()) > 0.1  # speech, not silence


def test_bench_command_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(throughput, "placement_throughput", lambda **kw: PLACEMENT)
    assert main(["bench", "--skip-service", "--json"]) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["service"] == {"skipped": "skipped by --skip-service"}
    assert data["placement"]["placements_per_second"] == 40_000.0
    assert "bench: scheduler placement" in captured.err


def test_bench_check_fails_on_a_missed_target(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    slow = PlacementBench(placements_per_second=10.0, placements=10, seconds=1.0)
    monkeypatch.setattr(throughput, "placement_throughput", lambda **kw: slow)
    assert main(["bench", "--skip-service", "--check"]) == 1
    assert "MISSED" in capsys.readouterr().out


def test_epoch_seconds_reads_the_api_times() -> None:
    from gpuscribe.bench.throughput import epoch_seconds

    assert epoch_seconds("1970-01-01T00:00:10.500Z") == 10.5
    assert epoch_seconds(12) == 12.0


def test_service_part_is_skipped_where_the_service_would_use_gpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gpuscribe.telemetry import detect
    from gpuscribe.telemetry.simulated import SimulatedGpus

    monkeypatch.setattr(detect, "open_telemetry", lambda settings: SimulatedGpus("1x24GiB"))
    monkeypatch.setattr(throughput, "placement_throughput", lambda **kw: PLACEMENT)
    report = throughput.run_benchmark(clips=1, say=lambda message: None)
    assert report.service is None
    assert "not the CPU" in str(report.service_skipped)
