"""One full on-policy RL step: fst_jax's controller path vs TRL's `GRPOTrainer` (CISPO), same CPU.

    python experiments/benchmarks/rl_step.py [--problems 8 --group 8 --new_tokens 64 --rounds 2]
    python experiments/benchmarks/rl_step.py --sides ours     # fst_jax only (no TRL needed)

A step = sample P problems × G rollouts (temperature 1, `--new_tokens` new tokens) → verify →
group advantages → one optimizer update. Both sides use SmolLM2-135M-Instruct (TRL loads the HF
directory fst_jax's loader caches), the default config's math task in mode rl, the same problems
in the same order (round r uses stream positions [r·P, (r+1)·P) after one warm-up round), the same
system context (the task's seed prompt, rendered by the same chat template) and the same reward
(fst_jax's verifier, called from TRL's reward function).

fst_jax runs `Controller._rl_step` of `experiments/configs/default.py` with mode rl, batch P,
group G (everything else as the default config says: its micro-batching, dtype, remat). TRL 1.16
runs `GRPOTrainer(loss_type="cispo", epsilon_high=4.0, beta=0.0, num_iterations=1)` without vLLM,
per_device_train_batch_size = P·G, num_generations = G, once in fp32 and once with bf16=True (with
TRL's default activation checkpointing; sides `trl_fp32_nogc` / `trl_bf16_nogc` turn it off), each
in its own subprocess (TRL lives in its own site dir, `--trl_site`; it is not an fst_jax
dependency). Sides alternate round by round: [TRL-fp32, ours] × R, then [TRL-bf16, ours] × R (one
TRL process alive at a time, to bound memory on a shared machine); every side runs one untimed
warm-up step first. fst_jax's compilation is excluded by subtracting the XLA compile time measured
during a timed step (normally zero: the warm-up compiled the shapes).

Per side, each step is split into prefill, decode, verify and update (update = the rest of the
step: batch assembly, advantages, forward+backward, optimizer); TRL's prefill is its first
`generate` forward, decode the others. Peak RSS is sampled every 5 ms per phase. The last line
printed is one JSON object; `ratio_vs_trl_best` = TRL's faster mean step / ours (> 1: ours faster).

What still differs: TRL's CISPO aggregates per token over the batch (no prompt-level token mean),
its advantages divide by (std + 1e-4); TRL decodes with HF `generate` and stops at EOS per row but
keeps padding rows in the batch; fst_jax's π_old comes from the sampler, TRL's is detached current
log-probs (num_iterations=1, identical in value on-policy).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common  # experiments/benchmarks/_common.py, next to this script

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- shared data


def bench_config(problems: int, group: int, new_tokens: int):
    """The default CPU config in mode rl at this batch size."""
    import fst_jax  # the tree under test (PYTHONPATH): its own default config

    sys.path.insert(0, str(Path(fst_jax.__file__).resolve().parents[1] / "experiments" / "configs"))
    import default  # experiments/configs/default.py

    c = default.get_config()
    c.mode = "rl"
    c.rl.batch_size, c.rl.group_size = problems, group
    c.sampling.max_new_tokens = new_tokens
    c.eval.at_start, c.progress, c.summary = False, False, False
    return c


def problem_rounds(config, rounds: int):
    """The examples of each round (warm-up first) as the controller's stream hands them out."""
    from fst_jax.controller import DataStream
    from fst_jax.tasks import get_task

    task = get_task(config.task.name, **dict(config.task.kwargs))
    stream = DataStream(task.examples("train"), config.seed)
    return task, [stream.take(config.rl.batch_size) for _ in range(rounds + 1)]


# ----------------------------------------------------------------------------- fst_jax side


class Ours:
    def __init__(self, args, monitor: _common.RssMonitor) -> None:
        import jax

        from fst_jax.controller import Controller

        self.jax, self.monitor = jax, monitor
        self.config = bench_config(args.problems, args.group, args.new_tokens)
        t0 = time.perf_counter()
        self.ctrl = Controller(self.config, tempfile.mkdtemp(prefix="rl_step_bench_"))
        self.setup_s = time.perf_counter() - t0
        self.setup_rss = monitor.now()
        self.name = self.config.task.name
        self.task = self.ctrl.tasks[self.name]
        self.stream = self.ctrl._stream(self.name)
        self.compile_s = [0.0]
        jax.monitoring.register_event_duration_secs_listener(
            lambda ev, d, **kw: self._on_event(ev, d)
        )
        # Instrument the phases without changing the controller: the innermost Sampler gets a
        # timings dict, the task's verify_batch and the train step are timed.
        inner = self.ctrl.sampler
        while hasattr(inner, "sampler"):
            inner = inner.sampler
        self.timings: dict[str, float] = {}
        orig_sample = inner.sample
        marks = self.marks = {}

        def sample(*a, **kw):
            marks["sample0"] = time.perf_counter()
            kw["timings"] = self.timings
            out = orig_sample(*a, **kw)
            marks["sample1"] = time.perf_counter()
            print(  # progress (a run killed in the update still shows the sampler's figures)
                f"ours sampled: prefill {self.timings['prefill_s']:.1f} s decode "
                f"{self.timings['decode_s']:.1f} s, peak RSS "
                f"{monitor.peak(marks['sample0'], marks['sample1'])} GB",
                file=sys.stderr,
                flush=True,
            )
            return out

        inner.sample = sample
        orig_verify = self.task.verify_batch

        def verify(*a, **kw):
            marks["verify0"] = time.perf_counter()
            out = orig_verify(*a, **kw)
            marks["verify1"] = time.perf_counter()
            return out

        self.task.verify_batch = verify  # the RowShardedTask (never pickled)

    def _on_event(self, ev: str, d: float) -> None:
        if "backend_compile" in ev:
            self.compile_s[0] += d

    def step(self) -> dict:
        self.compile_s[0] = 0.0
        t0 = time.perf_counter()
        self.ctrl._rl_step(self.task, self.stream)
        self.jax.block_until_ready(self.ctrl.state.params)
        t1 = time.perf_counter()
        m, tm = self.marks, self.timings
        p1 = m["sample0"] + tm["prefill_s"]
        rec = json.loads(Path(self.ctrl.writer.path).read_text().splitlines()[-1])
        out = {
            "step_s": t1 - t0 - self.compile_s[0],
            "compile_s": self.compile_s[0],
            "prefill_s": tm["prefill_s"],
            "decode_s": tm["decode_s"],
            "verify_s": m["verify1"] - m["verify0"],
            "update_s": t1 - m["verify1"],
            "decode_steps": tm["steps"],
            "rss_gb": {
                "prefill": self.monitor.peak(m["sample0"], p1),
                "decode": self.monitor.peak(p1, m["sample1"]),
                "verify": self.monitor.peak(m["verify0"], m["verify1"]),
                "update": self.monitor.peak(m["verify1"], t1),
            },
        }
        out.update({k: v for k, v in rec.items() if k == "rollout/reward_mean"})
        return out


# ----------------------------------------------------------------------------- TRL side


def trl_worker(args) -> None:
    """Runs in a subprocess: builds the TRL trainer and does one step per 'go' line on stdin."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from fst_jax.models.embedded import embedded_checkpoint_dir

    monitor = _common.RssMonitor()
    torch.manual_seed(0)
    config = bench_config(args.problems, args.group, args.new_tokens)
    task, rounds = problem_rounds(config, args.rounds)
    examples = [ex for r in rounds for ex in r]
    context = task.seed_prompt
    data = Dataset.from_list(
        [
            {
                "prompt": [
                    {"role": "system", "content": context},
                    {"role": "user", "content": ex.question},
                ],
                "ex_index": i,
            }
            for i, ex in enumerate(examples)
        ]
    )
    marks: dict[str, float] = {}
    fwd: list[tuple[float, float, int]] = []

    def reward(prompts, completions, ex_index, **kw):
        marks["verify0"] = time.perf_counter()
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        out = [float(v.reward) for v in task.verify_batch([examples[i] for i in ex_index], texts)]
        marks["verify1"] = time.perf_counter()
        return out

    path = str(embedded_checkpoint_dir())
    dtype = args.trl_worker
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    rows = args.problems * args.group
    cfg = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl_bench_"),
        per_device_train_batch_size=rows,
        gradient_accumulation_steps=1,
        num_generations=args.group,
        max_completion_length=args.new_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        loss_type="cispo",
        epsilon_high=4.0,
        beta=0.0,
        num_iterations=1,
        learning_rate=config.rl.lr,
        bf16=dtype.startswith("bf16"),
        # TRL's GRPOConfig turns activation checkpointing on by default; `_nogc` sides turn it
        # off (faster update, more memory) so the ratio can be taken against TRL's fastest.
        gradient_checkpointing=not dtype.endswith("_nogc"),
        use_cpu=True,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        shuffle_dataset=False,
        max_steps=args.rounds + 1,
        seed=0,
        disable_tqdm=True,
    )

    def timed_generate(orig):
        def gen(*a, **kw):
            marks["gen0"] = time.perf_counter()
            fwd.clear()
            out = orig(*a, **kw)
            marks["gen1"] = time.perf_counter()
            return out

        return gen

    def pre(mod, a, kw):
        if not torch.is_grad_enabled():
            fwd.append((time.perf_counter(), 0.0, 0))

    def post(mod, a, kw, out):
        if not torch.is_grad_enabled() and fwd:
            t0, _, _ = fwd[-1]
            fwd[-1] = (t0, time.perf_counter(), 1)

    model.register_forward_pre_hook(pre, with_kwargs=True)
    model.register_forward_hook(post, with_kwargs=True)
    model.generate = timed_generate(model.generate)

    class Gate(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            line = sys.stdin.readline()
            if not line.strip():
                sys.exit(0)
            marks["step0"] = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            t1 = time.perf_counter()
            m = marks
            prefill_end = fwd[0][1] if fwd else m["gen0"]
            rec = {
                "step_s": t1 - m["step0"],
                "prefill_s": prefill_end - m["gen0"],
                "decode_s": m["gen1"] - prefill_end,
                "verify_s": m["verify1"] - m["verify0"],
                "update_s": t1 - m["verify1"],
                "decode_steps": max(len(fwd) - 1, 0),
                "rss_gb": {
                    "prefill": monitor.peak(m["gen0"], prefill_end),
                    "decode": monitor.peak(prefill_end, m["gen1"]),
                    "verify": monitor.peak(m["verify0"], m["verify1"]),
                    "update": monitor.peak(m["verify1"], t1),
                },
            }
            print("TRLSTEP " + json.dumps(rec), flush=True)

    torch.set_num_threads(os.cpu_count() or 1)
    trainer = GRPOTrainer(
        model=model, reward_funcs=reward, args=cfg, train_dataset=data, processing_class=tok,
        callbacks=[Gate()],
    )  # fmt: skip
    print("TRLREADY", flush=True)
    trainer.train()


class TrlSide:
    def __init__(self, args, dtype: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([args.trl_site, str(REPO), env.get("PYTHONPATH", "")])
        env["JAX_PLATFORMS"] = "cpu"
        cmd = [sys.executable, __file__, f"--trl_worker={dtype}", *_pass_args(args)]
        self.p = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self._wait("TRLREADY")

    def _wait(self, tag: str) -> str:
        for line in self.p.stdout:
            if line.startswith(tag):
                return line[len(tag) :].strip()
        raise RuntimeError(f"TRL worker exited (rc={self.p.wait()}) before printing {tag}")

    def step(self) -> dict:
        self.p.stdin.write("go\n")
        self.p.stdin.flush()
        return json.loads(self._wait("TRLSTEP"))

    def close(self) -> None:
        try:
            self.p.stdin.write("\n")
            self.p.stdin.flush()
        except BrokenPipeError:
            pass
        try:
            self.p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.p.kill()


def _pass_args(args) -> list[str]:
    return [f"--problems={args.problems}", f"--group={args.group}",
            f"--new_tokens={args.new_tokens}", f"--rounds={args.rounds}"]  # fmt: skip


# ----------------------------------------------------------------------------- driver


def summarize(steps: list[dict]) -> dict:
    keys = ("step_s", "prefill_s", "decode_s", "verify_s", "update_s")
    out = {}
    for k in keys:
        xs = [s[k] for s in steps]
        out[k] = round(statistics.mean(xs), 2)
        out[k + "_se"] = round(_common.se(xs), 2) if len(xs) > 1 else None
    out["rss_gb_peak"] = {
        ph: max(s["rss_gb"][ph] for s in steps) for ph in ("prefill", "decode", "verify", "update")
    }
    out["n"] = len(steps)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--new_tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2, help="timed steps per side and TRL dtype")
    ap.add_argument(
        "--sides",
        default="ours,trl_fp32,trl_bf16",
        help="ours and TRL variants trl_{fp32,bf16}[_nogc] (_nogc: no activation checkpointing)",
    )
    ap.add_argument("--trl_site", default="/work/venv-trl/site", help="site dir holding trl")
    ap.add_argument("--trl_worker", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.trl_worker:
        return trl_worker(args)
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    monitor = _common.RssMonitor()
    res: dict = {"rows": args.problems * args.group, "new_tokens": args.new_tokens}
    ours_steps: list[dict] = []
    ours = None
    if "ours" in sides:
        ours = Ours(args, monitor)
        res["ours_setup"] = {"s": round(ours.setup_s, 1), "rss_gb": ours.setup_rss}
        w = ours.step()  # warm-up: compiles every shape of the step
        res["ours_warmup"] = {"compile_s": round(w["compile_s"], 1), "rss_gb": w["rss_gb"]}
        print("ours warm-up", json.dumps(w), flush=True)
    trl_dtypes = [s.removeprefix("trl_") for s in sides if s.startswith("trl_")]
    for dtype in trl_dtypes or [None]:
        trl_steps: list[dict] = []
        trl = TrlSide(args, dtype) if dtype else None
        if trl:
            print(f"trl {dtype} warm-up", json.dumps(trl.step()), flush=True)
        for r in range(args.rounds):
            if trl:
                s = trl.step()
                trl_steps.append(s)
                print(f"trl {dtype} round {r}", json.dumps(s), flush=True)
            if ours:
                s = ours.step()
                ours_steps.append(s)
                print(f"ours round {r}", json.dumps(s), flush=True)
        if trl:
            trl.close()
            res[f"trl_{dtype}"] = summarize(trl_steps)
    if ours_steps:
        res["ours"] = summarize(ours_steps)
    trl_means = [res[f"trl_{d}"]["step_s"] for d in trl_dtypes]
    if ours_steps and trl_means:
        res["ratio_vs_trl_best"] = round(min(trl_means) / res["ours"]["step_s"], 3)
    res["peak_rss_gb_process"] = round(max(r for _, r in monitor.samples) / 1e9, 3)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
