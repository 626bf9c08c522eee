"""Benchmarks, one module each: `python -m bench NAME [args...]` runs `bench.NAME.main(args)`."""
