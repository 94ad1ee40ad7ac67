import pytest

from gpuscribe.cli.output import error, note, show


def test_results_go_to_stdout_and_problems_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    show("task-1")
    note("bench: 3 of 10 clips")
    error("no such file")
    out, err = capsys.readouterr()
    assert out == "task-1\n"
    assert err == "bench: 3 of 10 clips\ngpuscribe: no such file\n"
