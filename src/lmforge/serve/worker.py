"""The generation worker: one thread owns the engine and runs every request through one
continuous batch (`lmforge.inference.scheduler.Scheduler`).

Generation is compute bound and the model is one, so a single thread drives it. Requests are
queued by `submit` (refused with `Busy` once `max_queue` are waiting or running) and join the
running batch at its next step: concurrent requests share decode steps, whatever their sampling
settings, lengths or arrival times, and each gets the tokens it would get alone. `max_batch`
bounds the running sequences (a request's prompts x n count one each); `max_batch=1` runs them
one at a time. A request whose reader went away (`cancelled`) leaves the batch at the next step.
Results go back to the event loop that submitted the request, thread-safely: a future of
`Completion`s, or for a stream a queue of `StreamDelta`s and `StreamEnd`s closed by the list of
completions (or an exception).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from dataclasses import dataclass, field

from lmforge.inference.engine import Completion, Engine
from lmforge.inference.sampling import SamplingParams, TokenLogprob
from lmforge.inference.scheduler import Scheduler, Sequence

log = logging.getLogger("lmforge.server")


class Busy(Exception):
    """The queue is full."""


class WorkerClosed(Exception):
    """The worker was closed (the server is shutting down) or its thread is gone."""


@dataclass
class StreamDelta:
    index: int  # the choice
    text: str
    logprob: TokenLogprob | None


@dataclass
class StreamEnd:
    index: int
    completion: Completion


@dataclass(eq=False)
class Job:
    prompts: list[list[int]]
    params: SamplingParams
    stream: bool
    loop: asyncio.AbstractEventLoop
    logprobs: int | None = None  # alternatives per token; None: no log-probabilities
    echo: bool = False  # also the prompt tokens' log-probabilities
    future: asyncio.Future | None = None  # non-streaming: list[Completion]
    # streaming: StreamDelta and StreamEnd items, then the list of Completions (or an Exception)
    events: asyncio.Queue | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    sequences: list[Sequence] = field(default_factory=list)

    @classmethod
    def on_this_loop(
        cls, prompts: list[list[int]], params: SamplingParams, stream: bool, logprobs=None, echo=False
    ) -> Job:
        """A job whose results go to the running event loop."""
        loop = asyncio.get_running_loop()
        if stream:
            return cls(prompts, params, True, loop, logprobs, echo, events=asyncio.Queue())
        return cls(prompts, params, False, loop, logprobs, echo, future=loop.create_future())

    def send(self, item) -> None:
        """Hand `item` to the job's event loop (a stream event, or the final result)."""
        if self.stream:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        else:
            self.loop.call_soon_threadsafe(_resolve, self.future, item)


class Worker:
    """Owns the Engine; a background thread steps one continuous batch of all running jobs."""

    def __init__(self, engine: Engine, max_queue: int, max_batch: int) -> None:
        self.engine, self.max_queue, self.max_batch = engine, max_queue, max_batch
        self.scheduler = Scheduler(engine, max_batch)
        self.pending: deque[Job] = deque()
        self.active: list[Job] = []
        self.stats = {"jobs": 0, "steps": 0, "peak_batch": 0}
        self.cv = threading.Condition()
        self.closed = False
        self.thread = threading.Thread(target=self._loop, name="lmforge-generate", daemon=True)
        self.thread.start()

    def load(self) -> int:
        with self.cv:
            return len(self.pending) + len(self.active)

    def submit(self, job: Job) -> None:
        with self.cv:
            if self.closed or not self.thread.is_alive():
                raise WorkerClosed()
            if len(self.pending) + len(self.active) >= self.max_queue:
                raise Busy()
            self.pending.append(job)
            self.cv.notify()

    def close(self) -> None:
        with self.cv:
            self.closed = True
            self.cv.notify()

    def _loop(self) -> None:
        owner: dict[Sequence, tuple[Job, int]] = {}
        while True:
            with self.cv:
                while not self.pending and self.scheduler.idle and not self.closed:
                    self.cv.wait()
                if self.closed:
                    return
                arrived = list(self.pending)
                self.pending.clear()
                self.active.extend(arrived)
            for job in arrived:
                job.sequences = self.scheduler.add(job.prompts, job.params, job.logprobs, job.echo)
                owner.update((s, (job, i)) for i, s in enumerate(job.sequences))
                self.stats["jobs"] += 1
            for job in [j for j in self.active if j.cancelled.is_set()]:
                for s in job.sequences:
                    self.scheduler.cancel(s)
                self._retire(job, owner)
            try:
                events = self.scheduler.step()
            except Exception as e:  # delivered to every running job; the worker keeps going
                log.exception("generation failed")
                self.scheduler.reset()
                for job in list(self.active):
                    job.send(e)
                    self._retire(job, owner)
                continue
            self.stats["steps"] += 1
            self.stats["peak_batch"] = max(self.stats["peak_batch"], len(self.scheduler.running))
            self._deliver(events, owner)

    def _deliver(self, events, owner: dict) -> None:
        ended = []
        for seq, text, logprob in events:
            if seq not in owner:  # its job was cancelled or failed meanwhile
                continue
            job, index = owner[seq]
            if job.stream and (text or logprob is not None):
                job.send(StreamDelta(index, text, logprob))
            if seq.finished:
                if job.stream:
                    job.send(StreamEnd(index, seq.completion()))
                if job not in ended and all(s.finished for s in job.sequences):
                    ended.append(job)
        for job in ended:  # after the step's events: several of a job's choices may end in one step
            job.send([s.completion() for s in job.sequences])
            self._retire(job, owner)

    def _retire(self, job: Job, owner: dict) -> None:
        for s in job.sequences:
            owner.pop(s, None)
        with self.cv:
            self.active.remove(job)


def _resolve(future: asyncio.Future, value) -> None:
    if future.done():
        return
    if isinstance(value, Exception):
        future.set_exception(value)
    else:
        future.set_result(value)
