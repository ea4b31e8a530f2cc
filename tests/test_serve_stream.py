"""Streaming pieces of fst-serve without a model: incremental text, chunked calls, the window.

* `RowText` fed chunk by chunk must send text that concatenates to `finish` on the whole row
  (same finish reason and token count), for random byte-level token rows (incomplete UTF-8
  included), random chunk splits, max_tokens cuts and stop strings that span chunk
  boundaries; `finish` itself is checked against a brute-force scan of the token pieces.
* `BatchEngine` with a scripted streaming backend: chunks reach streaming jobs in order before
  the result, and a call ends at the first chunk boundary where every row is satisfied
  (stopped, past max_tokens, stop string seen, or its client gone) — not before.
* `WindowPolicy` and the engine's gathering, on an injected clock (no timing in the tests).
"""

import asyncio
import random
import threading

import pytest

from fst_jax.serve.backend import Detokenizer, RowText, decode_pieces, finish
from fst_jax.serve.batching import BatchEngine, GroupKey, Row, RowOut, WindowPolicy


def _brute_force(tok, ids, finished, max_tokens, stop):
    """(text, reason, tokens) by re-scanning the joined pieces after every token."""
    kept = ids[:max_tokens]
    pieces = decode_pieces(tok, kept)
    for k in range(len(pieces)):
        text = "".join(pieces[: k + 1])
        hits = [text.find(s) for s in stop if s in text]
        if hits:
            return text[: min(hits)], "stop", k + 1
    reason = "stop" if finished and len(ids) <= max_tokens else "length"
    return "".join(pieces), reason, len(kept)


def _stream(tok, ids, finished, max_tokens, stop, rng):
    """RowText fed in random chunks, then closed: (sent text, reason, tokens, #sends)."""
    row, sent, i = RowText(tok, max_tokens, stop), [], 0
    while i < len(ids) and row.reason is None:
        n = rng.randint(1, 5)
        part = row.push(ids[i : i + n], finished and i + n >= len(ids))
        sent.append(part)
        i += n
    sent.append(row.close(RowOut(ids, finished)))
    assert row.reason is not None and row.close(RowOut(ids, finished)) == ""
    return "".join(sent), row.reason, row.completion_tokens, sum(bool(p) for p in sent)


def test_streamed_text_equals_the_whole_reply(tok):
    rng = random.Random(0)
    cases = stops_cut = multi = 0
    for trial in range(400):
        ids = [rng.randrange(3, len(tok)) for _ in range(rng.randint(1, 40))]
        if trial % 2:  # printable ASCII bytes: stop strings of real characters
            ids = [tok.convert_tokens_to_ids(chr(0x21 + rng.randrange(90))) for _ in ids]
        finished, max_tokens = rng.random() < 0.5, rng.randint(1, 45)
        whole = tok.decode(ids[:max_tokens], skip_special_tokens=True)
        stop: tuple[str, ...] = ()
        if rng.random() < 0.7 and len(whole) > 3:
            a = rng.randrange(len(whole) - 2)
            stop = (whole[a : a + rng.randint(1, 4)], "\x00never")
        want = _brute_force(tok, ids, finished, max_tokens, stop)
        got = finish(tok, RowOut(ids, finished), max_tokens, stop)
        assert (got.text, got.finish_reason, got.completion_tokens) == want, (ids, stop)
        assert "".join(got.pieces) == got.text and len(got.pieces) == got.completion_tokens
        text, reason, used, sends = _stream(tok, ids, finished, max_tokens, stop, rng)
        assert (text, reason, used) == want, (ids, stop, max_tokens)
        cases += 1
        stops_cut += reason == "stop" and bool(stop)
        multi += sends > 1
    assert cases == 400 and stops_cut > 50 and multi > 100  # the cases above were exercised


def test_stop_string_split_across_chunks_is_held_back(tok):
    ids = [tok.convert_tokens_to_ids(c) for c in "abcXYdef"]
    row = RowText(tok, 50, ("XYd",))
    assert row.push(ids[:4], False) == "ab"  # "cX" could be the start of "XYd": held back
    assert row.push(ids[4:6], False) == "c"  # "XY" still could
    assert row.push(ids[6:], False) == "" and row.reason == "stop"
    assert row.text == "abc" and row.completion_tokens == 6  # "abcXYd"
    # The same row without the stop string sends everything at once.
    plain = RowText(tok, 50)
    assert plain.push(ids[:4], False) == "abcX" and plain.reason is None


def test_detokenizer_flush_completes_the_whole_decode(tok):
    rng = random.Random(1)
    for _ in range(200):
        ids = [rng.randrange(3, len(tok)) for _ in range(rng.randint(1, 30))]
        d = Detokenizer(tok)
        text = "".join(d.push(t) for t in ids) + d.flush()
        assert text == tok.decode(ids, skip_special_tokens=True)


# ------------------------------------------------------------------------- engine, streaming


class ScriptedBackend:
    """Row r generates tokens 100*r, 100*r+1, ... (`lengths[r]` of them; finished when the
    length is below the buffer), `chunk` per step; records every chunk it decoded."""

    streaming = True

    def __init__(self, lengths, chunk=2, between=None):
        self.lengths, self.chunk, self.between = lengths, chunk, between
        self.decoded = 0

    def run(self, key, rows):
        raise AssertionError("a streaming engine calls run_stream")

    def run_stream(self, key, rows, on_chunk):
        n = [min(self.lengths[r.row_id], key.max_new) for r in rows]
        pos = [0] * len(rows)
        while True:
            deltas = []
            for b, r in enumerate(rows):
                new = list(
                    range(100 * r.row_id + pos[b], 100 * r.row_id + min(n[b], pos[b] + self.chunk))
                )
                pos[b] += len(new)
                deltas.append(RowOut(new, pos[b] >= n[b] and n[b] < key.max_new))
            self.decoded += 1
            go = on_chunk(deltas)
            if self.between is not None:
                self.between(self.decoded)
            if not go or all(p >= m for p, m in zip(pos, n)):
                break
        return [
            RowOut(list(range(100 * r.row_id, 100 * r.row_id + p)), p >= m and m < key.max_new)
            for r, p, m in zip(rows, pos, n)
        ]


KEY = GroupKey("bank", False, 1.0, 1.0, 32)


def _drive(engine, jobs_spec, during=None):
    """Submit jobs [(rows, stream)] together (engine held), collect chunks and results."""

    async def main():
        loop = asyncio.get_running_loop()
        with engine.held():
            jobs = [engine.submit(KEY, rows, loop, stream=s) for rows, s in jobs_spec]
            if during is not None:
                during(jobs)
        chunks = []
        for j in jobs:
            got = []
            if j.chunks is not None:
                while (c := await j.next_chunk()) is not None:
                    got.append(c)
            chunks.append(got)
        return jobs, chunks, [await j.future for j in jobs]

    return asyncio.run(main())


def test_chunks_reach_streaming_jobs_before_the_result():
    be = ScriptedBackend({0: 5, 1: 40})
    eng = BatchEngine(be, max_batch=8)
    try:
        _, chunks, outs = _drive(eng, [([Row([1], 0, 0, 10)], True), ([Row([1], 0, 1, 10)], False)])
    finally:
        eng.close()
    assert chunks[1] == []  # a non-streaming job gets the result only
    streamed = [t for c in chunks[0] for t in c[0].token_ids]
    assert streamed == outs[0][0].token_ids == [0, 1, 2, 3, 4] and outs[0][0].finished
    # Row 1 needs max_tokens + 1 = 11 tokens (is the token after the cut EOS?): 6 chunks of 2,
    # not the 16 its 32-token buffer holds.
    assert be.decoded == 6 and len(outs[1][0].token_ids) == 12
    assert eng.stats["calls_ended_early"] == 1 and eng.stats["chunks"] == 6


@pytest.mark.parametrize("cancel", [(0,), (0, 1)])
def test_cancelled_rows_end_the_call_only_when_no_row_needs_tokens(cancel):
    jobs_box = []

    def between(k):  # after the first chunk: the clients in `cancel` go away
        if k == 1:
            for i in cancel:
                jobs_box[0][i].cancel()

    be = ScriptedBackend({0: 64, 1: 64}, between=between)
    eng = BatchEngine(be, max_batch=8)
    rows = [([Row([1], 0, 0, 30)], True), ([Row([1], 0, 1, 30)], True)]
    try:
        _, chunks, outs = _drive(eng, rows, during=jobs_box.append)
    finally:
        eng.close()
    if cancel == (0, 1):  # nobody needs tokens: the call ends at the next chunk boundary
        assert be.decoded == 2 and eng.stats["calls_ended_early"] == 1
        assert eng.stats["rows_discarded"] == 2
    else:  # row 1 still streams to its 31st token; row 0's tokens are decoded and discarded
        assert be.decoded == 16 and len(outs[1][0].token_ids) == 32
        assert eng.stats["rows_discarded"] == 1
        assert len(chunks[0]) == 1  # a cancelled job gets no more chunks


def test_rows_marked_done_end_the_call():
    box = []
    be = ScriptedBackend({0: 64}, between=lambda k: box[0][0].mark_done(0) if k == 3 else None)
    eng = BatchEngine(be, max_batch=8)
    try:
        _drive(eng, [([Row([1], 0, 0, 30)], True)], during=box.append)
    finally:
        eng.close()
    assert be.decoded == 4  # the stop string was seen after chunk 3: one more chunk at most


# ------------------------------------------------------------------------- window


def test_window_policy():
    p = WindowPolicy(base_s=0.025, fraction=0.1, max_s=0.5)
    assert p.window(None, 0) == 0.025  # no call yet
    assert p.window(4.0, 1) == 0.025  # a lone client: do not make it wait
    assert p.window(4.0, 3) == pytest.approx(0.4)  # under load: 10 % of the last call
    assert p.window(0.1, 8) == 0.025 and p.window(60.0, 8) == 0.5  # bounded
    # ready(waited, window, queued, expected, max_batch)
    assert p.ready(0.4, 0.4, 0, 8, 8) and p.ready(0.0, 0.4, 8, 8, 8)  # window over; batch full
    assert not p.ready(0.1, 0.4, 7, 8, 8)  # an extended window waits for the expected rows
    assert p.ready(0.03, 0.4, 3, 3, 8)  # ...and ends once they are back, past base_s
    assert not p.ready(0.01, 0.4, 3, 3, 8)  # never sooner than base_s (unless full)
    for bad in [dict(base_s=-1), dict(base_s=1, max_s=0.5), dict(fraction=2)]:
        with pytest.raises(ValueError, match="batch window"):
            WindowPolicy(**bad)


class FakeClock:
    """Time that moves only when the engine sleeps or a call runs (`advance`)."""

    def __init__(self):
        self.t, self.lock = 100.0, threading.Lock()

    def __call__(self):
        with self.lock:
            return self.t

    def advance(self, dt):
        with self.lock:
            self.t += dt


class TimedBackend:
    streaming = False

    def __init__(self, clock, call_s):
        self.clock, self.call_s, self.calls = clock, call_s, []

    def run(self, key, rows):
        self.calls.append(len(rows))
        self.clock.advance(self.call_s)
        return [RowOut([1], True) for _ in rows]


def test_engine_window_follows_the_last_call_on_an_injected_clock():
    clock = FakeClock()
    be = TimedBackend(clock, 4.0)
    eng = BatchEngine(be, max_batch=8, clock=clock, sleep=clock.advance)

    async def submit(rows):
        loop = asyncio.get_running_loop()
        with eng.held():  # queue them all before the worker looks
            jobs = [eng.submit(KEY, [Row([1], 0, i)], loop) for i in range(rows)]
        return [await j.future for j in jobs]

    try:
        asyncio.run(submit(3))  # first call: the base window (fewer than max_batch rows)
        assert be.calls == [3]
        assert eng.last_window[0] == 0.025 and eng.last_window[1] == pytest.approx(0.025, abs=2e-3)
        # 3 requests answered by a 4 s call, 3 back together: the 0.4 s window ends once
        # base_s has passed.
        asyncio.run(submit(3))
        window, waited = eng.last_window
        assert window == pytest.approx(0.4) and waited == pytest.approx(0.025, abs=2e-3)
        # Only 1 of the 3 expected rows comes back: it waits the whole 0.4 s window.
        asyncio.run(submit(1))
        window, waited = eng.last_window
        assert window == pytest.approx(0.4) and waited == pytest.approx(0.4, abs=2e-3)
        # That call served one request (a lone client): back to base_s.
        asyncio.run(submit(1))
        assert eng.last_window == (0.025, pytest.approx(0.025, abs=2e-3))
        assert be.calls == [3, 3, 1, 1]
    finally:
        eng.close()
