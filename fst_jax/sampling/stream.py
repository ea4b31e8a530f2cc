"""Token streaming: the sampler's decode loop cut into jitted chunks of at most `chunk` steps.

`Sampler.sample_stream(...)` runs the same prefill as `Sampler.sample`, then calls
`engine.decode_chunk` — the same `_decode_step` loop body as `engine.decode`, bounded to `chunk`
steps — until every row stopped or `max_new_tokens` is reached, carrying the decode state (KV
cache, last tokens, positions, done flags, per-row keys, step counter) between calls on device.
Each call also returns one small packed array with the chunk's new tokens, so a chunk costs one
device → host transfer of [B, chunk + 5] int32s. Because the loop body, the keys (folded with
the row id and the step) and the state are the same, the streamed tokens and the final
`Rollouts` equal `Sampler.sample`'s bit for bit (tests/test_sampling_stream.py).

Compiled shapes: one `decode_chunk` executable per (batch bucket, prompt width, sampling
params, chunk) — the step counter and the window start are traced values, so chunks and calls
never recompile. With `prefetch` the next chunk is dispatched before the host reads the
current one, so the device never waits on the host between chunks; the price is that a
consumer that stops early (`SampleStream.stop`) may have one chunk decoded that it never reads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from fst_jax.models.config import ModelConfig
from fst_jax.sampling import engine
from fst_jax.sampling.select import SamplingParams


@dataclasses.dataclass(frozen=True)
class StreamChunk:
    """The tokens one chunk added, per row (batch padding rows excluded).

    tokens[b]: int32 ids row b generated in this chunk, in order (a stop token included, as in
    `Rollouts.completion_tokens`); empty once the row has stopped. Concatenating a row's chunks
    gives completion_tokens[b, :completion_lengths[b]].
    """

    tokens: list[np.ndarray]
    done: np.ndarray  # bool[B]: the row emitted a stop token (in this chunk or before)
    lengths: np.ndarray  # int32[B]: tokens generated so far, the stop token included
    step: int  # decode steps so far (all rows); max_new_tokens at most


def check_chunk(chunk: Any) -> int:
    """`chunk` (decode steps per jitted call) or a ValueError saying what is accepted."""
    if isinstance(chunk, bool) or not isinstance(chunk, int | np.integer) or chunk < 1:
        raise ValueError(f"chunk={chunk!r}: decode steps per call must be an int >= 1")
    return int(chunk)


def _parse(info: np.ndarray, n: int, emitted: int) -> StreamChunk:
    """`engine.decode_chunk`'s packed info [B, W + 4] → the new columns [emitted, step)."""
    w = info.shape[1] - 4
    window, gen_len, done = info[:n, :w], info[:n, w], info[:n, w + 1].astype(bool)
    step, start = int(info[0, w + 2]), int(info[0, w + 3])
    tokens = []
    for b in range(n):
        hi = min(step, int(gen_len[b]))
        tokens.append(window[b, emitted - start : hi - start] if hi > emitted else window[b, :0])
    return StreamChunk(tokens, done, gen_len.astype(np.int32), step)


class SampleStream:
    """Iterate for `StreamChunk`s; `result()` gives the `Rollouts` (made by `Sampler`, which
    passes `rollouts`: the layout dict and the batch size → its `Rollouts`).

    Not thread-safe: one consumer drives it. `stop()` ends decoding after the chunk being
    read: `result()` then holds each row as far as it was decoded (rows that stopped are
    complete; the others are cut, `finished` False).
    """

    def __init__(
        self,
        rollouts: Callable[[dict[str, jax.Array], int], Any],
        config: ModelConfig,
        weights: Any,
        state: engine.DecodeState,
        n: int,
        sampling: SamplingParams,
        pad_id: int,
        stop_ids: tuple[int, ...],
        *,
        chunk: int,
        prefetch: bool,
    ) -> None:
        check_chunk(chunk)
        self._rollouts, self._weights, self._state = rollouts, weights, state
        self._n, self._sampling, self._prefetch = n, sampling, prefetch
        self._args = (config, sampling, pad_id, stop_ids, chunk)
        self._pad_id = pad_id
        self._stopped = self._exhausted = False
        self._result: Any = None
        self.chunks = 0  # chunks read so far

    def _dispatch(self, state: engine.DecodeState) -> tuple[engine.DecodeState, jax.Array]:
        cfg, sampling, pad_id, stop_ids, chunk = self._args
        return engine.decode_chunk(cfg, sampling, pad_id, stop_ids, chunk, self._weights, state)

    def stop(self) -> None:
        """Decode no further chunks (a consumer whose rows are all satisfied or gone)."""
        self._stopped = True

    def __iter__(self) -> Iterator[StreamChunk]:
        if self._exhausted or self._result is not None:
            return
        tg, emitted = self._sampling.max_new_tokens, 0
        pending = self._dispatch(self._state)
        self._state = pending[0]
        try:
            while True:
                info = pending[1]
                if self._prefetch:  # keep the device busy while the host reads `info`
                    pending = self._dispatch(self._state)
                    self._state = pending[0]
                chunk = _parse(np.asarray(info), self._n, emitted)
                emitted = chunk.step
                self.chunks += 1
                yield chunk
                if chunk.step >= tg or chunk.done.all() or self._stopped:
                    break  # a prefetched chunk past this point decodes nothing or is dropped
                if not self._prefetch:
                    pending = self._dispatch(self._state)
                    self._state = pending[0]
        finally:
            self._exhausted = True

    def result(self) -> Any:
        """The `Rollouts` of the call (draining the chunks not read yet unless stopped)."""
        if self._result is None:
            for _ in self:
                pass
            out = engine.finalize(self._state, pad_id=self._pad_id)
            self._result = self._rollouts(out, self._n)
            self._state = self._weights = None  # free the cache
        return self._result
