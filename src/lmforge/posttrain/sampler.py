"""The epoch sampler of the post-training loaders: items epoch after epoch, resumable, in an
order that does not depend on the number of data-parallel ranks.

Every post-training loader (SFT rows, preference pairs, RL prompts) walks a list that is
reshuffled each epoch, deterministically in the seed. All ranks walk the same stream: each
`take(k)` consumes the next k x dp_size items and rank r keeps the r-th k of them, so the items
of an optimizer step are the same set on 1, 2 or 4 ranks (as the pretraining loader's windows).
The position in the stream, (epoch, cursor), is shared by all ranks and is all a checkpoint
needs to continue the stream exactly, on any number of ranks.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


def shuffled(n: int, seed: int, tag: str, epoch: int) -> list[int]:
    """range(n) in the order of epoch `epoch` of the stream named `tag`."""
    order = list(range(n))
    random.Random(f"{seed}:{tag}:{epoch}").shuffle(order)
    return order


class EpochSampler(Generic[T]):
    """`take(k)`: this rank's k of the next k x dp_size items of `epoch_items(0)`, then of
    `epoch_items(1)`, ...

    `epoch_items(epoch)` builds one epoch's list (it must not be empty; every rank builds the
    same); `state_dict()` / `load_state_dict()` are the position in the stream."""

    def __init__(self, epoch_items: Callable[[int], list[T]], dp_rank: int = 0, dp_size: int = 1):
        self.epoch_items, self.dp_rank, self.dp_size = epoch_items, dp_rank, dp_size
        self.epoch, self.cursor = 0, 0
        self._built: dict[int, list[T]] = {}

    def _items(self, epoch: int) -> list[T]:
        if epoch not in self._built:
            self._built = {e: items for e, items in self._built.items() if e >= epoch - 1}
            self._built[epoch] = self.epoch_items(epoch)
        return self._built[epoch]

    def take(self, k: int) -> list[T]:
        window: list[T] = []
        while len(window) < k * self.dp_size:
            items = self._items(self.epoch)
            if self.cursor >= len(items):
                self.epoch, self.cursor = self.epoch + 1, 0
                continue
            n = min(k * self.dp_size - len(window), len(items) - self.cursor)
            window.extend(items[self.cursor : self.cursor + n])
            self.cursor += n
        return window[self.dp_rank * k : (self.dp_rank + 1) * k]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
