"""The JAX backend: chat requests → rows of the jitted sampler, and its outputs → choices.

Shapes a client can reach are all bucketed, so a warmed-up server never recompiles:
  * rows: the sampler's batch buckets; prompt tokens: its task buckets;
  * new tokens: `MAX_NEW_BUCKETS` (a row asking for fewer is cut on the host);
  * the Pareto contexts sit in ONE prompt bank built at start-up (`build_bank`); a request for
    ``NAME/ctx{i}`` selects bank slot i by index, so contexts never reach the task tokens;
  * temperature is applied through the weights, not the compiled program: the final RMSNorm's
    scale divided by T scales every logit by 1/T (logits are linear in it), and the sampler runs
    at temperature 1 — any temperature reuses the same executable (checked against
    `decoder.forward` in the tests). Greedy (temperature 0) and each distinct top_p are
    compiled variants; at most `max_top_p_variants` top_p values are accepted.
A conversation the bank cannot split (a client system message, a template that renders it
differently) takes the "raw" path: its whole rendered prompt is the task tokens.

Every call decodes `stream_chunk` steps per jitted call (`Sampler.sample_stream`; the same
tokens as one `Sampler.sample` call, bit for bit), so streaming clients get each chunk's text as
it is decoded and a call ends at the first chunk boundary where no row needs more tokens.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from fst_jax import sampling
from fst_jax.models import decoder
from fst_jax.sampling.sampler import default_kernel_layout
from fst_jax.serve.batching import GroupKey, Row, RowOut
from fst_jax.serve.protocol import APIError, ChatRequest, Choice, bad
from fst_jax.serve.runs import ServedModel

MAX_NEW_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
# Decode steps per jitted call. Each chunk costs one [B, chunk + 5] int32 device → host copy,
# one dispatch (overlapped with the next chunk's decoding) and one round of detokenizing and
# SSE writes per row; at 16 steps that is well under 1 % of a chunk's decode time on CPU or an
# accelerator, while text still arrives every ~0.1 s (accelerator) to ~0.5 s (SmolLM2 on a
# 2-core CPU) — a few words at a time — and a call whose rows are all satisfied (max_tokens,
# stop string, disconnect) ends within 16 steps. Smaller chunks buy smoother text for more
# host work per token; larger ones delay the first words.
DEFAULT_STREAM_CHUNK = 16


def row_id(seed: int, choice: int) -> int:
    """A non-negative int32 row id from (seed, choice index): the row's sample depends only on
    it, its prompt and the sampling settings — never on which requests share the call."""
    return zlib.crc32(f"{seed}/{choice}".encode()) & 0x7FFFFFFF


def tempered(params: Any, temperature: float) -> Any:
    """Params whose logits are the originals / temperature (final norm scale / T)."""
    if temperature == 1.0:
        return params
    out = dict(params)
    out["norm"] = {**params["norm"], "scale": params["norm"]["scale"] / np.float32(temperature)}
    return out


class Detokenizer:
    """Incremental detokenizing: one text delta per token pushed, whose concatenation is the
    decoded text (a token ending inside a multi-byte character yields "" until the character
    completes). Each step decodes a short window (the last emitted token onward), so a reply
    costs O(tokens) decodes of a few tokens each."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.ids = tokenizer, []
        self._prefix = self._read = 0

    def push(self, token: int) -> str:
        ids, dec = self.ids, self.tokenizer.decode
        ids.append(token)
        before = dec(ids[self._prefix : self._read], skip_special_tokens=True)
        now = dec(ids[self._prefix :], skip_special_tokens=True)
        if len(now) > len(before) and not now.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(ids)
            return now[len(before) :]
        return ""

    def flush(self) -> str:
        """The text held back at the end (an incomplete character decodes to U+FFFD, as the
        whole-sequence decode writes it)."""
        ids, dec = self.ids, self.tokenizer.decode
        before = dec(ids[self._prefix : self._read], skip_special_tokens=True)
        now = dec(ids[self._prefix :], skip_special_tokens=True)
        self._prefix = self._read = len(ids)
        return now[len(before) :] if len(now) > len(before) else ""


def decode_pieces(tokenizer: Any, ids: list[int]) -> list[str]:
    """Per-token text deltas (`Detokenizer`) whose concatenation is the decoded text."""
    d = Detokenizer(tokenizer)
    pieces = [d.push(t) for t in ids]
    if pieces:
        pieces[-1] += d.flush()
    full = tokenizer.decode(ids, skip_special_tokens=True)
    if "".join(pieces) != full:  # a tokenizer whose windows decode differently: one piece
        pieces = [full] + [""] * (len(ids) - 1) if ids else []
    return pieces


class RowText:
    """One choice's text as its tokens arrive: the max_tokens cut, stop strings, and how much
    of the text is safe to send.

    `push(ids, finished)` takes the tokens a row generated (stop token excluded) and returns
    the text that can go to the client now; `reason` is set ("stop" / "length") as soon as it
    is known. With stop strings, the last `longest - 1` characters are held back until the next
    tokens show they do not start a stop string, so sent text never needs taking back: a stop
    string split across chunks cuts exactly where it does when the reply is sent whole
    (`finish` is this class fed every token at once).
    """

    def __init__(self, tokenizer: Any, max_tokens: int, stop: tuple[str, ...] = ()) -> None:
        self.tokenizer, self.max_tokens, self.stop = tokenizer, max_tokens, stop
        self.longest = max((len(x) for x in stop), default=0)
        self.detok = Detokenizer(tokenizer)
        self.ids: list[int] = []  # every generated id received (past max_tokens too)
        self.pieces: list[str] = []  # per-token text of the kept tokens (joined: `text`)
        self.text, self.sent = "", 0
        self.reason: str | None = None

    @property
    def completion_tokens(self) -> int:
        return len(self.pieces)

    def push(self, ids: list[int], finished: bool, pieces: list[str] | None = None) -> str:
        """Add a row's next generated ids (`pieces`: their text, else detokenized here);
        returns the text to send now."""
        own = pieces is None
        for k, t in enumerate(ids):
            if self.reason is not None:
                break
            self.ids.append(t)
            if len(self.pieces) < self.max_tokens:
                self._add(self.detok.push(t) if own else pieces[k])
        if self.reason is None and (finished or len(self.ids) > self.max_tokens):
            self._end("stop" if finished and len(self.ids) <= self.max_tokens else "length", own)
        return self._flush()

    def close(self, out: RowOut) -> str:
        """The call ended with the row's whole `out`: take the ids not pushed yet, settle the
        reason (a row neither stopped nor cut is "length": the buffer ended), send the rest."""
        text = self.push(out.token_ids[len(self.ids) :], out.finished)
        if self.reason is None:
            self._end("length", True)
        return text + self._flush()

    def _end(self, reason: str, own: bool) -> None:
        """No more tokens: add the detokenizer's held-back tail (it may complete a stop
        string), then settle the reason."""
        tail = self.detok.flush() if own else ""
        if tail:
            self._add(tail, new_token=False)
        if self.reason is None:
            self.reason = reason

    def choice(self) -> Choice:
        """The settled row as a `Choice` (after `close`)."""
        assert self.reason is not None, "close() the row first"
        return Choice(self.text, self.pieces, self.reason, self.completion_tokens)

    def _add(self, piece: str, new_token: bool = True) -> None:
        start = max(0, len(self.text) - self.longest)
        self.text += piece
        if new_token:
            self.pieces.append(piece)
        else:
            self.pieces[-1] += piece
        hits = [p for p in (self.text.find(s, start) for s in self.stop) if p >= 0]
        if hits:
            cut, at = min(hits), 0
            for j, p in enumerate(self.pieces):  # the stop string may start pieces back
                self.pieces[j], at = p[: max(0, cut - at)], at + len(p)
            self.text, self.reason = self.text[:cut], "stop"

    def _flush(self) -> str:
        safe = len(self.text)
        if self.reason is None and self.longest:
            safe = max(self.sent, safe - self.longest + 1)
        out, self.sent = self.text[self.sent : safe], max(self.sent, safe)
        return out


def finish(tokenizer: Any, out: RowOut, max_tokens: int, stop: tuple[str, ...]) -> Choice:
    """A row's generated ids → Choice: cut at `max_tokens` and at the first stop string."""
    row = RowText(tokenizer, max_tokens, stop)
    pieces = decode_pieces(tokenizer, out.token_ids[:max_tokens])
    row.push(out.token_ids, out.finished, pieces)
    row.close(out)
    return row.choice()


class JaxBackend:
    """Owns the prepared weights, the sampler, the prompt bank, and request planning."""

    def __init__(
        self,
        model: ServedModel,
        *,
        default_max_tokens: int = 512,
        max_top_p_variants: int = 4,
        seed: int = 0,
        batch_buckets: tuple[int, ...] = BATCH_BUCKETS,
        stream_chunk: int = DEFAULT_STREAM_CHUNK,
    ) -> None:
        if isinstance(stream_chunk, bool) or not isinstance(stream_chunk, int) or stream_chunk < 0:
            raise ValueError(
                f"stream_chunk={stream_chunk!r}: decode steps per call must be an int >= 1 "
                "(0 = one call per batch, replies sent when it ends)"
            )
        self.stream_chunk = stream_chunk
        tok = model.tokenizer
        if tok is None or getattr(tok, "chat_template", None) is None:
            raise ValueError(
                f"{model.name}: the tokenizer has no chat template; serve an instruct model's "
                "checkpoint (its tokenizer files carry the template)"
            )
        layout = default_kernel_layout()
        config, params = decoder.to_kernel_layout(model.config, model.params, layout)
        self.params = sampling.cast_params_for_sampling(config, params)
        self.config, self.tokenizer, self.model = config, tok, model
        self.sampler = sampling.Sampler(
            config, tok, batch_buckets=batch_buckets, kernel_layout=layout
        )
        self.limit = config.max_position_embeddings
        self.default_max_tokens = default_max_tokens
        self.max_top_p_variants = max_top_p_variants
        self.top_ps: set[float] = {1.0}
        self.key = jax.random.key(seed)
        self._rng = random.Random()
        self.raw = sampling.raw_bank(tok)
        self.bank, self.prefixes, self.suffix = None, [], []
        self.no_context_prefix: list[int] = []
        texts = model.context_texts
        try:
            lay = sampling.ChatLayout(tok)
            self.prefixes = [lay.encode_context(t) for t in texts]
            self.no_context_prefix = list(lay.no_context_ids)
            longest = max(len(p) for p in [*self.prefixes, self.no_context_prefix])
            self.bank = sampling.build_bank(
                tok, texts, max_prompts=max(1, len(texts)), max_len=-(-longest // 16) * 16
            )
            self.suffix = list(lay.suffix_ids)
        except ValueError:  # a template the bank cannot split: every request takes the raw path
            self.bank = None

    # ---------------------------------------------------------------- planning (event loop)

    def _render(self, messages: list[dict[str, str]]) -> list[int]:
        try:
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except Exception as e:  # jinja raises for role orders a template refuses
            raise bad(f"the model's chat template rejects these messages: {e}", "messages") from e
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _task_bucket(self, n: int) -> int:
        for b in self.sampler.task_buckets:
            if n <= b:
                return b
        raise bad(
            f"the prompt has {n} tokens; this server's longest prompt is "
            f"{self.sampler.task_buckets[-1]} tokens",
            "messages",
            "context_length_exceeded",
        )

    def plan(self, req: ChatRequest, context: int | None) -> tuple[GroupKey, list[Row], int, int]:
        """(group key, rows, prompt tokens, max_tokens) of a request; APIError if it cannot run."""
        messages = req.messages
        if context is not None:
            ctx = self.model.contexts[context]["text"]
            if messages[0]["role"] == "system":  # the client's system text follows the context
                sys_text = ctx + "\n\n" + messages[0]["content"]
                messages = [{"role": "system", "content": sys_text}, *messages[1:]]
            else:
                messages = [{"role": "system", "content": ctx}, *messages]
        full = self._render(messages)
        slot, task = 0, full
        path = "raw"
        if self.bank is not None:
            pre = self.no_context_prefix if context is None else self.prefixes[context]
            suf = self.suffix
            mid = full[len(pre) : len(full) - len(suf)]
            if full[: len(pre)] == pre and full[len(full) - len(suf) :] == suf and mid:
                path, task = "bank", mid
                slot = self.bank.no_context if context is None else context
        if path == "bank":
            used = self.bank.max_len + self._task_bucket(len(task)) + self.bank.suffix.shape[0]
        else:
            used = 2 + self._task_bucket(len(task))
        room = self.limit - used
        if room < 1:
            raise bad(
                f"the prompt has {len(full)} tokens (padded to {used} positions), which leaves "
                f"no room to generate within the model's {self.limit} positions",
                "messages",
                "context_length_exceeded",
            )
        max_tokens = req.max_tokens or min(self.default_max_tokens, room)
        if max_tokens > room:
            raise bad(
                f"max_tokens={max_tokens} is too large: the prompt has {len(full)} tokens "
                f"(padded to {used} positions) and the model has {self.limit}; use max_tokens "
                f"<= {room}",
                "max_tokens",
                "context_length_exceeded",
            )
        max_new = next((b for b in MAX_NEW_BUCKETS if b >= max_tokens), max_tokens)
        max_new = min(max_new, room)
        greedy = req.temperature == 0.0
        if req.top_p not in self.top_ps:
            if len(self.top_ps) >= self.max_top_p_variants:
                raise bad(
                    f"top_p={req.top_p}: this server compiles one program per top_p and already "
                    f"holds {sorted(self.top_ps)}; use one of them (or restart with a larger "
                    "--max_top_p_variants)",
                    "top_p",
                )
            self.top_ps.add(req.top_p)
        key = GroupKey(
            path, greedy, 1.0 if greedy else req.temperature, 1.0 if greedy else req.top_p, max_new
        )
        base = req.seed if req.seed is not None else self._rng.getrandbits(62)
        rows = [Row(list(task), slot, row_id(base, i), max_tokens) for i in range(req.n)]
        return key, rows, len(full), max_tokens

    # ---------------------------------------------------------------- the sampler call (worker)

    @property
    def streaming(self) -> bool:
        """Calls decode chunk by chunk (`run_stream`); False with stream_chunk=0."""
        return self.stream_chunk > 0

    def _inputs(self, key: GroupKey, rows: list[Row]) -> tuple[Any, ...]:
        sp = sampling.SamplingParams(
            temperature=1.0, top_p=key.top_p, max_new_tokens=key.max_new, greedy=key.greedy
        )
        bank = self.bank if key.path == "bank" else self.raw
        idx = np.asarray([r.slot if key.path == "bank" else 0 for r in rows], np.int32)
        tasks = self.sampler.pad_tasks([r.task_ids for r in rows])
        params = self.params if key.greedy else tempered(self.params, key.temperature)
        return params, bank, idx, tasks, self.key, sp

    def run(self, key: GroupKey, rows: list[Row]) -> list[RowOut]:
        rid = np.asarray([r.row_id for r in rows], np.int32)
        return _row_outs(self.sampler.sample(*self._inputs(key, rows), row_ids=rid))

    def run_stream(
        self, key: GroupKey, rows: list[Row], on_chunk: Callable[[list[RowOut]], bool]
    ) -> list[RowOut]:
        """`run`, calling `on_chunk` with each chunk's new ids per row (the stop token left
        out, `finished` once the row stopped); stops decoding when it returns False."""
        rid = np.asarray([r.row_id for r in rows], np.int32)
        inputs = self._inputs(key, rows)
        stream = self.sampler.sample_stream(*inputs, row_ids=rid, chunk=self.stream_chunk)
        for ch in stream:
            deltas = []
            for b in range(len(rows)):
                ids = ch.tokens[b].tolist()
                fin = bool(ch.done[b])
                deltas.append(RowOut(ids[:-1] if fin and ids else ids, fin))
            if not on_chunk(deltas):
                stream.stop()
        return _row_outs(stream.result())

    def warmup(
        self, max_batch: int, max_tokens: int = 0, greedy: tuple[bool, ...] = (False, True)
    ) -> int:
        """Compile the bank path's batch buckets up to `max_batch` (shortest prompt bucket, the
        max-tokens bucket of `max_tokens` or the default, sampled and/or greedy); returns the
        number of sampler calls made."""
        req = ChatRequest(model="", messages=[{"role": "user", "content": "Hi"}])
        calls = 0
        for g in greedy:
            r = ChatRequest(
                model="", messages=req.messages, temperature=0.0 if g else 1.0,
                max_tokens=max_tokens or None,
            )  # fmt: skip
            key, rows, _, _ = self.plan(r, None)
            for b in self.sampler.batch_buckets:
                if b > max_batch:
                    break
                if self.streaming:  # the executables the served calls use
                    self.run_stream(key, [rows[0]] * b, lambda deltas: True)
                else:
                    self.run(key, [rows[0]] * b)
                calls += 1
        return calls


def _row_outs(out: sampling.Rollouts) -> list[RowOut]:
    """Sampler rows → RowOuts (generated ids without the stop token)."""
    gen = np.asarray(out.completion_tokens)
    lens, fin = np.asarray(jax.device_get(out.completion_lengths)), np.asarray(out.finished)
    res = []
    for b in range(gen.shape[0]):
        ids = gen[b, : lens[b]].tolist()
        res.append(RowOut(ids[:-1] if fin[b] else ids, bool(fin[b])))
    return res


def resolve_model(names: dict[str, int | None], model: str) -> int | None:
    """A model name → context slot (None = no context); 404 naming the served names."""
    if model not in names:
        raise APIError(
            404,
            f"The model {model!r} does not exist on this server; available: "
            f"{', '.join(list(names)[:12])}{' ...' if len(names) > 12 else ''}",
            param="model",
            code="model_not_found",
        )
    return names[model]
