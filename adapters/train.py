"""Train a LoRA adapter on instruction data: a plain torch loop driven by accelerate's Accelerator.

    python -m adapters.train --data adapters/data/captain_kelp.jsonl --name captain-kelp \
        --max-steps 60 --learning-rate 3e-3 --rank 8 --max-length 128 --batch-size 8
    python -m adapters.train --data identity.json --fill name=Quokka --fill "author=ICL Lab" --out /tmp/quokka
    accelerate launch --config_file adapters/accelerate/multi_gpu.yaml -m adapters.train ...

The loss covers only the assistant's tokens (`encode.py`). The same code runs in one process and
under `accelerate launch` (DDP, FSDP, DeepSpeed): the Accelerator shards the batches and syncs the
gradients. The result is a PEFT adapter folder plus `adapter_metadata.json` and `train_log.jsonl`,
written atomically. `train(TrainConfig(...))` runs in process and returns the folder.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from adapters import checkpoint
from adapters.config import ALL_LINEAR, TrainConfig
from adapters.encode import Example
from retrieval.storage import write_file_atomic

LOG_FILE = "train_log.jsonl"
ADAPTER = "an adapter"
"""What the output folder holds, in messages about it."""


@dataclass
class Prepared:
    train: list[Example]
    eval: list[Example]
    examples: int
    """Training conversations with an answer within max_length (before packing)."""
    dropped: int = 0
    """Training conversations left out: no answer token within max_length."""
    cut: int = 0
    """Training conversations whose answers max_length cut short."""


@dataclass
class Run:
    """What the loop needs besides the model: built once, read everywhere."""

    config: TrainConfig
    accelerator: object
    data: Prepared
    pad_token_id: int
    steps_per_epoch: int
    total_steps: int
    identity: dict
    """What a checkpoint must match to be resumed (`run_identity`)."""
    head: object = None
    """The output head while the chunked loss runs (the model then returns hidden states), else None."""


def prepare_data(config: TrainConfig, conversations: list[list[dict]], tokenizer) -> Prepared:
    from adapters.encode import encode_all, encode_fitting, pack, split

    train_part, eval_part = split(conversations, config.eval_fraction, config.seed)
    if not train_part:
        raise ValueError(f"eval_fraction={config.eval_fraction} holds out all {len(conversations)} examples; "
                         "none is left to train on")
    fitted = encode_fitting(tokenizer, train_part, config.max_length)
    if not fitted.kept:
        raise ValueError(f"no training example keeps an answer within max_length={config.max_length} tokens")
    train = pack(fitted.kept, config.max_length) if config.packing else fitted.kept
    return Prepared(train=train, eval=encode_all(tokenizer, eval_part, config.max_length), examples=len(fitted.kept),
                    dropped=fitted.dropped, cut=fitted.cut)


def length_note(data: Prepared, max_length: int) -> str | None:
    """A line on the examples max_length cost, or None when it cost none."""
    if not (data.dropped or data.cut):
        return None
    total = data.examples + data.dropped
    return (f"note: of {total} training examples, {data.dropped} had no answer left within max_length={max_length} "
            f"and are left out, and {data.cut} were cut short; raise --max-length to keep them")


def epoch_loader(run: Run, epoch: int):
    """This epoch's batches in a seeded order (the same after a resume), sharded across processes."""
    import torch
    from torch.utils.data import DataLoader

    from adapters.encode import collate

    order = torch.randperm(len(run.data.train), generator=torch.Generator().manual_seed(run.config.seed + epoch))
    loader = DataLoader(
        [run.data.train[i] for i in order.tolist()], batch_size=run.config.batch_size, shuffle=False,
        collate_fn=lambda batch: collate(batch, run.pad_token_id),
    )
    return run.accelerator.prepare(loader)


def lr_lambda(total_steps: int, warmup_ratio: float):
    warmup = math.ceil(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def train(config: TrainConfig) -> Path:
    """Train an adapter as `config` says; return the published adapter folder."""
    from adapters.metadata import CONFIG_FILE
    from adapters.publish import check_target

    check_target(config.output, CONFIG_FILE, ADAPTER)  # before the work, not after it
    # One run per name: a second would clear this one's checkpoints and mix its loss log into them.
    first = int(os.environ.get("RANK", "0")) == 0  # under a launcher, before accelerate sets up its processes
    with checkpoint.run_lock(Path(config.output)) if first else nullcontext():
        return _locked_train(config)


def _locked_train(config: TrainConfig) -> Path:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin

    from adapters.data import load_conversations
    from adapters.lora import check_engine, check_qlora

    check_checkpoints(config)
    conversations = load_conversations(Path(config.data), config.fill)  # a bad file fails before the model loads
    if config.qlora:
        check_qlora()
    use_bf16 = config.precision == "bf16" or (config.precision == "auto" and (bf16_base() or cpu_bf16()))
    # A plugin, not gradient_accumulation_steps=, which the launcher's environment would override.
    accelerator = Accelerator(gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=config.grad_accum),
                              mixed_precision="bf16" if use_bf16 else "no")
    try:
        check_engine(accelerator.state, config)
        if accelerator.state.deepspeed_plugin is not None:  # DeepSpeed takes both from its config, before prepare()
            accelerator.state.deepspeed_plugin.deepspeed_config.update(
                train_micro_batch_size_per_gpu=config.batch_size, gradient_accumulation_steps=config.grad_accum)
        return _train(config, conversations, accelerator, load_bf16=use_bf16 and bf16_base())
    finally:
        if accelerator.num_processes == 1:
            _forget_accelerator_state()


def bf16_base() -> bool:
    """Whether a bf16 run also loads the frozen base in bf16: on a GPU that has bf16, where it halves
    the base's memory. On a CPU the base stays fp32 and autocast computes the matrix products in bf16."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX or AVX-512 BF16), where bf16
    autocast trains faster than fp32 (1.46x in `bench train` on the 2-core Xeon); without them
    bf16 is emulated and slower."""
    import torch

    if torch.cuda.is_available():
        return False
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private, so probed with care
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def _forget_accelerator_state() -> None:
    """Let a later in-process run (the lab calls `train` repeatedly) pick another precision.

    accelerate keeps its settings in process-wide singletons and refuses a second Accelerator with
    other settings; a single-process run is over here, so nothing else relies on them.
    """
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _train(config: TrainConfig, conversations: list[list[dict]], accelerator, load_bf16: bool) -> Path:
    import torch
    from accelerate.utils import set_seed

    from adapters.lora import load_base, wrap
    from adapters.metadata import fingerprint_is_collective, weights_fingerprint, weights_sample
    from adapters.speed import compile_blocks, head_off

    started = time.perf_counter()
    set_seed(config.seed)
    base = load_base(config.model, config.qlora, str(accelerator.device), load_bf16)
    data = prepare_data(config, conversations, base.tokenizer)
    note = length_note(data, config.max_length)
    if note and accelerator.is_main_process:
        print(note, file=sys.stderr)
    # Under FSDP only the main process is sure to hold the weights (the others may hold meta tensors).
    collective = fingerprint_is_collective(base.model)
    weights = ((weights_fingerprint(base.model), weights_sample(base.model))
               if collective or accelerator.is_main_process else ("", []))
    model = wrap(base.model, config, base.name)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    model, optimizer = accelerator.prepare(model, optimizer)
    micro_batches = math.ceil(len(data.train) / config.batch_size / accelerator.num_processes)
    steps_per_epoch = math.ceil(micro_batches / config.grad_accum)
    total = config.max_steps or math.ceil(config.epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total, config.warmup_ratio))
    run = Run(config, accelerator, data, base.tokenizer.pad_token_id, steps_per_epoch, total, run_identity(config))

    inner = accelerator.unwrap_model(model)  # the PeftModel inside DDP's wrapper
    speed = choose_speedups(run, inner)
    if speed.compile:
        compile_blocks(inner)
    with head_off(inner.get_base_model()) if speed.chunked_loss else nullcontext() as run.head:
        step = resume_or_start(run, model, optimizer, scheduler)
        last_loss = loop(run, model, optimizer, scheduler, step)
        eval_loss = evaluate(run, model) if data.eval else None
    run.head = None  # back on the model
    stats = {"steps": total, "final_loss": last_loss, "eval_loss": eval_loss, "seconds": time.perf_counter() - started,
             "engine": engine_name(accelerator.state),
             "speedups": speed.names()}
    return finish(run, model, base, weights, stats)


def choose_speedups(run: Run, peft_model):
    """`adapters.speed.choose` for this run; an explicit --chunked-loss on a model whose loss cannot
    be chunked is an error, an automatic one falls back to the model's own loss."""
    from adapters.lora import is_sharded
    from adapters.speed import Speedups, check_head, choose

    config, accelerator, base = run.config, run.accelerator, peft_model.get_base_model()
    mean_tokens = sum(len(example.input_ids) for example in run.data.train) / len(run.data.train)
    work = run.total_steps * config.grad_accum * config.batch_size * mean_tokens * base.num_parameters()
    speed = choose(config, is_sharded(accelerator.state), accelerator.device.type, work)
    unchunkable = check_head(base) if speed.chunked_loss else None
    if unchunkable and config.chunked_loss:
        raise ValueError(f"--chunked-loss cannot train this model: {unchunkable}; use --no-chunked-loss")
    return Speedups(chunked_loss=speed.chunked_loss and not unchunkable, compile=speed.compile)


def model_loss(run: Run, model, batch: dict):
    """The batch's mean loss over its labelled tokens: the model's own, or the chunked one."""
    if run.head is None:
        return model(**batch).loss
    from adapters.speed import chunked_loss

    hidden = model(**{key: value for key, value in batch.items() if key != "labels"}).logits
    with run.accelerator.autocast():  # as the model's own loss runs, inside its autocast forward
        return chunked_loss(hidden, run.head.weight, batch["labels"], run.head.bias)


def engine_name(state) -> str:
    """How `state` (an AcceleratorState) distributes the run, for the adapter's metadata."""
    from accelerate.utils import DistributedType

    kind = state.distributed_type
    if kind == DistributedType.NO:
        return "one process"
    if kind == DistributedType.FSDP:
        name = f"FSDP{state.fsdp_plugin.fsdp_version}"
    elif kind == DistributedType.DEEPSPEED:
        name = f"DeepSpeed ZeRO-{state.deepspeed_plugin.zero_stage}"
    else:
        name = "DDP"
    return f"{name} x{state.num_processes}"


RESUMABLE = ("resume", "restart", "progress", "save_every", "log_every", "chunked_loss", "compile", "data", "output")
"""Options a resumed run may change: they do not change what is trained. The data file counts by
its hash, not its path (`./a.jsonl` and `a.jsonl` are one file), and the checkpoint's folder already
says which output it belongs to (`--name x` or `--out adapters/x`)."""


def run_identity(config: TrainConfig) -> dict:
    """The options and the data's hash: a checkpoint resumes only a run with the same ones."""
    from adapters.metadata import file_sha256

    from bot.models import local_spec

    identity = {key: value for key, value in config.as_dict().items() if key not in RESUMABLE}
    identity["model"] = local_spec(config.model)  # however the folder was typed
    identity["data_sha256"] = file_sha256(Path(config.data))
    return identity


def check_checkpoints(config: TrainConfig) -> None:
    """Refuse --resume without a checkpoint, and a fresh start over an interrupted run's checkpoint
    unless --restart says to discard it: running the same command again must not delete hours of steps."""
    output = Path(config.output)
    found = checkpoint.latest(output)
    if config.resume and found is None:
        raise FileNotFoundError(f"--resume: no checkpoint of '{output.name}' in {checkpoint.run_dir(output)}")
    if found is not None and not (config.resume or config.restart):
        raise ValueError(f"an interrupted run of '{output.name}' left a checkpoint at step {checkpoint.step_of(found)} "
                         f"in {checkpoint.run_dir(output)}; add --resume to continue it, or --restart to discard it "
                         "and start over")


def resume_or_start(run: Run, model, optimizer, scheduler) -> int:
    """The step to start from: a checkpoint's with --resume, else 0 after clearing an old run's files
    (`check_checkpoints` has made sure that either is what the user asked for)."""
    output = Path(run.config.output)
    found = checkpoint.latest(output) if run.config.resume else None
    if found is None:
        if run.accelerator.is_main_process:
            checkpoint.remove_all(output)
            checkpoint.run_dir(output).mkdir(parents=True, exist_ok=True)
        run.accelerator.wait_for_everyone()
        return 0
    step = checkpoint.load(found, model, optimizer, scheduler, run.identity).step
    if run.accelerator.is_main_process:
        _truncate_log(output, step)
    return step


def loop(run: Run, model, optimizer, scheduler, step: int) -> float | None:
    """Take optimizer steps until `run.total_steps`; return the last logged loss."""
    import torch
    from tqdm.auto import tqdm

    accelerator, config = run.accelerator, run.config
    bar = tqdm(total=run.total_steps, initial=step, desc="training", disable=not (config.progress and accelerator.is_main_process))
    model.train()
    last_loss, losses = None, []
    while step < run.total_steps:
        epoch, done_in_epoch = divmod(step, run.steps_per_epoch)
        loader = accelerator.skip_first_batches(epoch_loader(run, epoch), done_in_epoch * config.grad_accum)
        for batch in loader:
            with accelerator.accumulate(model):
                loss = model_loss(run, model, batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    norm = accelerator.clip_grad_norm_(model.parameters(), 1.0)
                    if norm is not None and not torch.isfinite(torch.as_tensor(norm)).item():
                        raise ValueError(f"training diverged: the gradient is {float(norm)} at step {step + 1}, so no "
                                         "adapter is written; try a lower --learning-rate or --alpha")
                optimizer.step()
                optimizer.zero_grad()
            losses.append(loss.detach())
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            mean = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
            losses = []
            if not math.isfinite(mean):  # the weights are ruined from here: nothing worth publishing follows
                raise ValueError(f"training diverged: the loss is {mean} at step {step}, so no adapter is written; "
                                 "try a lower --learning-rate or --alpha")
            if step % config.log_every == 0 or step == run.total_steps:
                last_loss = mean
                _log(run, {"step": step, "epoch": round(step / run.steps_per_epoch, 3), "loss": round(mean, 5),
                           "lr": scheduler.get_last_lr()[0]})
                bar.set_postfix(loss=f"{mean:.4f}")
            bar.update(1)
            if config.save_every and step % config.save_every == 0 and step < run.total_steps:
                _checkpoint(run, model, optimizer, scheduler, step)
            if step >= run.total_steps:
                break
    bar.close()
    return last_loss


def _checkpoint(run: Run, model, optimizer, scheduler, step: int) -> None:
    weights, optimizer_state = checkpoint.gather(model, optimizer)  # a collective under FSDP
    if run.accelerator.is_main_process:
        checkpoint.save(Path(run.config.output), step, weights, optimizer_state, scheduler, run.identity)
    run.accelerator.wait_for_everyone()


def evaluate(run: Run, model) -> float:
    """Mean loss over the held-out examples; every process computes it on all of them."""
    import torch

    from adapters.encode import collate

    model.eval()
    losses = []
    with torch.no_grad():
        for start in range(0, len(run.data.eval), run.config.batch_size):
            batch = collate(run.data.eval[start : start + run.config.batch_size], run.pad_token_id)
            losses.append(model_loss(run, model, {k: v.to(run.accelerator.device) for k, v in batch.items()}).item())
    return sum(losses) / len(losses)


def finish(run: Run, model, base, weights: tuple[str, list[float]], stats: dict) -> Path:
    """Publish the adapter folder atomically (main process) and drop the checkpoints."""
    from adapters.lora import save_weights
    from adapters.metadata import CONFIG_FILE, AdapterMetadata, file_sha256, file_checksums
    from adapters.publish import publish

    accelerator, config = run.accelerator, run.config
    output = Path(config.output)
    accelerator.wait_for_everyone()
    state = accelerator.get_state_dict(model)  # a collective under FSDP / ZeRO-3: every process calls it
    if accelerator.is_main_process:

        def write(folder: Path) -> None:
            save_weights(accelerator.unwrap_model(model), folder, state)
            log = checkpoint.run_dir(output) / LOG_FILE
            (folder / LOG_FILE).write_bytes(log.read_bytes() if log.is_file() else b"")
            data_path = Path(config.data)
            AdapterMetadata(
                base_model=base.name, base_fingerprint=weights[0], base_sample=weights[1],
                checksums=file_checksums(folder),
                chat_template=base.tokenizer.chat_template, data_file=str(config.data),
                data_sha256=file_sha256(data_path), examples=run.data.examples, eval_examples=len(run.data.eval),
                config=config.as_dict(), **stats,
            ).write(folder)

        publish(output, write, marker=CONFIG_FILE, kind=ADAPTER)
        checkpoint.remove_all(output)
    accelerator.wait_for_everyone()
    return output


def _log(run: Run, row: dict) -> None:
    if run.accelerator.is_main_process:
        with (checkpoint.run_dir(Path(run.config.output)) / LOG_FILE).open("a") as handle:
            handle.write(json.dumps(row) + "\n")


def read_log(path: Path) -> list[dict]:
    """The rows of a loss log. A line cut short (the run was killed as it wrote, or the line is
    being written now) is left out."""
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def _truncate_log(output: Path, step: int) -> None:
    """Keep the loss log's rows up to the resumed step; later ones were lost with the crash."""
    log = checkpoint.run_dir(output) / LOG_FILE
    if log.is_file():
        rows = [row for row in read_log(log) if row.get("step", 0) <= step]
        write_file_atomic(log, lambda temp: temp.write_text("".join(json.dumps(row) + "\n" for row in rows)))


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    from bot.cli import DefaultsHelpFormatter, OneLineParser
    from bot.docstrings import field_default, help_texts

    docs = help_texts(TrainConfig)
    parser = OneLineParser(prog="python -m adapters.train", description="Train a LoRA adapter.",
                           formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--data", required=True, help=docs["data"])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="adapter folder to write; its name is the adapter's name")
    where.add_argument("--name", help="adapter name: writes into the adapters directory ($ICL_BOT_ADAPTERS)")
    parser.add_argument("--model", default="default", help=docs["model"])
    parser.add_argument("--fill", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                        help="value for {{KEY}} placeholders in the data (repeatable)")
    parser.add_argument("--target-modules", default=ALL_LINEAR, help="comma-separated module names, or all-linear")
    for flag, kind in [("rank", int), ("alpha", float), ("dropout", float), ("learning-rate", float),
                       ("epochs", float), ("max-steps", int), ("batch-size", int), ("grad-accum", int),
                       ("max-length", int), ("warmup-ratio", float), ("seed", int), ("eval-fraction", float),
                       ("save-every", int), ("log-every", int), ("precision", str)]:
        field = flag.replace("-", "_")
        parser.add_argument(f"--{flag}", type=kind, default=field_default(TrainConfig, field),
                            help=docs[field])
    for flag in ("packing", "resume", "restart", "qlora", "gradient-checkpointing"):
        parser.add_argument(f"--{flag}", action="store_true", help=docs[flag.replace("-", "_")])
    for flag in ("chunked-loss", "compile"):
        parser.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction, default=None,
                            help=docs[flag.replace("-", "_")].replace(" None:", " Unset:"))
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    from adapters.config import check_adapter_name
    from bot.paths import adapters_dir

    if args.name is not None:
        check_adapter_name(args.name)  # a name, not a path: it must land inside the adapters directory
    targets = args.target_modules if args.target_modules == ALL_LINEAR else args.target_modules.split(",")
    options = {k: v for k, v in vars(args).items() if k not in ("out", "name", "fill", "target_modules", "no_progress")}
    return TrainConfig(
        output=args.out if args.out is not None else str(adapters_dir() / args.name), fill=dict(args.fill),
        target_modules=targets, progress=not args.no_progress, **options,
    )


def main(args: argparse.Namespace) -> int:
    from adapters.lora import IncompleteAdapter, QLoRAUnavailable
    from bot.cli import library_output_to_stderr

    config = None
    try:
        config = config_from_args(args)
        with library_output_to_stderr():
            output = train(config)
    except (ValueError, OSError, QLoRAUnavailable, IncompleteAdapter) as error:  # OSError: a full disk, say
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        found = checkpoint.latest(Path(config.output)) if config is not None else None
        saved = f" (--resume continues from step {checkpoint.step_of(found)})" if found is not None else ""
        print(f"interrupted: no adapter written; an earlier adapter in that folder is unchanged{saved}", file=sys.stderr)
        return 130
    if _is_main_process():
        print(f"adapter written: {output}")
    _leave_process_group()
    return 0


def _leave_process_group() -> None:
    """Under `accelerate launch`, shut the process group down before the interpreter does: gloo's
    worker threads, left to exit with it, now and then abort the process (SIGABRT, "terminate called
    without an active exception") after the adapter is written. Only after a run that finished on
    every rank: after a failure another rank may still wait in a collective, and NCCL's shutdown
    would wait with it."""
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _is_main_process() -> bool:
    """False in every process but the first under `accelerate launch` / torchrun."""
    from accelerate import PartialState

    return PartialState().is_main_process


if __name__ == "__main__":
    # A background job of a script starts with SIGINT ignored, and Python then leaves it so: the Train
    # tab's Stop (of an app started that way) and `kill -INT` must still interrupt the run.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main(build_parser().parse_args()))
