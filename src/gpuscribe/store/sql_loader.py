"""Named SQL blocks, read from the `.sql` files shipped beside the stores (like aiosql).

A queries file is a series of blocks, each opened by a line `-- name: <query>`; the block runs
to the next such line. Other comment lines are dropped; a trailing semicolon is stripped.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*([A-Za-z_][A-Za-z0-9_]*)\s*$")


def read_sql(filename: str) -> str:
    """The text of a file of `gpuscribe/store/sql/`."""
    return resources.files("gpuscribe.store").joinpath("sql", filename).read_text("utf-8")


def parse_queries(text: str) -> dict[str, str]:
    """Parse `-- name:` blocks. A repeated name, or SQL before the first name, is an error."""
    queries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        match = _NAME.match(line.strip())
        if match:
            name = match.group(1)
            if name in queries:
                raise ValueError(f"query {name!r} defined twice (line {number})")
            current = queries[name] = []
        elif line.strip().startswith("--") or not line.strip():
            continue
        elif current is None:
            raise ValueError(f"SQL before the first '-- name:' line (line {number})")
        else:
            current.append(line.rstrip())
    return {name: _finish(name, lines) for name, lines in queries.items()}


def _finish(name: str, lines: list[str]) -> str:
    sql = "\n".join(lines).strip().rstrip(";").strip()
    if not sql:
        raise ValueError(f"query {name!r} is empty")
    return sql


@cache
def load_queries(filename: str) -> dict[str, str]:
    """The named queries of a file of `gpuscribe/store/sql/`, parsed once per process."""
    return parse_queries(read_sql(filename))
