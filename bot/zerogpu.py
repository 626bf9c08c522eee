"""Hugging Face ZeroGPU: on a ZeroGPU Space a GPU is lent per call of a function wrapped with
`spaces.GPU`. Where the `spaces` package is importable, the generator's model calls are wrapped,
with a lease sized to the request; elsewhere nothing changes."""

from __future__ import annotations

SECONDS_BASE = 15
"""Lease for the fixed costs of a call (moving inputs, prefill), in seconds."""
SECONDS_PER_TOKEN = 0.05
"""Lease per new token and batch row, generous for models up to 7B on a shared GPU."""


def lease_seconds(batch_rows: int, max_new_tokens: int) -> int:
    return int(SECONDS_BASE + SECONDS_PER_TOKEN * batch_rows * max_new_tokens)


def active() -> bool:
    """Whether `spaces` is importable, so model calls run under GPU leases."""
    try:
        import spaces  # noqa: F401
    except ImportError:
        return False
    return True


def on_gpu(generate):
    """`generate(inputs, settings, adapters, **kwargs)` wrapped with `spaces.GPU`, if available."""
    if not active():
        return generate
    import spaces

    def duration(inputs, settings, adapters, **kwargs):
        return lease_seconds(inputs["input_ids"].shape[0], settings.max_new_tokens)

    return spaces.GPU(duration=duration)(generate)
