"""Where the runner's tasks run: in this process, in a local process pool, or on Ray.

Pool workers exit when the parent dies (`lifeline`), so killing `lmforge data` leaves no
worker behind; a worker that dies is reported as a resumable error. On Ray every task asks
for `data.ray.num_cpus` CPUs and `data.ray.memory` bytes, and a task whose worker dies (killed,
out of memory, node lost) or that raises OSError is run again, up to `data.ray.max_retries`
times: tasks are idempotent (atomic outputs, marker last), so a retried task writes the
bytes the first attempt would have written.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from lmforge.data.lifeline import exit_with_parent
from lmforge.errors import LmforgeError

T = TypeVar("T")


@dataclass
class RayConfig:
    """`data.ray`: where the Ray executor runs and what each task asks of it."""

    address: str = ""  # "": start a local Ray on this machine; "auto" or HOST:PORT: an existing cluster
    num_cpus: float = 1.0  # CPUs each task reserves
    memory: int = 0  # bytes of memory each task reserves (0: no reservation)
    max_retries: int = 3  # runs of a task after its worker dies or it raises OSError


def execute(
    fn: Callable[[T], Any],
    args: list[T],
    workers: int,
    executor: str,
    desc: str,
    ray: RayConfig | None = None,
) -> None:
    """Call `fn` on every element of `args`: in this process, a local process pool, or Ray."""
    from tqdm import tqdm

    if not args:
        return
    bar = tqdm(total=len(args), desc=desc, unit="task", disable=None)
    try:
        if executor == "ray":
            _execute_ray(fn, args, workers, ray or RayConfig(), bar)
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
    with ProcessPoolExecutor(
        max_workers=min(workers, len(args)),
        mp_context=ctx,
        initializer=exit_with_parent,
        initargs=(os.getpid(),),
    ) as pool:
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


def _execute_ray(fn: Callable, args: list, workers: int, cfg: RayConfig, bar: Any) -> None:
    try:
        import ray  # type: ignore[import-not-found]
    except ImportError:
        raise LmforgeError(
            "--executor ray needs the `ray` package (pip install 'lmforge[cluster]')"
        ) from None
    if not ray.is_initialized():
        if cfg.address:
            ray.init(address=cfg.address, log_to_driver=False)
        else:  # a one-machine cluster for this run, on the loopback address, without the dashboard
            ray.init(
                num_cpus=workers, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False
            )
    options: dict[str, Any] = {
        "num_cpus": cfg.num_cpus,
        "max_retries": cfg.max_retries,
        "retry_exceptions": [OSError],
    }
    if cfg.memory:
        options["memory"] = cfg.memory
    remote = ray.remote(**options)(fn)
    pending = [remote.remote(a) for a in args]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        try:
            ray.get(done)
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as e:
            raise LmforgeError(
                f"a data task failed {cfg.max_retries + 1} times ({type(e).__name__}); run the same command "
                "again to resume: finished tasks are kept"
            ) from None
        bar.update(len(done))
