"""The chat bot: models, prompts and generation. The UI (app.py) is a thin shell over it."""

import logging

# bitsandbytes (installed for QLoRA) warns at import, on CPUs with AVX-512 BF16, that an optional
# kernel package is missing; its built-in fallback works, so the warning is noise on every command.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
