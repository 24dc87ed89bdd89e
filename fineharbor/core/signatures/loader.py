"""A streaming DataLoader: decode and preprocess in worker processes while the model runs.

``torch.utils.data.DataLoader`` hands workers *indices* drawn from a sampler and keeps
``prefetch_factor x num_workers`` batches in flight. Here the batch sampler draws the payloads
themselves (image bytes plus their keys) from any iterable, so one DataLoader streams a whole
partition: workers start once, memory stays bounded by the batches in flight, and order is kept
(the DataLoader returns batches in sampler order). With ``num_workers=0`` the same code runs in
the calling process, which is what tests use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any, TypeVar

import torch
from torch.utils.data import DataLoader, Dataset

T = TypeVar("T")
R = TypeVar("R")


class _PayloadBatches:
    """A batch sampler whose "indices" are the payloads, drawn lazily from an iterable."""

    def __init__(self, items: Iterable[Any], batch_size: int) -> None:
        self.items = items
        self.batch_size = batch_size
        self._used = False

    def __iter__(self) -> Iterator[list[Any]]:
        if self._used:  # the source iterable may be a one-shot generator
            raise RuntimeError("a payload sampler can be iterated once")
        self._used = True
        iterator = iter(self.items)
        while chunk := list(islice(iterator, self.batch_size)):
            yield chunk


class _Apply(Dataset):
    """``dataset[payload] = prepare(payload)``: the work a worker does per item."""

    def __init__(self, prepare: Callable[[Any], Any]) -> None:
        self.prepare = prepare

    def __getitem__(self, payload: Any) -> Any:
        return self.prepare(payload)

    def __len__(self) -> int:  # pragma: no cover - never sized: the sampler drives iteration
        raise TypeError("a streaming dataset has no length")


def stream_batches(
    items: Iterable[T],
    prepare: Callable[[T], R],
    collate: Callable[[list[R]], Any],
    *,
    batch_size: int,
    num_workers: int = 0,
    prefetch_factor: int = 4,
    pin_memory: bool = False,
) -> Iterator[Any]:
    """Yield ``collate([prepare(x) for x in chunk])`` for consecutive chunks of ``items``.

    ``prepare`` and ``collate`` run in worker processes when ``num_workers > 0``; they must be
    picklable where the start method is not ``fork`` (module-level functions, plain objects).
    """
    loader = DataLoader(
        _Apply(prepare),
        batch_sampler=_PayloadBatches(items, batch_size),
        collate_fn=collate,
        num_workers=num_workers,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
        pin_memory=pin_memory and torch.cuda.is_available(),
        persistent_workers=False,
    )
    yield from loader
