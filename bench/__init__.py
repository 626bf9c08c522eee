"""Benchmarks, one module each: `python -m bench NAME [args...]` runs `bench.NAME.main(args)`."""

import bot  # noqa: F401,E402  (its import quiets a bitsandbytes warning; see bot/__init__.py)
