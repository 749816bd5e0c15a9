"""The generation worker: one thread owns the engine and runs queued jobs, batching what it can.

Generation is compute bound, and one call at a time uses the device best, so a single thread
takes jobs from a bounded queue. `submit` refuses a job (`Busy`) once `max_queue` jobs are
waiting or running. Waiting non-streaming jobs with equal sampling settings are batched into one
`Engine.generate` call (up to `max_batch` prompts) when that cannot change their results: greedy
ones, or ones without a seed (a seed gives prompt i seed + i, so seeded jobs run alone to stay
reproducible). A streaming job whose reader went away (`cancelled`) stops at the next token.
Results go back to the event loop that submitted the job, thread-safely.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from dataclasses import dataclass, field

from lmforge.inference.engine import Completion, Engine
from lmforge.inference.sampling import SamplingParams

log = logging.getLogger("lmforge.server")


class Busy(Exception):
    """The queue is full."""


class WorkerClosed(Exception):
    """The worker was closed (the server is shutting down) or its thread is gone."""


@dataclass(eq=False)
class Job:
    prompts: list[list[int]]
    params: SamplingParams
    stream: bool
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future | None = None  # non-streaming: list[Completion]
    events: asyncio.Queue | None = None  # streaming: str deltas, then a Completion or an Exception
    cancelled: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def on_this_loop(cls, prompts: list[list[int]], params: SamplingParams, stream: bool) -> Job:
        """A job whose results go to the running event loop."""
        loop = asyncio.get_running_loop()
        if stream:
            return cls(prompts, params, True, loop, events=asyncio.Queue())
        return cls(prompts, params, False, loop, future=loop.create_future())

    @property
    def batchable(self) -> bool:
        return not self.stream and (self.params.greedy or self.params.seed is None)


class Worker:
    """Owns the Engine; runs jobs one batch at a time on a background thread."""

    def __init__(self, engine: Engine, max_queue: int, max_batch: int) -> None:
        self.engine, self.max_queue, self.max_batch = engine, max_queue, max_batch
        self.pending: deque[Job] = deque()
        self.running = 0
        self.stats = {"jobs": 0, "batches": 0}  # batches < jobs when requests were batched
        self.cv = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._loop, name="lmforge-generate", daemon=True)
        self.thread.start()

    def load(self) -> int:
        with self.cv:
            return len(self.pending) + self.running

    def submit(self, job: Job) -> None:
        with self.cv:
            if self.closed or not self.thread.is_alive():
                raise WorkerClosed()
            if len(self.pending) + self.running >= self.max_queue:
                raise Busy()
            self.pending.append(job)
            self.cv.notify()

    def close(self) -> None:
        with self.cv:
            self.closed = True
            self.cv.notify()

    def _take(self) -> list[Job] | None:
        with self.cv:
            while not self.pending and not self.closed:
                self.cv.wait()
            if self.closed:
                return None
            batch = [self.pending.popleft()]
            if batch[0].batchable:
                n = len(batch[0].prompts)
                for other in list(self.pending):
                    fits = n + len(other.prompts) <= self.max_batch
                    if other.batchable and other.params == batch[0].params and fits:
                        self.pending.remove(other)
                        batch.append(other)
                        n += len(other.prompts)
            self.running = len(batch)
            self.stats["jobs"] += len(batch)
            self.stats["batches"] += 1
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            try:
                live = [j for j in batch if not j.cancelled.is_set()]
                if live and live[0].stream:
                    self._run_stream(live[0])
                elif live:
                    self._run_batch(live)
            finally:
                with self.cv:
                    self.running = 0

    def _run_batch(self, jobs: list[Job]) -> None:
        prompts = [p for j in jobs for p in j.prompts]
        try:
            results: list[Completion] | Exception = self.engine.generate(prompts, jobs[0].params)
        except Exception as e:  # delivered to each request; the worker keeps going
            log.exception("generation failed")
            results = e
        start = 0
        for j in jobs:
            value = results if isinstance(results, Exception) else results[start : start + len(j.prompts)]
            start += len(j.prompts)
            j.loop.call_soon_threadsafe(_resolve, j.future, value)

    def _run_stream(self, job: Job) -> None:
        def put(item) -> None:
            job.loop.call_soon_threadsafe(job.events.put_nowait, item)

        stream = None
        try:
            stream = self.engine.stream(job.prompts[0], job.params)
            for delta in stream:
                if job.cancelled.is_set():
                    return
                put(delta)
            put(stream.completion)
        except Exception as e:
            log.exception("generation failed")
            put(e)
        finally:
            if stream is not None:
                stream.close()


def _resolve(future: asyncio.Future, value) -> None:
    if future.done():
        return
    if isinstance(value, Exception):
        future.set_exception(value)
    else:
        future.set_result(value)
