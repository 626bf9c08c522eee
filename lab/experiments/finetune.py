"""Few-shot prompting vs fine-tuning on the same pool (and both together), optionally over
training-set sizes.

A LoRA adapter is trained with `adapters.train` (user: input, assistant: output) for `train_steps`
steps of `TRAIN_BATCH` rows, from the pool as the lab read it (written as `train_pool.jsonl`, any
pool format: CSV too): it sees `train_steps * TRAIN_BATCH` rows, repeats included (200 steps: 800
rows, fewer than a large pool holds). Then the test items are run three ways:
- `prompting`: the base model with k kNN-chosen demonstrations, in the configured prompt style;
- `finetuned`: the adapter, zero-shot, in the chat style it was trained on;
- `both`: the adapter with the same k kNN demonstrations, chat style.
Each condition reports accuracy and its cost per query: prompt tokens and seconds. Training time
is reported apart.

With `train_sizes`, all of this runs once per size N on N rows of the pool (nested samples drawn
with the first seed): the adapter trains on them and kNN picks from them. Every adapter gets the
same `train_steps`, so along the sweep only the data grows: where does the adapter overtake k
demonstrations, which cannot use more than k of the rows however many there are?
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from lab import plots
from lab.context import LabContext, with_adapter
from lab.data import nested_samples
from lab.errors import LabError
from lab.predict import Case, Predictor
from lab.prompt import PromptFormat, encode_ids
from lab.stats import accuracy
from lab.uncertainty import grouped_hits, summarise
from retrieval.pool import Pool

CONDITIONS = ("prompting", "finetuned", "both")
LORA_RANK = 8
LORA_LEARNING_RATE = 1e-3
TRAIN_BATCH = 4
TRAIN_MAX_LENGTH = 128


def train_adapter(ctx: LabContext, pool: Pool, name: str) -> tuple[Path, float]:
    """Train `ctx.out / name` on `pool`; returns the adapter folder and the seconds it took."""
    from adapters.config import TrainConfig
    from adapters.train import train

    config = ctx.config
    started = time.perf_counter()
    data = ctx.out / f"train_pool{name.removeprefix('adapter')}.jsonl"
    data.write_text("".join(json.dumps({"input": e.input, "output": e.output}, ensure_ascii=False) + "\n"
                            for e in pool.examples))
    try:
        folder = train(TrainConfig(
            data=str(data), output=str(ctx.out / name), model=config.model, rank=LORA_RANK,
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
    sweep = bool(config.train_sizes)  # the sizes were checked against k and the pool in lab.context
    pools = nested_samples(ctx.data.train, config.train_sizes, config.seeds[0]) if sweep else {None: ctx.data.train}
    results, trainings = [], []
    for index, (size, pool) in enumerate(pools.items()):
        def say(done: float, text: str, index=index, pool=pool) -> None:
            ctx.progress((index + done) / len(pools), f"{len(pool)} rows: {text}" if sweep else text)

        rows, training = _one_size(ctx, pool, "adapter" if size is None else f"adapter-{size}", say)
        results += rows
        trainings.append(training)
    return {"results": results, "trainings": trainings, "adapter": trainings[-1]["adapter"],
            "train_seconds": sum(t["seconds"] for t in trainings), "train_steps": config.train_steps,
            "train_rows_seen": config.train_steps * TRAIN_BATCH, "sweep": sweep}


def _one_size(ctx: LabContext, pool: Pool, name: str, say) -> tuple[list[dict], dict]:
    """The three conditions with demonstrations from, and an adapter trained on, `pool`."""
    config = ctx.config
    chooser = ctx.chooser if pool is ctx.data.train else ctx.chooser.over(pool)
    demos = [chooser.for_query(item.input, config.k, "knn", 0) for item in ctx.data.test]
    say(0.0, "prompting with kNN demonstrations")
    rows = [_measure(ctx, ctx.predictor, "prompting", demos)]
    say(0.05, f"training a LoRA adapter for {config.train_steps} steps")
    adapter, seconds = train_adapter(ctx, pool, name)
    tuned = with_adapter(ctx.loaded, adapter)
    chat = Predictor(tuned.model, tuned.tokenizer, PromptFormat("chat"), ctx.data.labels,
                     calibrated=config.calibrate, batch_size=config.batch_size, window=tuned.context_window)
    say(0.8, "scoring with the adapter")
    rows.append(_measure(ctx, chat, "finetuned", [()] * len(ctx.data.test)))
    rows.append(_measure(ctx, chat, "both", demos))
    return [{**row, "train_size": len(pool)} for row in rows], _training(len(pool), adapter, seconds)


def _training(size: int, adapter: Path, seconds: float) -> dict:
    """What the trainer did with `size` rows: it keeps those within TRAIN_MAX_LENGTH, and each pass over
    them ends with a short batch, so a pass is ceil(examples / TRAIN_BATCH) steps."""
    from adapters.metadata import AdapterMetadata

    meta = AdapterMetadata.read(adapter)
    passes = meta.steps / math.ceil(meta.examples / TRAIN_BATCH) if meta.examples else 0.0
    return {"train_size": size, "examples": meta.examples, "steps": meta.steps, "passes": passes,
            "adapter": str(adapter), "seconds": seconds}


def _measure(ctx: LabContext, predictor: Predictor, condition: str, demos: list) -> dict:
    cases = [Case(d, item.input, item.output) for d, item in zip(demos, ctx.data.test)]
    started = time.perf_counter()
    predictions = predictor.predict(cases)
    seconds = time.perf_counter() - started
    tokens = [len(encode_ids(predictor.tokenizer, p.text)) for p in predictor.prompts(cases)]
    return {"condition": condition, "accuracy": accuracy(predictions, [c.gold for c in cases]),
            "prompt_tokens": sum(tokens) / len(tokens), "seconds_per_query": seconds / len(cases),
            "predictions": predictions}


PAIRS = (("finetuned", "prompting"), ("both", "prompting"), ("both", "finetuned"))


def uncertainty(result: dict, golds: list[str]) -> dict:
    """Every condition (per size, in a sweep) with its interval; each pair of conditions on the same rows."""
    sweep = result.get("sweep", False)

    def suffix(size) -> str:
        return f", {size} rows" if sweep else ""

    rows = grouped_hits(((row["condition"] + suffix(row["train_size"]), row["predictions"])
                         for row in result["results"]), golds)
    sizes = dict.fromkeys(row["train_size"] for row in result["results"])
    return summarise(rows, [(f"{a} - {b}{suffix(size)}", a + suffix(size), b + suffix(size), False)
                            for size in sizes for a, b in PAIRS])


def table(result: dict) -> str:
    sweep = result.get("sweep", False)
    lines = ["| train rows | condition | accuracy | prompt tokens / query | seconds / query |", "|---|---|---|---|---|"]
    for row in result["results"]:
        size = row.get("train_size", "all")  # runs from before 2026-11-28 do not record it
        lines.append(f"| {size} | {row['condition']} | {row['accuracy']:.3f} | {row['prompt_tokens']:.0f} | "
                     f"{row['seconds_per_query']:.3f} |")
    seen = result.get("train_rows_seen")  # runs from before 2026-11-27 do not record it
    rows = f" of {TRAIN_BATCH} rows ({seen} rows seen, repeats included)" if seen else ""
    each = " per adapter" if sweep else ""
    lines.append(f"\nAdapter training: {result['train_steps']} steps{rows}{each}, {result['train_seconds']:.0f} s "
                 "in all. Prompting uses the run's --style; both adapter conditions use the chat style they were "
                 "trained in." + (" kNN picks from the same rows the adapter trained on." if sweep else ""))
    if sweep:
        passes = ", ".join(f"{t['train_size']} rows: {t['passes']:.1f}" for t in result["trainings"])
        short = min(t["passes"] for t in result["trainings"]) < 1
        lines.append(f"\nPasses over each training set: {passes}." + (
            " Below 1, that adapter never saw all its rows, so the sweep understates what they can teach: "
            f"raise the training steps (--train-steps) to at least the largest size / {TRAIN_BATCH}." if short else ""))
        lines.append("\nThe intervals below count the test items only: each size is one sample of the pool and one "
                     "training run, and another sample or seed would move its numbers too.")
    dropped = [t for t in result.get("trainings", []) if t.get("examples", t["train_size"]) < t["train_size"]]
    if dropped:
        counts = "; ".join(f"of {t['train_size']} rows, {t['train_size'] - t['examples']}" for t in dropped)
        lines.append(f"\nNot trained on ({counts}): no answer token was left within the trainer's {TRAIN_MAX_LENGTH} "
                     "tokens once the input was read. The rows counted above include them, and kNN may still show "
                     "them as demonstrations.")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    if result.get("sweep"):
        series = {c: {row["train_size"]: [row["accuracy"]] for row in result["results"] if row["condition"] == c}
                  for c in CONDITIONS}
        plots.curves(series, path, "kNN prompting vs LoRA fine-tuning, by training rows", "training rows",
                     log_x=True)
        return
    groups = {row["condition"]: [row["accuracy"]] for row in result["results"]}
    plots.bars(groups, path, "kNN prompting vs LoRA fine-tuning vs both")
