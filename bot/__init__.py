"""The chat bot: models, prompts and generation. The UI (app.py) is a thin shell over it."""

import logging
import warnings

# bitsandbytes (installed for QLoRA) warns at import, on CPUs with AVX-512 BF16, that an optional
# kernel package is missing; its built-in fallback works, so the warning is noise on every command.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# peft 0.21 calls transformers 5's `is_gradient_checkpointing` (on every adapter load) and
# `gradient_checkpointing_enable` (for QLoRA), both deprecated there: warnings a user can do nothing about.
warnings.filterwarnings("ignore", message="`(is_)?gradient_checkpointing(_enable)?` is deprecated",
                        category=FutureWarning)
