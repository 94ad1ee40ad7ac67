"""Argument parsing, help texts and exit codes of `gpuscribe`."""

from __future__ import annotations

import pytest

from gpuscribe import __version__
from gpuscribe.cli.main import build_parser, main

COMMANDS = [
    "serve",
    "worker",
    "calibrate",
    "transcribe",
    "submit",
    "status",
    "result",
    "cancel",
    "tasks",
    "gpus",
    "estimate",
    "models",
    "bench",
]


@pytest.fixture(autouse=True)
def _no_settings_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    for var in ("MAX_TASKS_PER_GPU", "MAX_MEMORY_UTILIZATION", "GPUSCRIBE_SERVER"):
        monkeypatch.delenv(var, raising=False)


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: gpuscribe {command}" in capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"gpuscribe {__version__}\n"


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_serve_flags_become_settings_names() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "9000",
            "--store",
            "sqlite:///x.db",
            "--data-dir",
            "d",
            "--simulate-gpus",
            "2x24GiB",
            "--insecure",
            "--max-memory-utilization",
            "0.8",
            "--max-tasks-per-gpu",
            "3",
        ]
    )
    assert (args.host, args.port, args.store, args.data_dir) == (
        "0.0.0.0",
        "9000",
        "sqlite:///x.db",
        "d",
    )
    assert (args.simulate_gpus, args.insecure) == ("2x24GiB", True)
    assert (args.max_memory_utilization, args.max_tasks_per_gpu) == ("0.8", "3")
    assert "max_memory_utilization" in args.settings_flags


def test_serve_help_names_design_variables(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for name in (
        "MAX_MEMORY_UTILIZATION",
        "MAX_TASKS_PER_GPU",
        "MEMORY_CONFIDENCE_FACTOR",
        "CALIBRATION_SAMPLE_SIZE",
        "GPUSCRIBE_SIMULATE_GPUS",
    ):
        assert name in out


def test_flags_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from gpuscribe.cli.commands_server import settings_from_args

    monkeypatch.setenv("MAX_TASKS_PER_GPU", "2")
    args = build_parser().parse_args(["worker", "--max-tasks-per-gpu", "4"])
    assert settings_from_args(args).max_tasks_per_gpu == 4
    args = build_parser().parse_args(["worker"])
    assert settings_from_args(args).max_tasks_per_gpu == 2


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["serve", "--max-memory-utilization", "1.5"], "max_memory_utilization"),
        (["serve", "--port", "abc"], "port"),
        (["estimate", "--calibration-sample-size", "0"], "calibration_sample_size"),
    ],
)
def test_config_errors_exit_2_naming_the_setting(
    argv: list[str], name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpuscribe: ")
    assert name in err


def test_config_error_from_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MAX_TASKS_PER_GPU", "zero")
    assert main(["serve"]) == 2
    assert "MAX_TASKS_PER_GPU" in capsys.readouterr().err


def test_missing_config_file_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--config", "nowhere.toml"]) == 2
    assert "nowhere.toml" in capsys.readouterr().err


def test_transcribe_options() -> None:
    args = build_parser().parse_args(
        [
            "transcribe",
            "a.wav",
            "b.mp3",
            "--format",
            "srt",
            "--output-dir",
            "out",
            "--priority",
            "urgent",
            "--word-timestamps",
            "--beam-size",
            "2",
        ]
    )
    assert args.files == ["a.wav", "b.mp3"]
    assert (args.format, args.output_dir, args.priority) == ("srt", "out", "urgent")
    assert (args.word_timestamps, args.vad_filter, args.beam_size) == (True, None, 2)


def test_transcribe_defaults() -> None:
    args = build_parser().parse_args(["transcribe", "a.wav"])
    assert (args.format, args.output_dir, args.server, args.json) == ("text", ".", None, False)


def test_transcribe_rejects_unknown_format() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["transcribe", "a.wav", "--format", "docx"])


def test_result_and_tasks_options() -> None:
    args = build_parser().parse_args(["result", "t1", "--format", "vtt", "-o", "x.vtt"])
    assert (args.id, args.format, args.output) == ("t1", "vtt", "x.vtt")
    args = build_parser().parse_args(["tasks", "--state", "failed", "--limit", "5", "--json"])
    assert (args.state, args.limit, args.json) == ("failed", 5, True)


def test_gpus_watch_takes_an_optional_interval() -> None:
    parser = build_parser()
    assert parser.parse_args(["gpus"]).watch is None
    assert parser.parse_args(["gpus", "--watch"]).watch == 2.0
    assert parser.parse_args(["gpus", "--watch", "0.5"]).watch == 0.5
    with pytest.raises(SystemExit):
        parser.parse_args(["gpus", "--watch", "0"])


def test_estimate_options() -> None:
    args = build_parser().parse_args(
        [
            "estimate",
            "--model",
            "large-v3",
            "--engine",
            "transformers",
            "--compute-type",
            "float16",
            "--batch-size",
            "4",
            "--beam-size",
            "1",
            "--gpu-name",
            "NVIDIA H200",
        ]
    )
    assert (args.model, args.engine, args.compute_type) == ("large-v3", "transformers", "float16")
    assert (args.batch_size, args.beam_size, args.gpu_name) == (4, 1, "NVIDIA H200")


def test_calibrate_lists() -> None:
    args = build_parser().parse_args(
        ["calibrate", "--model", "tiny,base", "--model", "small", "--batch-size", "1,8"]
    )
    from gpuscribe.cli.commands_server import _ints, _split

    assert _split(args.model) == ["tiny", "base", "small"]
    assert _ints(args.batch_size, "--batch-size", 1) == [1, 8]
    assert _ints(args.beam_size, "--beam-size", 5) == [5]


def test_bench_options() -> None:
    args = build_parser().parse_args(["bench", "--clips", "3", "--skip-service", "--json"])
    assert (args.clips, args.skip_service, args.json, args.check) == (3, True, True, False)


def test_client_command_needs_a_running_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "abc", "--server", "http://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err
    assert "not running at http://127.0.0.1:9" in err


def test_submit_of_a_missing_file_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", "missing.wav"]) == 1
    assert "missing.wav: no such file" in capsys.readouterr().err
