"""Contexts' keys/values kept across sampler calls, for one parameter version.

Within a call, `engine.prefill_shared` prefills every distinct context once. Across calls the
same contexts come back: the K exported prompts in every RL step of a cycle, a GEPA candidate on
its minibatch and then on the anchor set, the best prompt and the no-context row at every
evaluation. `ContextCache` keeps each context's prefilled cache in a slot of a fixed-size device
store (`engine.init_context_store`), keyed on the context's token ids, least recently used
evicted first; a call reads its contexts from their slots (`engine.prefill_stored`), so only
contexts not cached yet are prefilled (`engine.store_contexts`); `ContextCache.stored_inputs`
does that for one sampler call.

Keys and values depend on the weights, so the cache belongs to one `PreparedParams` object
(held weakly): a call with other params (a train update makes new ones) empties it first. The
store's shapes are fixed (slots × the bank's row width), so which contexts are cached never
recompiles anything; memory is bounded by `nbytes()` = slots × width × the KV bytes per token,
per width in use (at most `max_widths` bank widths are kept, least recently used dropped).
"""

from __future__ import annotations

import collections
import dataclasses
import time
import weakref
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from fst_jax.models.config import ModelConfig
from fst_jax.sampling import batching, engine


@dataclasses.dataclass
class _Store:
    arrays: Any  # the device store: a [slots, width] KV cache pytree
    lru: collections.OrderedDict[bytes, int]  # context key → slot, least recent first


class ContextCache:
    """Slots of context keys/values for one parameter version (see the module docstring).

    `hits` / `misses` count contexts served from / added to the store over the cache's life;
    `invalidations` counts the times new params emptied it.
    """

    def __init__(self, slots: int, max_widths: int = 2) -> None:
        if slots < 1 or max_widths < 1:
            raise ValueError(
                f"ContextCache(slots={slots}, max_widths={max_widths}): both must be >= 1 "
                "(turn the cache off with Sampler(context_cache=0) instead)"
            )
        self.slots = slots
        self.max_widths = max_widths
        self._owner: weakref.ref | None = None
        self._stores: collections.OrderedDict[tuple[int, Any], _Store] = collections.OrderedDict()
        self.hits = 0
        self.misses = 0
        self.invalidations = 0

    def clear(self) -> None:
        """Drop every store (frees their device memory)."""
        self._stores.clear()
        self._owner = None

    def nbytes(self) -> int:
        """Device bytes held by the stores."""
        return sum(x.nbytes for s in self._stores.values() for x in jax.tree.leaves(s.arrays))

    def cached(self, width: int, sharding: jax.sharding.Sharding | None = None) -> list[bytes]:
        """Keys held for bank width `width`, least recently used first."""
        s = self._stores.get((width, sharding))
        return list(s.lru) if s is not None else []

    def assign(
        self,
        owner: Any,
        config: ModelConfig,
        width: int,
        keys: Sequence[bytes],
        sharding: jax.sharding.Sharding | None = None,
    ) -> tuple[Any, np.ndarray, list[int]] | None:
        """Slots for the contexts `keys` (distinct) of one call under params `owner`, in the
        store for bank width `width` laid out with `sharding` (None: default device).

        Returns (store arrays, int32 slots per key, indices of the keys not cached yet: the
        caller prefills those into their slots with `engine.store_contexts` and hands the new
        arrays back with `update`), or None when the call has more contexts than slots.
        """
        if len(keys) > self.slots:
            return None
        if self._owner is None or self._owner() is not owner:
            if self._stores:
                self.invalidations += 1
            self.clear()
            self._owner = weakref.ref(owner)
        where = (width, sharding)
        store = self._stores.get(where)
        if store is None:
            while len(self._stores) >= self.max_widths:
                self._stores.popitem(last=False)
            arrays = engine.init_context_store(config, self.slots, width, sharding)
            store = self._stores[where] = _Store(arrays, collections.OrderedDict())
        self._stores.move_to_end(where)
        lru = store.lru
        slots = np.empty(len(keys), np.int32)
        missing = []
        for i, k in enumerate(keys):
            if k in lru:
                lru.move_to_end(k)
                slots[i] = lru[k]
                self.hits += 1
            else:
                missing.append(i)
        free = sorted(set(range(self.slots)) - set(lru.values()))
        for i in missing:
            # Every key of this call sits after every other key in `lru`, and the call has at
            # most `slots` keys, so the least recent entry is never one of this call's.
            slot = free.pop(0) if free else lru.popitem(last=False)[1]
            lru[keys[i]] = slot
            slots[i] = slot
            self.misses += 1
        return store.arrays, slots, missing

    def update(
        self, width: int, arrays: Any, sharding: jax.sharding.Sharding | None = None
    ) -> None:
        """The store arrays after `engine.store_contexts` (the old ones were donated)."""
        self._stores[(width, sharding)].arrays = arrays

    def stored_inputs(
        self,
        prepared: Any,
        config: ModelConfig,
        bank: Any,
        idx: np.ndarray,
        fixed: tuple[Any, ...],
        *,
        sharding: jax.sharding.Sharding | None,
        timings: dict[str, float] | None,
        batch_buckets: Sequence[int],
        prefix_buckets: Sequence[int],
        pad_id: int,
    ) -> tuple[Any, ...] | None:
        """`engine.prefill_stored`'s inputs for one sampler call (bank rows `idx`, `fixed` as
        made by `batching.shared_inputs`): the store and each context's slot, after prefilling
        the contexts the store lacks under `prepared` (a `PreparedParams` for engine `config`);
        None when the call has more distinct contexts than slots. `timings` gets
        context_store_s (the prefill of the new contexts)."""
        ctx_ids = np.unique(idx)
        lens = bank.lengths_host[ctx_ids]
        table = bank.host_table()
        keys = [table[c, :n].tobytes() for c, n in zip(ctx_ids, lens)]
        width = table.shape[1]
        rep = None  # sharded calls: the store is replicated over the mesh, like the bank
        if isinstance(sharding, jax.sharding.NamedSharding):
            rep = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
        got = self.assign(prepared, config, width, keys, rep)
        if got is None:
            return None
        store, slots, missing = got
        if missing:
            args = batching.context_fill_inputs(
                table, ctx_ids, lens, missing, slots, store_slots=self.slots,
                batch_buckets=batch_buckets, prefix_buckets=prefix_buckets, pad_id=pad_id,
            )  # fmt: skip
            if rep is not None:
                args = tuple(batching.replicated(x, rep) for x in args)
            t0 = time.perf_counter()
            try:
                store = engine.store_contexts(config, prepared.params, store, *args)
                if timings is not None:
                    jax.block_until_ready(store)
                    timings["context_store_s"] = time.perf_counter() - t0
            except BaseException:
                self.clear()  # the keys were assigned but not filled (and the store donated)
                raise
            self.update(width, store, rep)
        ctx_slots = np.full((fixed[0].shape[0],), slots[0], np.int32)  # bucket padding
        ctx_slots[: len(slots)] = slots
        return (store, ctx_slots, *fixed)
