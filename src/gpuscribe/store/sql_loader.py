"""Named SQL blocks, read from the `.sql` files shipped beside the stores (like aiosql), and
the numbered schema migrations.

A queries file is a series of blocks, each opened by a line `-- name: <query>`; the block runs
to the next such line. Other comment lines are dropped; a trailing semicolon is stripped.

Migrations are the files `<dialect>_<NNNN>_<what>.sql` (`postgres_0002_cluster.sql`): each is
applied once, in order of its number, and recorded in `schema_version`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*([A-Za-z_][A-Za-z0-9_]*)\s*$")
_MIGRATION = re.compile(r"^(postgres|sqlite)_([0-9]{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    filename: str
    sql: str


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


@cache
def migrations(dialect: str) -> tuple[Migration, ...]:
    """The migrations of `dialect` (`postgres` or `sqlite`), in order. Numbers must run 1, 2, ..."""
    found = []
    for entry in resources.files("gpuscribe.store").joinpath("sql").iterdir():
        match = _MIGRATION.match(entry.name)
        if match and match.group(1) == dialect:
            found.append(Migration(int(match.group(2)), entry.name, entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    numbers = [m.version for m in found]
    if numbers != list(range(1, len(found) + 1)):
        raise RuntimeError(f"{dialect} migrations are not numbered 1, 2, ...: {numbers}")
    return tuple(found)
