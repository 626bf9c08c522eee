"""Serve concurrent requests, each naming its adapter, in shared batches.

A `Batcher` collects requests for a short window (or until a batch is full), answers them with
one `Generator.complete_many` call, and hands each caller its own `Completion` through a future.
Requests that ask for different `GenerationSettings` never share a batch. Greedy answers in fp32
equal one-by-one answers; sampled answers are reproducible only for the batch as a whole.

It does not stream: a streaming chat request still goes through `Generator.stream`, which takes
the same generator lock, so batches and streams never run at once.

    batcher = Batcher(generator, window_s=0.02, max_batch=8)
    completion = batcher.complete(messages, settings, adapter="captain")   # from any thread
    batcher.close()
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from bot.generation import BASE, Completion, Generator
from bot.settings import GenerationSettings


@dataclass
class Request:
    messages: list[dict]
    settings: GenerationSettings
    adapter: str
    future: Future = field(default_factory=Future)


_STOP = object()
"""Put on the queue by `close`: the worker finishes what it holds and exits."""


class Batcher:
    def __init__(self, generator: Generator, window_s: float = 0.02, max_batch: int = 8):
        """`window_s`: how long the first request of a batch waits for company (seconds);
        `max_batch`: most requests answered by one `complete_many` call."""
        if window_s < 0:
            raise ValueError(f"window_s must be at least 0, got {window_s}")
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.generator = generator
        self.window_s = window_s
        self.max_batch = max_batch
        self.queue: queue.Queue = queue.Queue()
        self.closed = False
        self.worker = threading.Thread(target=self._serve, name="batcher", daemon=True)
        self.worker.start()

    def submit(self, messages: list[dict], settings: GenerationSettings, adapter: str = BASE) -> Future:
        """Queue one request; the future resolves to its Completion (or raises its error).

        The adapter and the prompt length are checked here, so one bad request fails alone
        instead of failing the batch it would have joined.
        """
        if self.closed:
            raise RuntimeError("the batcher is closed")
        known = [BASE, *self.generator.resident_adapters()]
        if adapter not in known:
            raise ValueError(f"unknown adapter '{adapter}'; available: {', '.join(known)}")
        self.generator.fit(messages, settings)  # raises PromptTooLong
        request = Request(messages=messages, settings=settings, adapter=adapter)
        self.queue.put(request)
        return request.future

    def complete(self, messages: list[dict], settings: GenerationSettings, adapter: str = BASE) -> Completion:
        """Submit and wait: the blocking call for one caller's thread."""
        return self.submit(messages, settings, adapter).result()

    def close(self) -> None:
        """Answer what is queued, then stop the worker."""
        if not self.closed:
            self.closed = True
            self.queue.put(_STOP)
            self.worker.join()

    def _serve(self) -> None:
        while True:
            batch, stop = self._collect()
            for group in _by_settings(batch):
                self._run(group)
            if stop:
                return

    def _collect(self) -> tuple[list[Request], bool]:
        """Block for one request, then take more until the window closes or the batch is full."""
        first = self.queue.get()
        if first is _STOP:
            return [], True
        batch = [first]
        deadline = time.monotonic() + self.window_s
        while len(batch) < self.max_batch:
            try:
                item = self.queue.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _run(self, group: list[Request]) -> None:
        """Answer one same-settings group; requests cancelled while queued are skipped."""
        live = [request for request in group if request.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            completions = self.generator.complete_many(
                [r.messages for r in live], live[0].settings, [r.adapter for r in live]
            )
        except BaseException as error:  # every caller in the batch sees the error
            for request in live:
                request.future.set_exception(error)
            return
        for request, completion in zip(live, completions):
            request.future.set_result(completion)


def _by_settings(batch: list[Request]) -> list[list[Request]]:
    """Requests grouped by settings, groups in order of their first request."""
    groups: dict[GenerationSettings, list[Request]] = {}
    for request in batch:
        groups.setdefault(request.settings, []).append(request)
    return list(groups.values())
