"""CISPO train-step throughput vs an HF transformers torch forward+backward of the same shapes.

Run (heavy; one at a time on the shared box):
    flock /tmp/fst_heavy.lock .venv/bin/python experiments/benchmarks/train_step.py

Both sides see SmolLM2-135M-Instruct (the embedded model: our `load`, and transformers'
`LlamaForCausalLM` on the same HF-format cache dir), B × S tokens, fp32. fst_jax times the whole
jitted step (forward, chunked log-probs, CISPO loss, backward, AdamW update); the torch peer
times forward + backward of a per-token policy-gradient loss on the full logits (no optimizer),
so the comparison is, if anything, tilted towards the peer. The peer runs in its own process and
the two are timed alternately, so load from other jobs on a shared machine hits both alike.
The last line is one JSON object. Defaults are fst_jax's fastest CPU setting for this shape
(no remat, 2 micro-batches of 4 rows: ~7 GB of activations); `--remat=layer --microbatches=1`
is the low-memory setting.

MFU = model FLOPs / time / peak, with model FLOPs = 6·N·B·S + 12·L·H·hd·S²·B (dense attention
as computed; remat recomputation not counted) and peak this CPU's fp32 matmul rate measured in
the same run (`peaks.py`: the best 2048² matmul of JAX and torch), so the figure means the same on
every machine this runs on (nominal peaks differ: 166 GFLOP/s on one 2-core Zen 4 VM,
333 on an AVX-512 Xeon).
"""

from __future__ import annotations

import json
import os
import time

from absl import app, flags

flags.DEFINE_integer("batch", 8, "rows")
flags.DEFINE_integer("seq_len", 384, "tokens per row (prompt + completion)")
flags.DEFINE_integer("prompt_len", 128, "prompt tokens per row; the rest is completion")
flags.DEFINE_integer("steps", 3, "timed steps per side, interleaved (after a warm-up step)")
flags.DEFINE_enum(
    "remat", "none", ["none", "layer", "dots"], "fst_jax per-layer remat (none: fastest, more RAM)"
)
flags.DEFINE_integer("logit_chunk", 128, "sequence chunk of the vocab projection")
flags.DEFINE_integer("microbatches", 2, "micro-batches per step (2: fastest 8x384 on CPU)")
flags.DEFINE_bool("torch", True, "also time the HF transformers torch peer")
flags.DEFINE_enum(
    "dtype", "float32", ["float32", "bfloat16"], "fst_jax compute dtype (params stay float32)"
)
FLAGS = flags.FLAGS


def model_flops(config, batch: int, seq: int) -> float:
    n = config.num_params  # tied embedding counted once = the LM-head matmul
    attn = 12 * config.num_layers * config.num_heads * config.head_dim * seq * seq * batch
    return 6.0 * n * batch * seq + attn


def rollouts(vocab: int, batch: int, seq: int, prompt: int):
    import numpy as np

    rng = np.random.default_rng(0)
    tokens = rng.integers(1, vocab, (batch, seq)).astype(np.int32)
    positions = np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy()
    mask = np.zeros((batch, seq), np.float32)
    mask[:, prompt:] = 1.0
    logps = np.where(mask > 0, -rng.exponential(1.0, (batch, seq)), 0.0).astype(np.float32)
    rewards = np.tile([1.0, 0.0], batch // 2).astype(np.float32)
    groups = np.arange(batch) // 4
    return tokens, positions, mask, logps, rewards, groups


def build_jax():
    """(config, loaded?, run_step) with the step compiled and run once."""
    import jax

    from fst_jax import sharding
    from fst_jax.models import get_config, init_params, load
    from fst_jax.rl import LossConfig, RLConfig, make_batch, make_train_step

    loaded = True
    try:
        config, params, _ = load(
            "smollm2-135m-instruct", remat=FLAGS.remat, dtype=FLAGS.dtype, param_dtype="float32"
        )
    except Exception as e:
        print(f"load failed ({e}); timing a random init of smollm2_135m instead")
        loaded = False
        config = get_config("smollm2_135m", remat=FLAGS.remat, dtype=FLAGS.dtype)
        params = init_params(config, jax.random.PRNGKey(0))
    arrays = rollouts(config.vocab_size, FLAGS.batch, FLAGS.seq_len, FLAGS.prompt_len)
    batch, _ = make_batch(*arrays, group_size=4)
    rl = RLConfig(
        loss=LossConfig(name="cispo"),
        learning_rate=1e-6,
        logit_chunk=FLAGS.logit_chunk,
        num_microbatches=FLAGS.microbatches,
    )
    step = make_train_step(config, sharding.single_device_mesh(), rl)
    holder = {"state": step.init(params)}
    del params

    def run():
        state, m = step(holder["state"], batch)
        jax.block_until_ready((state, m))
        holder["state"] = state
        return float(m["loss"])

    t = time.perf_counter()
    run()
    return config, loaded, run, time.perf_counter() - t


def torch_worker(conn, vocab: int, batch: int, seq: int, prompt: int) -> None:
    """HF peer in its own process (no thread-pool fights with XLA); times one fwd+bwd per call."""
    import numpy as np
    import torch
    from transformers import LlamaForCausalLM

    from fst_jax.models.embedded import embedded_checkpoint_dir

    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(embedded_checkpoint_dir(), dtype=torch.float32)
    model.train()
    tokens, _, mask, logps, _, _ = rollouts(vocab, batch, seq, prompt)
    ids = torch.tensor(tokens, dtype=torch.long)
    m = torch.tensor(mask[:, 1:])
    old = torch.tensor(logps[:, 1:])
    adv = torch.tensor(np.tile([1.0, -1.0], batch // 2), dtype=torch.float32)[:, None]

    def run():
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=ids).logits[:, :-1].float()
        lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
        w = torch.exp(lp - old).clamp(max=4.0).detach()
        loss = -(w * adv * lp * m).sum() / m.sum()
        loss.backward()
        return loss.item()

    run()  # warm-up
    conn.send(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    while conn.recv() == "step":
        t = time.perf_counter()
        run()
        conn.send(time.perf_counter() - t)


def start_torch(config):
    """Start the peer process; returns a closure that times one step there."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    args = (child, config.vocab_size, FLAGS.batch, FLAGS.seq_len, FLAGS.prompt_len)
    proc = ctx.Process(target=torch_worker, args=args, daemon=True)
    proc.start()
    print(parent.recv())

    def run_step() -> float:
        parent.send("step")
        return parent.recv()

    def stop() -> None:
        parent.send("stop")
        proc.join(timeout=60)

    return run_step, stop


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(_):
    import jax
    import peaks  # experiments/benchmarks/peaks.py, next to this script

    mm = peaks.matmul_peaks("float32")
    peak = mm["peak"]
    print(f"fp32 2048^2 matmul: jax {mm['jax']:.0f}, torch {mm['torch'] or 0:.0f} GFLOP/s")
    config, loaded, jax_run, first = build_jax()
    torch_step, torch_stop = start_torch(config) if FLAGS.torch else (None, None)
    # Interleave the two so that load from other jobs on a shared machine hits both alike;
    # each side runs in its own process while the other waits.
    jt, tt = [], []
    for _ in range(FLAGS.steps):
        jt.append(_timed(jax_run))
        if torch_step is not None:
            tt.append(torch_step())
        print(f"fst_jax {[round(x, 2) for x in jt]} s | hf torch {[round(x, 2) for x in tt]} s")
    if torch_stop is not None:
        torch_stop()
    flops = model_flops(config, FLAGS.batch, FLAGS.seq_len)
    tokens = FLAGS.batch * FLAGS.seq_len
    step_s = min(jt)
    out = {
        "benchmark": "cispo_train_step",
        "model": "smollm2-135m-instruct" if loaded else "smollm2_135m (random init)",
        "shape": [FLAGS.batch, FLAGS.seq_len],
        "dtype": FLAGS.dtype,
        "remat": FLAGS.remat,
        "jax": jax.__version__,
        "fst_jax_step_s": round(step_s, 3),
        "fst_jax_compile_s": round(first - step_s, 1),
        "fst_jax_tokens_per_s": round(tokens / step_s, 1),
        "model_gflop_per_step": round(flops / 1e9, 1),
        "fst_jax_gflops": round(flops / step_s / 1e9, 1),
        "fst_jax_mfu": round(flops / step_s / 1e9 / peak, 3),
        "peak_gflops_measured": round(peak, 1),
        "jax_matmul_gflops": round(mm["jax"], 1),
        "torch_matmul_gflops": None if mm["torch"] is None else round(mm["torch"], 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    if tt:
        out["hf_torch_fwd_bwd_s"] = round(min(tt), 3)
        out["hf_torch_mfu"] = round(flops / min(tt) / 1e9 / peak, 3)
        out["speedup_vs_hf_best"] = round(min(tt) / step_s, 3)
        pairs = sorted(t / j for j, t in zip(jt, tt))
        out["speedup_vs_hf_median_pair"] = round(pairs[len(pairs) // 2], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app.run(main)
