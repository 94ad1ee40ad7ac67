"""`python -m gpuscribe`: the `gpuscribe` command."""

from __future__ import annotations

import sys

from gpuscribe.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
