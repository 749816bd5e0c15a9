"""Child processes that end with their parent.

A SIGKILL to `lmforge data` cannot be caught, so the parent cannot stop its workers itself;
instead each worker (and each extraction sandbox) watches its parent and exits as soon as it
has been re-parented, i.e. the process that started it is gone.
"""

from __future__ import annotations

import os
import threading
import time

POLL_SECONDS = 0.2


def exit_with_parent(parent: int | None = None) -> None:
    """Start a daemon thread that ends this process (exit status 1) once `parent` is no longer its parent."""
    parent = os.getppid() if parent is None else parent

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(POLL_SECONDS)
        os._exit(1)  # no cleanup: the parent's run is over, and a rerun redoes unfinished tasks

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
