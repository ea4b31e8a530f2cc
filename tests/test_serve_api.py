"""fst-serve over loopback with the real `openai` client, on a tiny random policy.

Oracles: greedy replies must equal an uncached full-forward argmax loop on the conversation
rendered by the chat template with the context as the system turn (the server instead selects
that context by prompt-bank slot); seeded samples must not depend on which requests share a
sampler call; the temperature-through-weights identity is checked on `decoder.forward`.
"""

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import openai
import pytest

from fst_jax.models import decoder
from fst_jax.sampling import num_compilations
from fst_jax.serve import load_spec, serving
from fst_jax.serve.backend import Detokenizer, decode_pieces, tempered

# Each test compiles sampler shapes for the tiny model: seconds alone, minutes on a loaded box.
pytestmark = pytest.mark.slow

CONTEXTS = ["Answer in one word.", "You are a careful assistant. Think first."]
MSG = [{"role": "user", "content": "Name a colour."}]
CHUNK = 4  # decode steps per call: the first chunk carries 5 tokens, the others 4


@pytest.fixture(scope="module")
def served():
    model = load_spec("random:tiny_llama", seed=3)
    model.contexts = [
        {"index": i, "id": 10 + i, "text": t, "mean_score": 0.5 - i / 10, "coverage": 1,
         "on_front": True}
        for i, t in enumerate(CONTEXTS)
    ]  # fmt: skip
    with serving(model, max_batch=8, max_n=4, default_max_tokens=8, stream_chunk=CHUNK) as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="unused", max_retries=0, timeout=120)
        yield model, srv, client


def _greedy_uncached(config, params, ids, max_new, eos_id):
    """Independent of the sampler: re-run the whole sequence each step, argmax the last logit."""
    import jax.numpy as jnp

    from fst_jax.models import forward

    seq, out = list(ids), []
    for _ in range(max_new):
        logits, _ = forward(config, params, jnp.asarray([seq], jnp.int32))
        nxt = int(jnp.argmax(logits[0, -1]))
        out.append(nxt)
        seq.append(nxt)
        if nxt == eos_id:
            break
    return out


def oracle(model, messages, max_new):
    tok = model.tokenizer
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok.encode(text, add_special_tokens=False)
    out = _greedy_uncached(model.config, model.params, ids, max_new, tok.eos_token_id)
    if out and out[-1] == tok.eos_token_id:
        out = out[:-1]
    return tok.decode(out, skip_special_tokens=True), len(ids), len(out)


def post(url, data: bytes, content_type="application/json"):
    req = urllib.request.Request(
        url + "/chat/completions", data=data, headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_models_list_one_name_per_context(served):
    model, _, client = served
    ids = [m.id for m in client.models.list().data]
    assert ids == [model.name, f"{model.name}/ctx0", f"{model.name}/ctx1"]
    card = client.models.retrieve(f"{model.name}/ctx1")
    assert card.id == f"{model.name}/ctx1" and card.context["text"] == CONTEXTS[1]


@pytest.mark.parametrize("slot", [None, 0, 1])
def test_greedy_matches_reference_generation(served, slot):
    model, _, client = served
    name = model.name if slot is None else f"{model.name}/ctx{slot}"
    r = client.chat.completions.create(model=name, messages=MSG, temperature=0, max_tokens=8)
    messages = MSG if slot is None else [{"role": "system", "content": CONTEXTS[slot]}, *MSG]
    want, n_prompt, n_out = oracle(model, messages, 8)
    assert r.choices[0].message.content == want
    assert r.usage.prompt_tokens == n_prompt and r.usage.completion_tokens == n_out
    assert r.choices[0].finish_reason == ("length" if n_out == 8 else "stop")
    assert r.usage.total_tokens == n_prompt + r.usage.completion_tokens
    assert r.object == "chat.completion" and r.model == name


def test_client_system_message_joins_the_context(served):
    model, _, client = served
    msgs = [{"role": "system", "content": "Be terse."}, *MSG]
    r = client.chat.completions.create(
        model=f"{model.name}/ctx0", messages=msgs, temperature=0, max_tokens=8
    )
    joined = [{"role": "system", "content": CONTEXTS[0] + "\n\nBe terse."}, *MSG]
    assert r.choices[0].message.content == oracle(model, joined, 8)[0]


def test_streaming_equals_non_streaming(served):
    model, _, client = served
    kw = dict(model=f"{model.name}/ctx0", messages=MSG, max_tokens=8, seed=7, n=2)
    full = client.chat.completions.create(**kw)
    chunks = list(
        client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
    )
    text, reasons = ["", ""], [None, None]
    for ch in chunks[:-1]:
        assert ch.object == "chat.completion.chunk" and ch.id == chunks[0].id
        for c in ch.choices:
            text[c.index] += c.delta.content or ""
            reasons[c.index] = c.finish_reason or reasons[c.index]
    assert text == [c.message.content for c in full.choices]
    assert reasons == [c.finish_reason for c in full.choices]
    assert chunks[-1].choices == [] and chunks[-1].usage == full.usage


def test_n_choices_seeded_and_batch_invariant(served):
    model, _, client = served
    kw = dict(model=model.name, messages=MSG, max_tokens=8, temperature=1.3, top_p=0.9)
    a = client.chat.completions.create(**kw, n=4, seed=11)
    assert [c.index for c in a.choices] == [0, 1, 2, 3]
    texts = [c.message.content for c in a.choices]
    assert len(set(texts)) > 1  # independent rows
    lengths = {c.finish_reason for c in a.choices}
    if lengths == {"length"}:
        assert a.usage.completion_tokens == 4 * 8
    # The same seed alone, and inside a batch with other requests: the same samples.
    b = client.chat.completions.create(**kw, n=4, seed=11)
    results = {}

    def call(i):
        results[i] = client.chat.completions.create(**kw, n=1 if i else 4, seed=11 if i == 0 else i)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [c.message.content for c in b.choices] == texts
    assert [c.message.content for c in results[0].choices] == texts
    c = client.chat.completions.create(**kw, n=4, seed=12)
    assert [x.message.content for x in c.choices] != texts


def test_usage_counts_and_stop_strings(served):
    model, _, client = served
    r = client.chat.completions.create(model=model.name, messages=MSG, temperature=0, max_tokens=8)
    text = r.choices[0].message.content
    want, _, n_out = oracle(model, MSG, 8)
    assert text == want and r.usage.completion_tokens == n_out
    short = client.chat.completions.create(
        model=model.name, messages=MSG, temperature=0, max_tokens=3
    )  # same bucket, cut on the host
    assert short.usage.completion_tokens == min(3, n_out)
    assert text.startswith(short.choices[0].message.content.rstrip("\ufffd"))
    # A stop string taken from the greedy reply cuts it there, finish_reason "stop".
    visible = text.replace("\ufffd", "")
    if len(visible) >= 3:
        stop = visible[1:3]
        s = client.chat.completions.create(
            model=model.name, messages=MSG, temperature=0, max_tokens=8, stop=[stop, "zzzz"]
        )
        assert s.choices[0].message.content == text[: text.find(stop)]
        assert s.choices[0].finish_reason == "stop"
        assert s.usage.completion_tokens <= r.usage.completion_tokens


def test_decode_pieces_concatenate_to_the_text(served):
    model, _, _ = served
    tok = model.tokenizer
    for text in ["héllo wörld", "日本語 ok", "plain ascii"]:
        ids = tok.encode(text, add_special_tokens=False)
        pieces = decode_pieces(tok, ids)
        assert len(pieces) == len(ids) and "".join(pieces) == text
        assert all("\ufffd" not in p for p in pieces)


def test_temperature_through_the_final_norm_is_exact():
    model = load_spec("random:tiny_llama", seed=1)
    tokens = np.arange(1, 13, dtype=np.int32).reshape(2, 6)
    base, _ = decoder.forward(model.config, model.params, tokens)
    for t in (0.25, 0.7, 1.9):
        hot, _ = decoder.forward(model.config, tempered(model.params, t), tokens)
        np.testing.assert_allclose(np.asarray(hot), np.asarray(base) / t, rtol=2e-5, atol=2e-5)


def test_concurrent_requests_share_sampler_calls_without_recompiling(served):
    model, srv, client = served
    kw = dict(model=f"{model.name}/ctx1", max_tokens=8)

    def burst(temperature, tag):
        out, threads = {}, []
        for i in range(8):
            msgs = [{"role": "user", "content": f"Question {tag} number {i}?"}]

            def go(i=i, msgs=msgs):
                out[i] = client.chat.completions.create(
                    **kw, messages=msgs, temperature=temperature
                )

            threads.append(threading.Thread(target=go))
        with srv.app.engine.held():  # queue all eight, then release them together
            for t in threads:
                t.start()
            deadline = time.time() + 60
            while srv.app.engine.queued_rows < 8 and time.time() < deadline:
                time.sleep(0.01)
        for t in threads:
            t.join()
        return out

    calls0 = srv.app.engine.stats["calls"]
    burst(0.8, "a")  # warm-up of this shape
    assert srv.app.engine.stats["calls"] - calls0 == 1  # eight requests, one sampler call
    compiled = num_compilations()
    out = burst(1.7, "b")  # new texts, new temperature: same executable
    assert num_compilations() == compiled
    assert len(out) == 8 and all(r.choices[0].message.content is not None for r in out.values())


@pytest.mark.parametrize(
    "body, status, param, code",
    [
        (b"{not json", 400, None, None),
        (b'["a list"]', 400, None, None),
        (json.dumps({"messages": MSG}).encode(), 400, "model", None),
        (json.dumps({"model": "nope", "messages": MSG}).encode(), 404, "model", "model_not_found"),
        (json.dumps({"model": "M", "messages": []}).encode(), 400, "messages", None),
        (json.dumps({"model": "M", "messages": [{"role": "robot", "content": "x"}]}).encode(),
         400, "messages[0]", None),
        (json.dumps({"model": "M", "messages": MSG, "temperature": 2.5}).encode(), 400,
         "temperature", None),
        (json.dumps({"model": "M", "messages": MSG, "top_p": 0}).encode(), 400, "top_p", None),
        (json.dumps({"model": "M", "messages": MSG, "n": 99}).encode(), 400, "n", None),
        (json.dumps({"model": "M", "messages": MSG, "max_tokens": 0}).encode(), 400,
         "max_tokens", None),
        (json.dumps({"model": "M", "messages": MSG, "max_tokens": 100000}).encode(), 400,
         "max_tokens", "context_length_exceeded"),
        (json.dumps({"model": "M", "messages": MSG, "stop": ["a"] * 5}).encode(), 400, "stop",
         None),
        (json.dumps({"model": "M", "messages": MSG, "seed": "x"}).encode(), 400, "seed", None),
        (json.dumps({"model": "M", "messages": MSG, "tools": [{"type": "function"}]}).encode(),
         400, "tools", None),
        (json.dumps({"model": "M", "messages": [{"role": "user", "content": "word " * 400}]})
         .encode(), 400, "messages", "context_length_exceeded"),
    ],
)  # fmt: skip
def test_bad_requests_get_openai_error_bodies(served, body, status, param, code):
    model, srv, _ = served
    body = body.replace(b'"M"', json.dumps(model.name).encode())
    got, doc = post(srv.url, body)
    assert got == status, doc
    err = doc["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param and err["code"] == code


def test_openai_client_raises_typed_errors(served):
    model, _, client = served
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="nope", messages=MSG)
    with pytest.raises(openai.BadRequestError, match=r"context_length_exceeded|max_tokens"):
        client.chat.completions.create(model=model.name, messages=MSG, max_tokens=10**5)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model=model.name, messages=MSG, temperature=-1)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model=model.name, prompt="x")  # no legacy endpoint
    # ...and the server still answers.
    assert client.chat.completions.create(model=model.name, messages=MSG, max_tokens=8).choices


def test_top_p_variants_are_bounded(served):
    model, _, client = served
    for p in (0.5, 0.6, 0.7, 0.8):
        try:
            client.chat.completions.create(model=model.name, messages=MSG, top_p=p, max_tokens=1)
        except openai.BadRequestError as e:
            assert "top_p" in str(e) and "compiles one program per top_p" in str(e)
            break
    else:
        pytest.fail("a fifth top_p value was accepted past max_top_p_variants=4")


def test_disconnect_before_dispatch_frees_its_rows(served):
    model, srv, client = served
    engine = srv.app.engine
    body = json.dumps(
        {"model": model.name, "messages": MSG, "n": 3, "max_tokens": 8, "stream": True}
    ).encode()
    before = engine.stats["rows_cancelled"]
    with engine.held():
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        deadline = time.time() + 30
        while engine.queued_rows < 3 and time.time() < deadline:
            time.sleep(0.01)
        assert engine.queued_rows == 3
        s.close()  # the client goes away while its job waits
        while engine.queued_rows and time.time() < deadline:
            time.sleep(0.01)
        assert engine.queued_rows == 0
    deadline = time.time() + 30
    while engine.stats["rows_cancelled"] == before and time.time() < deadline:
        time.sleep(0.01)
    assert engine.stats["rows_cancelled"] - before == 3
    assert client.chat.completions.create(model=model.name, messages=MSG, max_tokens=8).choices


def test_planning_paths_without_contexts():
    """No contexts: the bank holds only the no-context row; a client system message that the
    template renders in its place takes the raw path (whole prompt as task tokens)."""
    from fst_jax.serve.backend import JaxBackend
    from fst_jax.serve.protocol import ChatRequest

    b = JaxBackend(load_spec("random:tiny_llama"))
    key, rows, n_prompt, max_tokens = b.plan(ChatRequest(model="m", messages=MSG, n=3), None)
    assert key.path == "bank" and [r.slot for r in rows] == [b.bank.no_context] * 3
    assert len({r.row_id for r in rows}) == 3
    # No max_tokens sent: as many as the 512-position model leaves after the padded prompt.
    room = 512 - (b.bank.max_len + 32 + b.bank.suffix.shape[0])
    assert max_tokens == key.max_new == room
    full = b.tokenizer.apply_chat_template(MSG, tokenize=False, add_generation_prompt=True)
    ids = b.tokenizer.encode(full, add_special_tokens=False)
    assert b.no_context_prefix + rows[0].task_ids + b.suffix == ids and n_prompt == len(ids)
    sys_msgs = [{"role": "system", "content": "Be terse."}, *MSG]
    key2, rows2, n2, _ = b.plan(ChatRequest(model="m", messages=sys_msgs), None)
    want = b.tokenizer.apply_chat_template(sys_msgs, tokenize=False, add_generation_prompt=True)
    assert key2.path == "raw" and rows2[0].task_ids == b.tokenizer.encode(want) and n2 > 0


def test_routes_methods_and_body_size_get_error_bodies(served):
    _, srv, _ = served
    base = srv.url.rsplit("/v1", 1)[0]
    cases = [
        (urllib.request.Request(base + "/v1/nothing"), 404),
        (urllib.request.Request(srv.url + "/chat/completions"), 405),  # GET on a POST route
        (urllib.request.Request(srv.url + "/chat/completions", data=b"x" * (9 << 20)), 413),
    ]
    for req, status in cases:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=60)
        assert e.value.code == status
        err = json.loads(e.value.read())["error"]
        assert err["message"] and set(err) == {"message", "type", "param", "code"}
    with urllib.request.urlopen(base + "/health", timeout=60) as r:
        assert json.loads(r.read())["status"] == "ok"


def _hooked(monkeypatch, backend, hook):
    """Call `hook(chunk_number, deltas)` on the worker after each decoded chunk."""
    orig = backend.run_stream

    def run_stream(key, rows, on_chunk):
        k = [0]

        def wrapped(deltas):
            go = on_chunk(deltas)
            k[0] += 1
            hook(k[0], deltas)
            return go

        return orig(key, rows, wrapped)

    monkeypatch.setattr(backend, "run_stream", run_stream)


def _collect(stream):
    text, reasons, contents = {}, {}, 0
    for ch in stream:
        for c in ch.choices:
            text[c.index] = text.get(c.index, "") + (c.delta.content or "")
            contents += bool(c.delta.content)
            reasons[c.index] = c.finish_reason or reasons.get(c.index)
    return text, reasons, contents


def test_streamed_text_arrives_while_the_call_decodes(served, monkeypatch):
    """The worker is held after the first chunk that decodes to visible text: the client must
    receive that text while the call is still running, then the rest chunk by chunk."""
    model, srv, client = served
    kw = dict(model=model.name, messages=MSG, max_tokens=40, temperature=0)
    full = client.chat.completions.create(**kw).choices[0]
    held, release, det = [], threading.Event(), Detokenizer(model.tokenizer)

    def hook(k, deltas):
        if not held and "".join(det.push(t) for t in deltas[0].token_ids):
            held.append(k)
            release.wait(60)

    _hooked(monkeypatch, srv.app.backend, hook)
    calls = srv.app.engine.stats["calls"]
    text, contents, early = "", 0, None
    for ch in client.chat.completions.create(**kw, stream=True):
        for c in ch.choices:
            if c.delta.content:
                if early is None:  # the first text: the call must still be held mid-decode
                    early = (not release.is_set(), srv.app.engine.stats["calls"] == calls)
                    release.set()
                text += c.delta.content
                contents += 1
    assert early == (True, True) and held
    assert text == full.message.content and contents > 1


def test_stop_string_across_a_chunk_boundary(served, monkeypatch):
    model, srv, client = served
    kw = dict(model=model.name, messages=MSG, max_tokens=40, temperature=0)
    chunks = []
    _hooked(monkeypatch, srv.app.backend, lambda k, d: chunks.append(d[0].token_ids))
    full = client.chat.completions.create(**kw).choices[0].message.content
    det, bounds = Detokenizer(model.tokenizer), []
    for ids in chunks:  # the text length at each chunk boundary
        bounds.append(len("".join(det.push(t) for t in ids)) + (bounds[-1] if bounds else 0))
    assert len(chunks) > 2
    # A stop string of w characters from each side of a boundary, found first there (random
    # weights write U+FFFD for byte runs that are not UTF-8: plain characters to match too).
    ok = [
        (b, w) for w in (2, 3, 4) for b in bounds
        if w <= b <= len(full) - w and full.find(full[b - w : b + w]) == b - w
    ]  # fmt: skip
    assert ok, f"no chunk boundary to split a stop string in {full!r}"
    b, w = ok[0]
    stop = full[b - w : b + w]
    want = full[: full.find(stop)]
    plain = client.chat.completions.create(**kw, stop=[stop]).choices[0]
    text, reasons, _ = _collect(client.chat.completions.create(**kw, stop=[stop], stream=True))
    assert plain.message.content == want and plain.finish_reason == "stop"
    assert text == {0: want} and reasons == {0: "stop"}


def test_disconnect_mid_stream_frees_the_call_at_the_next_chunk(served, monkeypatch):
    model, srv, client = served
    engine = srv.app.engine
    blocked, release, seen, jobs = threading.Event(), threading.Event(), [], []

    def hook(k, deltas):
        seen.append(k)
        if k == 1:
            blocked.set()
            release.wait(60)

    _hooked(monkeypatch, srv.app.backend, hook)
    orig = engine.submit
    monkeypatch.setattr(engine, "submit", lambda *a, **k: jobs.append(orig(*a, **k)) or jobs[-1])
    body = json.dumps(
        {"model": model.name, "messages": MSG, "n": 2, "max_tokens": 64, "stream": True}
    ).encode()
    before = dict(engine.stats)
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    assert blocked.wait(60)  # inside the call, after its first chunk
    s.close()  # the client goes away mid-stream
    deadline = time.time() + 30
    while not jobs[0].cancelled and time.time() < deadline:
        time.sleep(0.01)
    assert jobs[0].cancelled
    release.set()
    while engine.stats["calls"] == before.get("calls", 0) and time.time() < deadline:
        time.sleep(0.01)
    # 64 tokens would take 16 chunks; the call ended at the next chunk boundary.
    assert seen == [1, 2]
    assert engine.stats["calls_ended_early"] - before.get("calls_ended_early", 0) == 1
    assert engine.stats["rows_discarded"] - before.get("rows_discarded", 0) == 2
    assert client.chat.completions.create(model=model.name, messages=MSG, max_tokens=8).choices
