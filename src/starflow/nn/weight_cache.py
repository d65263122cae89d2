"""Copies derived from a module's weights (packed layouts, low-precision drafts), kept between calls while the
weights stay the same.

Why: every sampling call packs its layers' weights for oneDNN (nn.packed, ~0.3 ms of set-up per weight whatever its
size) and makes a bfloat16 copy of each block for the Jacobi draft (sampling.draft): profiled on a 2-core Xeon,
~40 + 27 ms of a 1.1-1.3 s bench video sample, paid again on every call although the weights had not changed. Kept,
they cost that once per model (a drafted sample 0.955x the CPU time, in alternation).

A kept copy must never outlive the values it was made from. Each entry carries a stamp of its source tensors:
identity, storage address, version counter, shape, dtype, device and the sum of the values. The version counter
sees in-place updates (optimiser steps, `load_state_dict`, copies under `torch.no_grad`), the address a
`param.data = ...` swap, and the sum what the counter cannot see: writes through `param.data` (diffusers'
`EMAModel.copy_to` does `param.data.copy_`), which leave the version as it was. The sums read every source weight
once per lookup (~5 ms for the bench video model's 64 MB), a few percent of what the copies cost to make. A
different thread count may round a sum differently: that only makes a new copy. Two things keep the sums from being
read more often than that: inside `one_call()` (a sampling call, during which nothing writes the weights) each
tensor is summed once however many copies it stamps (a block's draft and each of its packed layers read the same
weights), and tensors this library made for itself and never writes (a draft's low-precision copy: `freeze`) are
stamped without a sum (bench video sample: 116 -> 61 MB summed, 21 -> 13 ms).

Entries are held for their owner module only (a deleted model frees them), within a byte budget (the least
recently used go first; a copy larger than the budget is made for the call and not kept: a big model's blocks are
not doubled in memory, benchmarks/big_model.py). STARFLOW_WEIGHT_CACHE=0 turns keeping off; `clear()` empties it.
"""
from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch

__all__ = ["cached", "clear", "cached_bytes", "BUDGET_BYTES", "enabled", "one_call", "freeze"]

# what may be kept in all: the bench models' packed weights and drafts take ~130 MB
BUDGET_BYTES = 256 * 2**20

_LOCK = threading.Lock()


@dataclass
class _Entry:
    owner: weakref.ref
    stamp: tuple
    value: Any
    nbytes: int


_entries: "OrderedDict[tuple[int, str], _Entry]" = OrderedDict()     # most recently used last
# keys whose owner was freed: a weakref callback may run inside any allocation, even one made while this thread
# holds _LOCK, so it only notes the key (list.append needs no lock) and the next look under the lock drops it
_dead: list[tuple[int, str]] = []
# id -> weakref of tensors made by this library and never written after (freeze): stamped without their sums
_frozen: dict[int, weakref.ref] = {}
# this thread's sums within one_call(): (id, address, version) -> sum
_local = threading.local()


def enabled() -> bool:
    return os.environ.get("STARFLOW_WEIGHT_CACHE", "1") != "0"


@contextlib.contextmanager
def one_call() -> Iterator[None]:
    """Within: the weights do not change (one sampling call), so each tensor's sum is read once for all the stamps
    that need it. Nests; per thread."""
    outer = getattr(_local, "sums", None)
    if outer is None:
        _local.sums = {}
    try:
        yield
    finally:
        if outer is None:
            _local.sums = None


def freeze(tensors: Iterable[torch.Tensor]) -> None:
    """Mark tensors this library made and will never write (a draft's copy of a block, sampling.draft): their stamps
    skip the sum, which is there for writes through `.data` that only a user's code makes."""
    for t in tensors:
        _frozen[id(t)] = weakref.ref(t, lambda _, k=id(t): _frozen.pop(k, None))


def _is_frozen(t: torch.Tensor) -> bool:
    r = _frozen.get(id(t))
    return r is not None and r() is t


def _stamp(sources: Iterable[torch.Tensor]) -> tuple:
    ts = list(sources)
    # inference tensors (made under torch.inference_mode) keep no version counter: their sums still tell
    meta = tuple((id(t), t.data_ptr(), -1 if t.is_inference() else t._version, tuple(t.shape), t.dtype, t.device)
                 for t in ts)
    floating = [(m[:3], t) for m, t in zip(meta, ts)
                if t.is_floating_point() and t.device.type != "meta" and not _is_frozen(t)]
    memo = getattr(_local, "sums", None)
    memo = {} if memo is None else memo
    todo = [(key, t) for key, t in floating if key not in memo]
    if todo:
        with torch.no_grad():
            # one sum per tensor, in float32 at least (a bf16 sum would round away small changes), read back at once
            sums = torch.stack([t.detach().sum(dtype=torch.float64 if t.dtype == torch.float64 else torch.float32)
                                .to(torch.float64) for _, t in todo]).tolist()
        memo.update((key, v) for (key, _), v in zip(todo, sums))
    return meta, tuple(memo[key] for key, _ in floating)


def cached(owner: torch.nn.Module, kind: str, sources: Iterable[torch.Tensor],
           make: Callable[[], tuple[Any, int]]) -> Any:
    """The copy of `kind` derived from `sources` (tensors of `owner`): the kept one while the sources are unchanged,
    else make() -> (value, bytes), kept when it fits the budget."""
    if not enabled():
        return make()[0]
    key = (id(owner), kind)
    stamp = _stamp(sources)
    with _LOCK:
        _purge()
        e = _entries.get(key)
        if e is not None and e.owner() is owner and e.stamp == stamp:
            _entries.move_to_end(key)
            return e.value
    value, nbytes = make()
    with _LOCK:
        _entries.pop(key, None)      # a stale copy goes whether or not the new one is kept
        if nbytes <= BUDGET_BYTES:
            _entries[key] = _Entry(weakref.ref(owner, lambda _, k=key: _dead.append(k)), stamp, value, nbytes)
            total = sum(x.nbytes for x in _entries.values())
            while total > BUDGET_BYTES:
                _, old = _entries.popitem(last=False)
                total -= old.nbytes
    return value


def _purge() -> None:
    """Drop the entries of freed owners (call with _LOCK held)."""
    while _dead:
        key = _dead.pop()
        e = _entries.get(key)
        if e is not None and e.owner() is None:      # not a new owner that got the freed one's id
            del _entries[key]


def cached_bytes() -> int:
    with _LOCK:
        _purge()
        return sum(e.nbytes for e in _entries.values())


def clear() -> None:
    """Drop every kept copy."""
    with _LOCK:
        _entries.clear()
        _dead.clear()
