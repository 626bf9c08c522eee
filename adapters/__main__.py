"""List the adapters in the adapters directory.

    python -m adapters list            # a table: name, base model, steps, final loss
    python -m adapters list --json     # one JSON array, for scripts
    python -m adapters list --dir PATH # another adapters directory

Training and export have their own entry points (`python -m adapters.train`, `python -m adapters.export`).
"""

from __future__ import annotations

import argparse
import json
import sys


def build_parser() -> argparse.ArgumentParser:
    from bot.cli import OneLineParser

    parser = OneLineParser(prog="python -m adapters", description="Manage LoRA adapters.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    listing = commands.add_parser("list", help="list the adapters and their metadata")
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    listing.add_argument("--dir", default=None, help="adapters directory (default: the service's)")
    return parser


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from adapters.registry import AdapterRegistry

    if args.dir is not None and not Path(args.dir).is_dir():
        print(f"error: adapters directory '{args.dir}' does not exist", file=sys.stderr)
        return 2
    registry = AdapterRegistry(args.dir)
    rows = [info.summary() for info in registry.list()]
    for line in registry.passed_over():  # on stderr: --json's stdout stays one JSON array
        print(f"not listed: {line}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    if not rows:
        print("no adapters")
        return 0
    for row in rows:
        loss = "-" if row["final_loss"] is None else f"{row['final_loss']:.3f}"
        state = f"  UNUSABLE: {row['problem']}" if row["problem"] else ""
        print(f"{row['name']:<24} base={row['base_model']}  steps={row['steps']}  loss={loss}{state}")
    return 0


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
