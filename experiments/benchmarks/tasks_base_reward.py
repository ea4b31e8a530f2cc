"""Base reward of the embedded SmolLM2-135M-Instruct on offline task configs (CPU).

Why: the default embedded FST run needs one task whose base reward is low but non-zero (RL has
signal, GEPA has room). This prints mean reward and pass@k per config under the task's seed
prompt (system turn) and with no prompt.

  flock /tmp/fst_heavy.lock .venv/bin/python experiments/benchmarks/tasks_base_reward.py \
      --n 32 --samples 2 --max_new_tokens 96
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from fst_jax.models import load
from fst_jax.sampling import SamplingParams, generate_chat
from fst_jax.tasks import get_task

CONFIGS = [
    ("math", {"difficulty": "lite"}),  # answer_format="last_number" (the lite default)
    ("math", {"difficulty": "lite", "answer_format": "boxed"}),
    ("math", {"difficulty": "easy"}),
    ("physics", {"level": "easy"}),
    ("physics", {"level": "easy", "answer_format": "last_number"}),
    ("physics", {"level": "easy", "format": "mc", "answer_format": "last_number"}),
    ("star_graph", {"size": "tiny"}),
    ("star_graph", {"size": "easy"}),
    ("codeio", {"num_ops": 1}),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32, help="validation problems per config")
    ap.add_argument("--samples", type=int, default=2, help="samples per problem (pass@k)")
    ap.add_argument("--max_new_tokens", type=int, default=96)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--only", default="", help="comma-separated config indices or task names")
    ap.add_argument("--no_prompt", action="store_true", help="also measure without a system prompt")
    args = ap.parse_args()
    config, params, tok = load("smollm2-135m-instruct")
    sp = SamplingParams(temperature=args.temperature, max_new_tokens=args.max_new_tokens)
    key = jax.random.PRNGKey(0)
    only = set(filter(None, args.only.split(",")))
    for i, (name, kw) in enumerate(CONFIGS):
        if only and name not in only and str(i) not in only:
            continue
        task = get_task(name, sizes={"validation": args.n, "train": 1, "test": 1}, **kw)
        exs = task.examples("validation")
        for use_prompt in [True] + ([False] if args.no_prompt else []):
            convs, rows = [], []
            for ex in exs:
                for _ in range(args.samples):
                    sys_turn = (
                        [{"role": "system", "content": task.seed_prompt}] if use_prompt else []
                    )
                    convs.append([*sys_turn, {"role": "user", "content": ex.question}])
                    rows.append(ex)
            t0 = time.time()
            key, sub = jax.random.split(key)
            texts = generate_chat(config, params, tok, convs, sp, sub)
            verdicts = task.verify_batch(rows, texts)
            r = np.array([v.reward for v in verdicts]).reshape(len(exs), args.samples)
            statuses: dict[str, int] = {}
            for v in verdicts:
                statuses[v.status] = statuses.get(v.status, 0) + 1
            print(
                json.dumps(
                    {
                        "task": name,
                        "kwargs": kw,
                        "prompt": use_prompt,
                        "n": len(exs),
                        "samples": args.samples,
                        "mean_reward": round(float(r.mean()), 4),
                        f"pass@{args.samples}": round(float((r.max(1) > 0).mean()), 4),
                        "statuses": statuses,
                        "seconds": round(time.time() - t0, 1),
                        "example": texts[0][:300],
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
