"""Where the runner's tasks run: in this process, in a local process pool, or on Ray.

Pool workers exit when the parent dies (`lifeline`), so killing `lmforge data` leaves no
worker behind; a worker that dies is reported as a resumable error.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from lmforge.data.lifeline import exit_with_parent
from lmforge.errors import LmforgeError

T = TypeVar("T")


def execute(fn: Callable[[T], Any], args: list[T], workers: int, executor: str, desc: str) -> None:
    """Call `fn` on every element of `args`: in this process, a local process pool, or Ray."""
    from tqdm import tqdm

    if not args:
        return
    bar = tqdm(total=len(args), desc=desc, unit="task", disable=None)
    try:
        if executor == "ray":
            _execute_ray(fn, args, bar)
        elif workers <= 1 or len(args) == 1:
            for a in args:
                fn(a)
                bar.update()
        else:
            _execute_pool(fn, args, workers, bar)
    finally:
        bar.close()


def _execute_pool(fn: Callable, args: list, workers: int, bar: Any) -> None:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
    with ProcessPoolExecutor(max_workers=min(workers, len(args)), mp_context=ctx,
                             initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
        futures = [pool.submit(fn, a) for a in args]
        try:
            for f in as_completed(futures):
                f.result()
                bar.update()
        except BrokenProcessPool:
            raise LmforgeError(
                "a data worker process died (killed or out of memory); run the same command again to resume: "
                "finished tasks are kept"
            ) from None


def _execute_ray(fn: Callable, args: list, bar: Any) -> None:
    try:
        import ray  # type: ignore[import-not-found]
    except ImportError:
        raise LmforgeError("--executor ray needs the `ray` package (pip install 'lmforge[cluster]')") from None
    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, log_to_driver=False)
    remote = ray.remote(fn)
    pending = [remote.remote(a) for a in args]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        ray.get(done)
        bar.update(len(done))
