"""Merge an adapter into its base and write a standalone model folder (weights + tokenizer).

    python -m adapters.export --adapter captain-kelp --out exports/captain-kelp
    python -m adapters.export --adapter /tmp/quokka --out /tmp/quokka-merged --model default

The adapter passes the registry's checks first (base, checksums, shapes). The merged weights are
W + (alpha / r) * B @ A, so the folder's outputs equal the unmerged adapter's within float
tolerance; it loads with plain transformers (or `python -m bot ask --model DIR`) and needs no PEFT.
`merged_from.json` beside the weights says which adapter and base it came from. The folder is
written atomically. This module does not train.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

MERGE_NOTE = "merged_from.json"
MERGED = "a merged model"


def export(adapter: str, out: Path | str, model: str = "default", dtype: str = "float32", registry=None) -> Path:
    """Load `model`, attach `adapter` (name, folder or hub id), merge it, and publish the folder `out`."""
    from adapters.host import AdapterHost, resolve_cli_adapter
    from adapters.publish import check_target, publish
    from adapters.registry import AdapterRegistry
    from bot.models import load_model

    check_target(out, MERGE_NOTE, MERGED)  # before loading and merging, not after
    registry = registry or AdapterRegistry()
    info = resolve_cli_adapter(adapter, registry)  # an unknown adapter fails before the model loads
    loaded = load_model(model, dtype=dtype, device="cpu")
    base_name = loaded.name
    name = AdapterHost(loaded, threading.Lock(), registry).attach_info(info)
    merged = loaded.model.merge_and_unload(adapter_names=[name])
    note = {"adapter": name, "adapter_source": str(adapter), "base_model": base_name, "dtype": dtype}

    def write(folder: Path) -> None:
        merged.save_pretrained(folder)
        loaded.tokenizer.save_pretrained(folder)
        (folder / MERGE_NOTE).write_text(json.dumps(note, indent=2) + "\n")
        # bot.models reads this to report the merged model under its base's lineage, not a temp path
        (folder / "source_name.txt").write_text(f"{base_name}+{name}\n")

    return publish(Path(out), write, marker=MERGE_NOTE, kind=MERGED)


def build_parser() -> argparse.ArgumentParser:
    from bot.cli import OneLineParser

    parser = OneLineParser(prog="python -m adapters.export", description="Merge a LoRA adapter into its base.")
    parser.add_argument("--adapter", required=True, help="registry name, adapter folder, or hub id")
    parser.add_argument("--out", required=True, help="folder to write the merged model into")
    parser.add_argument("--model", default="default", help="the adapter's base model spec")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    return parser


def main(args: argparse.Namespace) -> int:
    from adapters.checks import AdapterError
    from adapters.publish import TargetError
    from bot.models import ModelError

    from bot.cli import library_output_to_stderr

    try:
        with library_output_to_stderr():
            out = export(args.adapter, args.out, args.model, args.dtype)
    except (AdapterError, ModelError, TargetError, OSError) as error:  # OSError: a full disk, say
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"merged model written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(build_parser().parse_args()))
