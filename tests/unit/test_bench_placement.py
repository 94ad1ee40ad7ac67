from gpuscribe.bench.placement import placement_throughput


def test_places_every_task_and_reports_a_rate() -> None:
    result = placement_throughput(tasks=2_000, devices=16, seed=3)
    assert result.placements == 2_000
    assert result.seconds > 0
    assert result.placements_per_second == result.placements / result.seconds


def test_full_size_run_places_all_tasks_quickly() -> None:
    result = placement_throughput()
    assert result.placements == 10_000
    assert result.placements_per_second >= 20_000
