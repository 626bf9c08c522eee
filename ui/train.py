"""The Train tab: start `python -m adapters.train` in a background process and follow its loss.

Training is off unless the operator sets `ICL_BOT_ENABLE_TRAINING=1` (a hosted Space should not
let visitors spend its CPU). Data comes from the bundled demo sets or an uploaded file; the new
adapter lands in the adapters folder, where the adapter pickers find it after a refresh.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import gradio as gr

from adapters.data import FORMATS as DATA_FORMATS
from bot.paths import REPO_ROOT  # where `python -m adapters.train` runs from, whatever the app's folder
from ui.escape import shown_error
from ui.text import t

DEMO_DATA = REPO_ROOT / "adapters" / "data"


def training_enabled() -> bool:
    return os.environ.get("ICL_BOT_ENABLE_TRAINING", "0").lower() in ("1", "true", "yes")


class TrainingJob:
    """One background training process at a time, and its loss log."""

    def __init__(self):
        self.process: subprocess.Popen | None = None
        self.output: Path | None = None
        self.log = None
        """The process's stdout and stderr: a file, which cannot fill up and stall it as a pipe can."""
        self.data: str = ""
        self.failure: str | None = None
        """The failed run's last line, read once."""
        self.lock = threading.Lock()
        self.owner: str | None = None
        """The session of the page that started the run; None once that page has closed."""

    def start(self, data: str, name: str, model: str, steps: int, learning_rate: float, rank: int,
              owner: str | None = None) -> Path:
        """Start a run; `owner` (the page's session) is the only one that may stop it."""
        from adapters.checkpoint import in_progress, latest
        from adapters.config import TrainConfig, check_adapter_name
        from bot.models import local_spec
        from bot.paths import adapters_dir

        check_adapter_name(name)
        output = adapters_dir() / name
        TrainConfig(data=data, output=str(output), max_steps=steps, learning_rate=learning_rate, rank=rank)
        if output.exists():  # another user's, perhaps: the command line may replace an adapter, this page may not
            raise ValueError(f"an adapter named '{name}' already exists; choose another name")
        if in_progress(output):
            raise ValueError(f"a training run of '{name}' is going (from the command line?); choose another name")
        if latest(output) is not None:  # this page neither resumes nor discards an interrupted run
            raise ValueError(f"an interrupted run named '{name}' left a checkpoint; choose another name, or resume "
                             f"it with `python -m adapters.train ... --name {name} --resume`")
        with self.lock:
            if self.running:
                raise ValueError("a training run is already going; wait for it to finish")
            command = [sys.executable, "-m", "adapters.train", "--data", data, "--out", str(output),
                       "--model", local_spec(model),  # the run starts in REPO_ROOT, not where the app was started
                       "--max-steps", str(steps), "--learning-rate", str(learning_rate), "--rank", str(rank),
                       "--alpha", str(2 * rank), "--no-progress"]
            if self.log is not None:
                self.log.close()
            self.log = tempfile.TemporaryFile("w+", encoding="utf-8")
            self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT)
            self.output, self.data, self.failure, self.owner = output, data, None, owner
            self.steps, self.started = steps, time.monotonic()
        return output

    def stop(self, by: str | None = None) -> None:
        """Interrupt the run as Ctrl-C would: `adapters.train` then writes no adapter. Only the page that
        started it may (`by`, its session), so that one visitor cannot end another's run; once that page
        has closed, any page may, or nobody could."""
        with self.lock:
            if not self.running:
                return
            if self.owner is not None and by != self.owner:
                raise ValueError("only the page that started this training run can stop it, until that page closes")
            self.process.send_signal(signal.SIGINT)

    def release(self, session: str | None) -> None:
        """The page of `session` has closed: if it started the run, the run goes on and any page may stop it."""
        with self.lock:
            if session is not None and session == self.owner:
                self.owner = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def losses(self) -> list[dict]:
        from adapters.checkpoint import run_dir
        from adapters.train import LOG_FILE, read_log

        if self.output is None:
            return []
        for log in (run_dir(self.output) / LOG_FILE, self.output / LOG_FILE):
            if log.is_file():
                return read_log(log)
        return []

    def progress(self, rows: list[dict]) -> str:
        """What follows the name: ': step 12 of 60, about 3 min left' once a step is logged, '…' before."""
        done = max((row["step"] for row in rows if "step" in row), default=0)
        if not done:
            return "…"
        left = (time.monotonic() - self.started) / done * (self.steps - done)  # loading the model counts too
        return f": step {done} of {self.steps}, about {max(1, round(left / 60))} min left"

    def status(self, rows: list[dict] | None = None) -> str:
        """The run's state in a line; `rows`, the loss log's if already read."""
        if self.process is None:
            return ""
        if self.running:
            return f"training **{self.output.name}**{self.progress(self.losses() if rows is None else rows)}"
        if self.process.returncode == 0:
            return f"done: **{self.output.name}** is in the adapters folder; press *Refresh adapters*"
        if self.process.returncode in (130, -signal.SIGINT):  # stopped here (or before Python set up its handler)
            return f"stopped **{self.output.name}**: no adapter written"
        with self.lock:  # every open page polls; start() may swap the log meanwhile
            if self.failure is None:
                self.log.seek(0)
                lines = self.log.read().strip().splitlines()
                errors = [line for line in lines if line.startswith("error:")] or lines[-1:]  # not a late warning
                # the message names the data file by its name, not by where the server keeps uploads
                self.failure = errors[-1].replace(self.data, Path(self.data).name) if errors else "no output"
            return f"training failed ({self.process.returncode}): {self.failure}"


def train_tab(model_spec: str) -> dict | None:
    """The tab's controls; returns its job and `release`, for the page's unload event, so that a
    run whose page has closed can still be stopped (None while training is off)."""
    if not training_enabled():
        gr.Markdown(t("training_disabled"))
        return None
    job = TrainingJob()
    demos = {path.stem: str(path) for path in sorted(DEMO_DATA.glob("*.jsonl"))}
    with gr.Row():
        with gr.Column():
            data = gr.Dropdown(list(demos), value=next(iter(demos), None), label=t("train_data"))
            upload = gr.File(label=t("train_file"), file_types=list(DATA_FORMATS), type="filepath")
            name = gr.Textbox("my-adapter", label=t("adapter_name"), elem_id="train-name")
            steps = gr.Slider(1, 2000, value=60, step=1, label=t("max_steps"), elem_id="train-steps")
            learning_rate = gr.Number(2e-3, label=t("learning_rate"))
            rank = gr.Slider(1, 64, value=8, step=1, label=t("rank"))
            with gr.Row():
                start = gr.Button(t("start_training"), variant="primary", elem_id="train-start")
                stop = gr.Button(t("stop_training"), variant="stop", elem_id="train-stop")
        with gr.Column():
            status = gr.Markdown(elem_id="train-status")
            loss = gr.LinePlot(x="step", y="loss", label=t("loss"))

    def begin(data, upload, name, steps, learning_rate, rank, request: gr.Request):
        try:
            job.start(upload or demos[data], name.strip(), model_spec, int(steps), float(learning_rate), int(rank),
                      owner=request.session_hash)
        except (ValueError, KeyError) as error:
            raise shown_error(error) from error
        return job.status()

    def halt(request: gr.Request):
        try:
            job.stop(by=request.session_hash)
        except ValueError as error:
            raise shown_error(error) from error

    def poll():
        import pandas as pd

        rows = job.losses()
        losses = [row for row in rows if "loss" in row]
        return job.status(rows), pd.DataFrame(losses or {"step": [], "loss": []})

    def release(request: gr.Request):
        job.release(request.session_hash)

    start.click(begin, [data, upload, name, steps, learning_rate, rank], status, api_name=False)
    stop.click(halt, None, None, api_name=False)  # the next poll says it stopped
    gr.Timer(2).tick(poll, outputs=[status, loss], api_name=False)
    return {"job": job, "release": release}
