"""`python -m bench NAME [args...]`: import `bench.NAME` and call its `main(argv)`.

    python -m bench retrieval --sizes 10000 100000
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def available() -> list[str]:
    return sorted(info.name for info in pkgutil.iter_modules([str(Path(__file__).parent)]) if not info.name.startswith("_"))


def run(argv: list[str]) -> int:
    if argv[:1] in (["-h"], ["--help"]):
        print(f"usage: python -m bench NAME [args...]; NAME is one of: {', '.join(available())} "
              "(python -m bench NAME --help for its own)")
        return 0
    if not argv or argv[0] not in available():
        got = f"unknown benchmark '{argv[0]}'" if argv else "no benchmark named"
        print(f"python -m bench: error: {got}; available: {', '.join(available())}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"bench.{argv[0]}")
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
