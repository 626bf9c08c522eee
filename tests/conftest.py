import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# No test reaches for the network; the hub stays closed even on a laptop that has it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_configure(config):
    # Everything tests write goes to a temporary data home; the converted default model is shared
    # with the one `make install` prepared, so it is not converted again for every run.
    import tempfile

    from bot.paths import model_cache_dir

    os.environ.setdefault("ICL_BOT_MODEL_CACHE", str(model_cache_dir()))
    os.environ["ICL_BOT_HOME"] = tempfile.mkdtemp(prefix="icl-bot-tests-")
    os.environ.pop("ICL_BOT_ADAPTERS", None)
    config.addinivalue_line("markers", "integration: uses the real default model (slower)")
    config.addinivalue_line("markers", "browser: drives headless chromium")
    config.addinivalue_line("markers", "llamacpp: needs llama-cpp-python[server] (make test-llamacpp)")


@pytest.fixture(scope="session")
def tiny():
    """A LoadedModel with a tiny random Llama and its tokenizer (shared: do not mutate)."""
    from tiny import tiny_loaded

    return tiny_loaded()


@pytest.fixture(scope="session")
def default_model():
    """The real default model, fp32 so results are reproducible across batch shapes."""
    from bot.models import load_model

    return load_model("default", dtype="float32")


@pytest.fixture
def data_home(tmp_path, monkeypatch):
    """A private ICL_BOT_HOME for tests that write service files."""
    monkeypatch.setenv("ICL_BOT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ICL_BOT_ADAPTERS", raising=False)
    return tmp_path / "home"
