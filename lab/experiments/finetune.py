"""Few-shot prompting vs fine-tuning on the same pool (and both together).

A LoRA adapter is trained on the train pool with `adapters.train` (user: input, assistant:
output) into `<result folder>/adapter`, from the pool as the lab read it (`train_pool.jsonl`), for
`train_steps` steps of `TRAIN_BATCH` rows: it sees `train_steps * TRAIN_BATCH` rows, fewer than a large
pool holds (200 steps: 800 rows). Then the test items are run three ways:
- `prompting`: the base model with k kNN-chosen demonstrations, in the configured prompt style;
- `finetuned`: the adapter, zero-shot, in the chat style it was trained on;
- `both`: the adapter with the same k kNN demonstrations, chat style.
Each condition reports accuracy and its cost per query: prompt tokens and seconds. Training time
is reported once, apart.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from lab import plots
from lab.context import LabContext, with_adapter
from lab.errors import LabError
from lab.predict import Case, Predictor
from lab.prompt import PromptFormat, encode_ids
from lab.stats import accuracy
from lab.uncertainty import hits, summarise

CONDITIONS = ("prompting", "finetuned", "both")
LORA_RANK = 8
LORA_LEARNING_RATE = 1e-3
TRAIN_BATCH = 4
TRAIN_MAX_LENGTH = 128


def train_adapter(ctx: LabContext) -> tuple[Path, float]:
    from adapters.config import TrainConfig
    from adapters.train import train

    config = ctx.config
    ctx.progress(0.05, f"training a LoRA adapter for {config.train_steps} steps")
    started = time.perf_counter()
    # The pool as the lab read it (any pool format: CSV too), in the trainer's JSONL format.
    data = ctx.out / "train_pool.jsonl"
    data.write_text("".join(json.dumps({"input": e.input, "output": e.output}, ensure_ascii=False) + "\n"
                            for e in ctx.data.train.examples))
    try:
        folder = train(TrainConfig(
            data=str(data), output=str(ctx.out / "adapter"), model=config.model, rank=LORA_RANK,
            alpha=2.0 * LORA_RANK, learning_rate=LORA_LEARNING_RATE, max_steps=config.train_steps,
            batch_size=TRAIN_BATCH, max_length=TRAIN_MAX_LENGTH, progress=False,
        ))
    except ValueError as error:
        raise LabError(f"adapter training failed: {error}") from error
    return Path(folder), time.perf_counter() - started


def run(ctx: LabContext) -> dict:
    config = ctx.config
    if config.backend != "local":
        raise LabError("the finetune experiment trains an adapter here; run it with the local backend")
    if ctx.data.task != "classify":
        raise LabError("the finetune experiment compares label scoring; its test set must be a classification task")
    demos = [ctx.chooser.for_query(item.input, config.k, "knn", 0) for item in ctx.data.test]
    results = [_measure(ctx, ctx.predictor, "prompting", demos)]
    adapter, train_seconds = train_adapter(ctx)
    tuned = with_adapter(ctx.loaded, adapter)
    chat = Predictor(tuned.model, tuned.tokenizer, PromptFormat("chat"), ctx.data.labels,
                     calibrated=config.calibrate, batch_size=config.batch_size, window=tuned.context_window)
    ctx.progress(0.8, "scoring with the adapter")
    results.append(_measure(ctx, chat, "finetuned", [()] * len(ctx.data.test)))
    results.append(_measure(ctx, chat, "both", demos))
    return {"results": results, "adapter": str(adapter), "train_seconds": train_seconds,
            "train_steps": config.train_steps, "train_rows_seen": config.train_steps * TRAIN_BATCH}


def _measure(ctx: LabContext, predictor: Predictor, condition: str, demos: list) -> dict:
    cases = [Case(d, item.input, item.output) for d, item in zip(demos, ctx.data.test)]
    started = time.perf_counter()
    predictions = predictor.predict(cases)
    seconds = time.perf_counter() - started
    tokens = [len(encode_ids(predictor.tokenizer, p.text)) for p in predictor.prompts(cases)]
    return {"condition": condition, "accuracy": accuracy(predictions, [c.gold for c in cases]),
            "prompt_tokens": sum(tokens) / len(tokens), "seconds_per_query": seconds / len(cases),
            "predictions": predictions}


COMPARISONS = (
    ("finetuned - prompting", "finetuned", "prompting", False),
    ("both - prompting", "both", "prompting", False),
    ("both - finetuned", "both", "finetuned", False),
)


def uncertainty(result: dict, golds: list[str]) -> dict:
    return summarise({row["condition"]: hits(row["predictions"], golds)[None] for row in result["results"]},
                     COMPARISONS)


def table(result: dict) -> str:
    lines = ["| condition | accuracy | prompt tokens / query | seconds / query |", "|---|---|---|---|"]
    for row in result["results"]:
        lines.append(f"| {row['condition']} | {row['accuracy']:.3f} | {row['prompt_tokens']:.0f} | "
                     f"{row['seconds_per_query']:.3f} |")
    seen = result.get("train_rows_seen")  # runs from before 2026-11-27 do not record it
    rows = f" of {TRAIN_BATCH} rows ({seen} rows seen, repeats included)" if seen else ""
    lines.append(f"\nAdapter training: {result['train_steps']} steps{rows}, {result['train_seconds']:.0f} s (once). "
                 "Prompting uses the run's --style; both adapter conditions use the chat style they were trained in.")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    groups = {row["condition"]: [row["accuracy"]] for row in result["results"]}
    plots.bars(groups, path, "kNN prompting vs LoRA fine-tuning vs both")
