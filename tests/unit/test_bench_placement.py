from gpuscribe.bench.placement import placement_throughput


def test_places_every_task_and_reports_a_rate() -> None:
    result = placement_throughput(tasks=2_000, devices=16, seed=3)
    assert result.placements == 2_000
    assert result.seconds > 0
    assert result.placements_per_second == result.placements / result.seconds


def test_full_size_run_places_every_task() -> None:
    """The benchmark's own size. Its speed (target 20,000/s) is printed by `gpuscribe bench`,
    never asserted here: a timed assertion fails on a busy machine (19,051/s once in CI)."""
    result = placement_throughput()
    assert result.placements == 10_000
