"""Run `gpuscribe bench` as a script: `python benchmarks/throughput.py [--clips N] [--json]`.

The same code as the command (`gpuscribe.bench.throughput`); see benchmarks/README.md.
"""

from __future__ import annotations

import sys

from gpuscribe.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
