"""Command line: build a demonstration index from a pool file, and search it.

    python -m retrieval build --pool retrieval/pools/sentiment.jsonl --out .data/indexes/sentiment
    python -m retrieval build --pool reviews.csv --out idx --input-field text --output-field label --skip-bad
    python -m retrieval search --index .data/indexes/sentiment --query "loved it" -k 4 --json

`search --json` prints a JSON list of {"id", "input", "output", "score"}, most similar first,
score being the cosine similarity. Bad flags or values end with one line on stderr and a
non-zero exit status. Parsing lives here; `main(args)` does the work with heavy imports inside it.

`build --out` replaces only an index: a folder holding anything else, or the pool file, is
refused before any embedding starts (see `retrieval.storage.check_writable`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bot.cli import OneLineParser, positive_int


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m retrieval", description="Build and search demonstration indexes.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    build = commands.add_parser("build", help="embed a pool file and save its index")
    build.add_argument("--pool", required=True, help="JSONL, CSV, TSV or alpaca JSON file")
    build.add_argument("--out", required=True, help="index folder: new, empty, or an index to replace (crash-safe)")
    build.add_argument("--input-field", default="input", help="field or column holding the input text")
    build.add_argument("--output-field", default="output", help="field or column holding the answer")
    build.add_argument("--task", default=None, help="task description (default: the pool's sidecar <name>.json)")
    build.add_argument("--skip-bad", action="store_true", help="leave out bad rows instead of refusing the file")
    add_embedder_flag(build)

    search = commands.add_parser("search", help="print the examples nearest to a query")
    search.add_argument("--index", required=True, help="index folder made by `build`")
    search.add_argument("--query", required=True)
    search.add_argument("-k", type=positive_int, default=4, help="how many examples")
    search.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    add_embedder_flag(search)
    return parser


def add_embedder_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--embedder", default="default", help="'default' (all-MiniLM-L6-v2), 'hash', a folder or a hub id")


def main(args: argparse.Namespace) -> int:
    from retrieval.embedder import load_embedder

    try:
        if args.command == "build":
            check_build(args)
            pool = read_pool(args)  # a missing file or a bad row is named before the embedder loads
            return build(args, pool, load_embedder(args.embedder))
        check_search(args)
        return search(args, load_embedder(args.embedder))
    except (ValueError, OSError) as error:  # PoolError, EmbedderError, IndexMismatch, StorageError, bad k, disk full
        print(f"error: {error}", file=sys.stderr)
        return 2


def check_build(args: argparse.Namespace) -> None:
    """Refuse an --out that would overwrite anything but an index, before the slow embedding starts."""
    from retrieval.storage import check_writable

    if not args.out.strip():
        raise ValueError("--out is empty; name the folder to write the index into")
    if Path(args.pool).resolve().is_relative_to(Path(args.out).resolve()):
        raise ValueError(f"--out '{args.out}' holds the pool file '{args.pool}'; write the index into another folder")
    check_writable(Path(args.out))


def check_search(args: argparse.Namespace) -> None:
    if not args.query.strip():
        raise ValueError("--query is empty; give the text to search for")


def read_pool(args: argparse.Namespace):
    from retrieval.pool import BadRowsError, MissingColumnError, load_pool

    try:
        return load_pool(args.pool, args.input_field, args.output_field, skip_bad=args.skip_bad, task=args.task)
    except BadRowsError as error:
        raise BadRowsError(f"{error}; pass --skip-bad to leave them out") from None
    except MissingColumnError as error:
        raise MissingColumnError(f"{error}; choose one with --{error.field}-field", error.field) from None


def build(args: argparse.Namespace, pool, embedder) -> int:
    from retrieval.index import DemoIndex

    index = DemoIndex.build(pool, embedder)
    meta = index.save(args.out)
    notes = pool.notes()
    recall = f", recall@8 {meta['recall']:.3f}" if meta["kind"] != "exact" else ""
    extra = f" ({'; '.join(notes)})" if notes else ""
    print(f"indexed {len(pool)} examples with {embedder.name} ({meta['kind']}{recall}) into {args.out}{extra}")
    return 0


def search(args: argparse.Namespace, embedder) -> int:
    from retrieval.index import DemoIndex

    index = DemoIndex.load(args.index, embedder)
    found = index.nearest(args.query, args.k)
    rows = [{"id": e.id, "input": e.input, "output": e.output, "score": round(s, 6)} for e, s in found]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
        return 0
    for row in rows:
        print(f"{row['score']:.3f}  [{row['id']}]  {row['input']}  ->  {row['output']}")
    return 0


def run(argv: list[str] | None = None) -> int:
    return main(build_parser().parse_args(argv))
