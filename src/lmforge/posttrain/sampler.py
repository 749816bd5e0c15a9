"""The epoch sampler of the post-training loaders: items epoch after epoch, resumable.

Every post-training loader (SFT rows, preference pairs, RL prompts) walks a list that is
reshuffled each epoch, deterministically in the seed, and records where it is as (epoch,
cursor), which is all a checkpoint needs to continue the stream exactly.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


def shuffled(n: int, seed: int, tag: str, epoch: int) -> list[int]:
    """range(n) in the order of epoch `epoch` of the stream named `tag`."""
    order = list(range(n))
    random.Random(f"{seed}:{tag}:{epoch}").shuffle(order)
    return order


def rank_share(items: Sequence[T], dp_rank: int, dp_size: int) -> list[T]:
    """This data-parallel rank's items: every dp_size-th of the largest multiple of dp_size
    (all of them when there are fewer items than ranks)."""
    usable = len(items) - len(items) % dp_size
    return list(items[dp_rank:usable:dp_size] if usable else items)


class EpochSampler(Generic[T]):
    """`take(k)`: the next k items of `epoch_items(0)`, then of `epoch_items(1)`, ...

    `epoch_items(epoch)` builds one epoch's list (it must not be empty); `state_dict()` /
    `load_state_dict()` are the position in the stream."""

    def __init__(self, epoch_items: Callable[[int], list[T]]):
        self.epoch_items = epoch_items
        self.epoch, self.cursor = 0, 0
        self._items = epoch_items(0)

    def take(self, k: int) -> list[T]:
        out: list[T] = []
        while len(out) < k:
            if self.cursor >= len(self._items):
                self.epoch, self.cursor = self.epoch + 1, 0
                self._items = self.epoch_items(self.epoch)
            out.append(self._items[self.cursor])
            self.cursor += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._items = self.epoch_items(self.epoch)
