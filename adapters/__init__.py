"""LoRA adapters: train them (`train.py`), find and vet them (`registry.py`), attach them to a running
model (`host.py`), and merge them into standalone models (`export.py`). See adapters/README.md."""

import bot  # noqa: F401,E402  (its import quiets a bitsandbytes warning; see bot/__init__.py)
