"""The Train tab's background job: it never replaces an adapter, and a failed run keeps saying why."""

import pytest

from tiny import save_tiny
from ui.train import DEMO_DATA, TrainingJob


@pytest.fixture
def adapters(tmp_path, monkeypatch):
    monkeypatch.setenv("ICL_BOT_ADAPTERS", str(tmp_path / "adapters"))
    return tmp_path / "adapters"


def test_an_existing_adapter_is_not_replaced(adapters):
    (adapters / "mine").mkdir(parents=True)
    (adapters / "mine" / "adapter_config.json").write_text("{}")
    job = TrainingJob()
    with pytest.raises(ValueError, match="an adapter named 'mine' already exists; choose another name"):
        job.start(str(DEMO_DATA / "captain_kelp.jsonl"), "mine", "default", 2, 1e-3, 4)
    assert job.process is None
    assert [p.name for p in (adapters / "mine").iterdir()] == ["adapter_config.json"]


def test_an_interrupted_runs_checkpoint_is_not_discarded(adapters):
    """The page neither resumes nor restarts: a command-line run's checkpoint under that name stays."""
    saved = adapters / ".long.run" / "step-000040"
    saved.mkdir(parents=True)
    (saved / "state.pt").write_bytes(b"hours of steps")
    job = TrainingJob()
    with pytest.raises(ValueError, match="an interrupted run named 'long' left a checkpoint; choose another name, "
                                         "or resume it with `python -m adapters.train .* --resume`"):
        job.start(str(DEMO_DATA / "captain_kelp.jsonl"), "long", "default", 2, 1e-3, 4)
    assert job.process is None and (saved / "state.pt").read_bytes() == b"hours of steps"


def test_a_name_a_command_line_run_is_training_is_refused_as_in_progress(adapters):
    """It was called an interrupted run, to resume with --resume, which the running one refuses."""
    from adapters.checkpoint import run_lock

    with run_lock(adapters / "busy"):
        with pytest.raises(ValueError, match="a training run of 'busy' is going"):
            TrainingJob().start(str(DEMO_DATA / "captain_kelp.jsonl"), "busy", "default", 2, 1e-3, 4)


def test_a_failed_run_keeps_its_reason_and_names_the_file_not_where_uploads_live(adapters, tmp_path):
    bad = tmp_path / "uploads" / "a1b2c3" / "bad.jsonl"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"input": "a", "output": "b"}\nnot json\n')
    job = TrainingJob()
    job.start(str(bad), "fresh", save_tiny(tmp_path / "tiny"), 2, 1e-3, 4)
    job.process.wait(timeout=300)
    first, later = job.status(), job.status()  # the page polls every 2 s
    assert first == later == "training failed (2): error: bad.jsonl: line 2 is not JSON: Expecting value (column 1)"
    assert not (adapters / "fresh").exists()


def test_a_run_shows_its_progress_and_stops_without_writing_an_adapter(adapters, tmp_path):
    """Also when the app was started as a script's background job, whose children inherit SIGINT ignored."""
    import signal
    import time

    job = TrainingJob()
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        job.start(str(DEMO_DATA / "captain_kelp.jsonl"), "long", save_tiny(tmp_path / "tiny"), 2000, 1e-3, 4,
                  owner="page-a")
    finally:
        signal.signal(signal.SIGINT, handler)
    try:
        deadline = time.monotonic() + 120
        while "step" not in job.status() and job.running and time.monotonic() < deadline:
            time.sleep(0.2)
        progress = job.status()
        assert progress.startswith("training **long**: step ") and " of 2000, about " in progress, progress
        job.release("page-b")  # another visitor's page closes: the run is still page-a's
        with pytest.raises(ValueError, match="only the page that started this training run can stop it, until that "
                                             "page closes"):
            job.stop(by="page-b")
        assert job.running
        job.stop(by="page-a")
        job.process.wait(timeout=120)
    finally:
        job.process.kill()  # a failed check must not leave a 2000-step run loading the machine
    assert job.status() == "stopped **long**: no adapter written"
    assert not (adapters / "long").exists()


def test_a_model_given_relative_to_where_the_app_started_trains(adapters, tmp_path, monkeypatch):
    """`python app.py --model ./tiny` started elsewhere: the run starts in the project folder, where
    'tiny' named nothing ("unknown model 'tiny'")."""
    save_tiny(tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    job = TrainingJob()
    job.start(str(DEMO_DATA / "captain_kelp.jsonl"), "relative", "./tiny", 1, 1e-3, 4)
    job.process.wait(timeout=300)
    assert job.status().startswith("done: **relative**"), job.status()
