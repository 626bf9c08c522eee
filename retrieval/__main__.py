"""`python -m retrieval ...`: see retrieval/cli.py."""

import sys

from retrieval.cli import run

if __name__ == "__main__":
    sys.exit(run())
