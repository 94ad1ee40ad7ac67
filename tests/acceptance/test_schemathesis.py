"""Property-based fuzzing of every operation in the service's own /openapi.json with schemathesis:
whatever it sends, the service never answers 5xx.

Two runs against one service on simulated GPUs (accepted uploads finish at once):
- the schemathesis command line over all operations and all its phases (examples, coverage,
  fuzzing, stateful), bounded by `--max-examples`;
- the pytest API, per operation, where every other case swaps in a real WAV file for the
  generated `file` bytes and a real task id for the generated one, so the fuzzed form fields and
  query values reach the code behind the audio check and the 404.

Needs `schemathesis` (dev extra).
"""

from __future__ import annotations

import contextlib
import itertools
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from support.audio import AudioSet
from support.server import ServiceProcess, submit, wait_all_done

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

pytestmark = pytest.mark.slow

CLI_MAX_EXAMPLES = 100
API_MAX_EXAMPLES = 50


@pytest.fixture(scope="module")
def fuzz_service(
    audio: AudioSet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServiceProcess, list[str], bytes]]:
    root = tmp_path_factory.mktemp("schemathesis")
    with ServiceProcess(
        root / "data", simulate_gpus="1x24GiB", env={"GPUSCRIBE_SIMULATION_SPEED": "500"}
    ) as service:
        ids = [submit(service.url, audio.speech(i, "wav").path)["id"] for i in range(3)]
        wait_all_done(service.url, ids, timeout=60)
        yield service, ids, audio.tone(0.5, "wav").read_bytes()


@pytest.fixture(scope="module")
def api_schema(fuzz_service: tuple[ServiceProcess, list[str], bytes]) -> Any:
    service, _, _ = fuzz_service
    return schemathesis.openapi.from_url(f"{service.url}/openapi.json")


def test_schemathesis_cli_finds_no_server_error(
    fuzz_service: tuple[ServiceProcess, list[str], bytes], tmp_path: Path
) -> None:
    service, _, _ = fuzz_service
    cli = Path(sys.executable).with_name("schemathesis")
    command = [
        str(cli) if cli.exists() else "schemathesis",
        "run",
        f"{service.url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        str(CLI_MAX_EXAMPLES),
        "--seed",
        "20240601",
        "--generation-database",
        "none",
        "--workers",
        "2",
        "--request-timeout",
        "60",
        "--no-color",
    ]
    proc = subprocess.run(
        command, capture_output=True, text=True, cwd=tmp_path, timeout=240, check=False
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, (
        f"schemathesis found failures (exit {proc.returncode}):\n{output[-6000:]}\n"
        f"service log:\n{service.log_tail(40)}"
    )
    tested = re.search(r"Tested:\s*(\d+)", output)
    assert tested and int(tested.group(1)) >= len(OPERATIONS), output[-2000:]
    assert httpx.get(f"{service.url}/healthz", timeout=10).status_code == 200


# Every operation of the contract. The test below also checks that /openapi.json has no other,
# so an operation added later is not left unfuzzed. (schemathesis' own `from_fixture`
# parametrization does not work with pytest 9: it reads the private `Function._nodeid`.)
OPERATIONS = (
    "POST /v1/tasks",
    "GET /v1/tasks",
    "GET /v1/tasks/{task_id}",
    "DELETE /v1/tasks/{task_id}",
    "GET /v1/tasks/{task_id}/result",
    "POST /v1/audio/transcriptions",
    "POST /v1/audio/translations",
    "GET /v1/queue",
    "GET /v1/gpus",
    "GET /v1/gpus/history",
    "GET /v1/calibration",
    "GET /healthz",
    "GET /metrics",
    "GET /v1/models",
)


def test_the_schema_documents_exactly_the_fuzzed_operations(api_schema: Any) -> None:
    labels = {result.ok().label for result in api_schema.get_all_operations()}
    assert labels == set(OPERATIONS)


def _strategy(operation: Any) -> Any:
    """Valid and invalid requests both (negative mode where the operation has inputs)."""
    strategies = [operation.as_strategy(GenerationMode.POSITIVE)]
    with contextlib.suppress(Exception):  # an operation without inputs has no invalid form
        strategies.append(operation.as_strategy(GenerationMode.NEGATIVE))
    return st.one_of(*strategies)


@pytest.mark.parametrize("label", OPERATIONS)
def test_every_operation_never_answers_5xx(
    label: str, api_schema: Any, fuzz_service: tuple[ServiceProcess, list[str], bytes]
) -> None:
    service, ids, wav = fuzz_service
    method, path = label.split(" ", 1)
    operation = api_schema[path][method]
    turn = itertools.count()
    seen: dict[int, int] = {}

    @given(case=_strategy(operation))
    @settings(
        max_examples=API_MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate],
    )
    def run(case: Any) -> None:
        realistic = next(turn) % 2 == 0
        if realistic and case.path_parameters and "task_id" in case.path_parameters:
            case.path_parameters["task_id"] = ids[len(seen) % len(ids)]
        if realistic and isinstance(case.body, dict) and "file" in case.body:
            case.body["file"] = wav
        response = case.call_and_validate(
            base_url=service.url, checks=[not_a_server_error], timeout=60
        )
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, (response.status_code, response.text[:500])

    run()
    assert seen, f"{label}: no request was made"
    print(f"\n{label}: statuses {dict(sorted(seen.items()))}")
