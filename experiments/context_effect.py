"""Does the context move the model? Reward per task x difficulty x context, with standard errors.

Why: FST's fast weights (a context evolved by GEPA) can only help a model that reads its
context. This samples one completion per validation problem (n distinct problems, so rollouts
are independent and SE = sd / sqrt(n)) under each context and scores it with the task's own
verifier. Every context sees the *same* problems, so the effect of a context against the
"instruction only" baseline is a paired difference with its own SE.

Contexts (the same texts for the base and the warm-started model):
  none          no system turn (the chat template's default system prompt, if any)
  sys_instr     system: the task instruction only
  sys_format    system: instruction + format rule
  sys_example   system: instruction + format rule + one worked example (from the train split)
  user_format   the sys_format text prepended to the user turn instead
  user_example  the sys_example text prepended to the user turn instead

Math completions are scored twice: `boxed` (only a final \\boxed{} counts, the format the rule
asks for) and `last_number` (GSM8K-style fallback to the last number).

  PYTHONPATH=$PWD python experiments/context_effect.py --out experiments/results/context_effect/base
  PYTHONPATH=$PWD python experiments/context_effect.py --model runs/sft/export \\
      --out experiments/results/context_effect/sft
  PYTHONPATH=$PWD python experiments/context_effect.py --init_from runs/sft  # a checkpoint
  python experiments/context_effect.py --summarize experiments/results/context_effect/base
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np

CONTEXTS = ("none", "sys_instr", "sys_format", "sys_example", "user_format", "user_example")
STAR_INSTRUCTION = "Find the path from the source to the destination using only the listed edges."
STAR_RULE = (
    "Write the path as comma-separated node numbers from the source to the destination "
    "inside \\boxed{}, for example \\boxed{3,7,9}."
)
# (cell name, task name, task kwargs, instruction, format rule)
CELLS = {
    "math_lite": (
        "math",
        {"difficulty": "lite", "answer_format": "boxed"},
        "Solve the arithmetic word problem.",
        "Show the calculation briefly, then give the final answer as a number inside "
        "\\boxed{}, for example \\boxed{12}.",
    ),
    # The default run's task: reward = the last number of the reply (GSM8K-style), so a
    # context that keeps replies short and ending on the answer can help without any \boxed{}.
    "math_lite_num": (
        "math",
        {"difficulty": "lite", "answer_format": "last_number"},
        "Solve the arithmetic word problem.",
        "Answer in one short sentence that ends with the final number, for example: "
        "Tom has 12 apples.",
    ),
    "math_easy": (
        "math",
        {"difficulty": "easy", "answer_format": "boxed"},
        "Solve the arithmetic word problem.",
        "Show the calculation briefly, then give the final answer as a number inside "
        "\\boxed{}, for example \\boxed{12}.",
    ),
    "star_tiny": (
        "star_graph",
        {"size": "tiny"},
        STAR_INSTRUCTION,
        STAR_RULE,
    ),
    # Larger star graphs: the study's star arm needs a size where the warm start scores 0.
    "star_easy": (
        "star_graph",
        {"size": "easy"},
        STAR_INSTRUCTION,
        STAR_RULE,
    ),
    "star_medium": (
        "star_graph",
        {"size": "medium"},
        STAR_INSTRUCTION,
        STAR_RULE,
    ),
}


def worked_example(task_name: str, ex) -> str:
    """One solved train problem, written in the format the rule asks for."""
    if task_name == "math":
        sol = ex.metadata["solution"]
        return f"Example.\nQuestion: {ex.question}\nAnswer: {sol}"
    path = ex.gold
    return (
        f"Example.\nQuestion: {ex.question}\nAnswer: Walking back from the destination gives "
        f"the path \\boxed{{{path}}}."
    )


def context_texts(cell: str, task) -> dict[str, str]:
    task_name, _, instr, rule = CELLS[cell]
    demo = worked_example(task_name, task.examples("train")[0])
    return {
        "instr": instr,
        "format": f"{instr} {rule}",
        "example": f"{instr} {rule}\n\n{demo}",
    }


def conversation(context: str, texts: dict[str, str], question: str) -> list[dict[str, str]]:
    if context == "none":
        return [{"role": "user", "content": question}]
    where, kind = context.split("_", 1)
    text = texts[kind]
    if where == "sys":
        return [{"role": "system", "content": text}, {"role": "user", "content": question}]
    return [{"role": "user", "content": f"{text}\n\n{question}"}]


def mean_se(x: np.ndarray) -> tuple[float, float]:
    n = len(x)
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")


def run(args: argparse.Namespace) -> None:
    import jax

    from fst_jax.models import load
    from fst_jax.sampling import Sampler, SamplingParams
    from fst_jax.tasks import get_task

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config, params, tok = load(args.model)
    if args.init_from:  # weights of an fst-train checkpoint (e.g. an SFT run) on this model
        from fst_jax import checkpoint as ckpt_lib

        step = None if args.init_from_step < 0 else args.init_from_step
        params, meta = ckpt_lib.restore_params(
            args.init_from, ckpt_lib.abstract_like(params), step, keys=("train", "params")
        )
        print(f"params from {args.init_from} step {meta['step']}", flush=True)
    sampler = Sampler(config, tok)
    sp = SamplingParams(temperature=args.temperature, max_new_tokens=args.max_new_tokens)
    done = set()
    rows_path = out / "rows.jsonl"
    if rows_path.exists():
        for line in rows_path.open():
            r = json.loads(line)
            done.add((r["cell"], r["context"]))
    meta = {
        "model": args.model,
        "init_from": args.init_from,
        "init_from_step": args.init_from_step,
        "n": args.n,
        "samples": args.samples,
        "temperature": args.temperature,
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "batch": args.batch,
        "cells": args.cells,
        "contexts": args.contexts,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    for cell in args.cells.split(","):
        task_name, kw, _, _ = CELLS[cell]
        task = get_task(task_name, sizes={"validation": args.n, "train": 8, "test": 1}, **kw)
        lastnum = (
            get_task(
                task_name,
                sizes={"validation": args.n, "train": 8, "test": 1},
                **{**kw, "answer_format": "last_number"},
            )
            if task_name == "math"
            else None
        )
        exs = task.examples("validation")[: args.n]
        texts = context_texts(cell, task)
        (out / f"contexts_{cell}.json").write_text(json.dumps(texts, indent=1))
        for context in args.contexts.split(","):
            ci = CONTEXTS.index(context)  # the same keys whatever order contexts are given in
            if (cell, context) in done:
                continue
            t0 = time.time()
            rows = [(ex, k) for ex in exs for k in range(args.samples)]
            convs = [conversation(context, texts, ex.question) for ex, _ in rows]
            completions: list[str] = []
            for b in range(0, len(convs), args.batch):
                key = jax.random.fold_in(jax.random.PRNGKey(args.seed), ci * 100_000 + b)
                completions += sampler.generate_chat(params, convs[b : b + args.batch], sp, key)
            row_exs = [ex for ex, _ in rows]
            verdicts = task.verify_batch(row_exs, completions)
            extra = lastnum.verify_batch(row_exs, completions) if lastnum else [None] * len(rows)
            with rows_path.open("a") as f:
                for (ex, k), c, v, v2 in zip(rows, completions, verdicts, extra, strict=True):
                    row = {
                        "cell": cell,
                        "context": context,
                        "id": ex.id,
                        "sample": k,
                        "reward": v.reward,
                        "status": v.status,
                        "completion": c,
                    }
                    if v2 is not None:
                        row["reward_last_number"] = v2.reward
                    f.write(json.dumps(row) + "\n")
            r = np.array([v.reward for v in verdicts])
            m, se = mean_se(r)
            print(
                f"{cell:10s} {context:13s} reward {m:.3f} ± {se:.3f}  ({time.time() - t0:.0f} s)",
                flush=True,
            )
    summarize(out)


def summarize(out: Path) -> str:
    """README-ready markdown table from rows.jsonl: mean ± SE and paired effect vs sys_instr.

    With several rollouts per problem, each problem's mean is one observation (SE over
    problems, clustered), and effects are paired per problem.
    """
    rows = [json.loads(x) for x in (out / "rows.jsonl").open()]
    by: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for r in rows:
        by.setdefault((r["cell"], r["context"]), {}).setdefault(r["id"], []).append(r)

    def per_problem(rs: dict[str, list[dict]], ids: list[str], f) -> np.ndarray:
        return np.array([np.mean([f(r) for r in rs[i]]) for i in ids])

    reward = lambda r: r["reward"]  # noqa: E731
    boxed = lambda r: float("\\boxed{" in r["completion"])  # noqa: E731
    lines = [
        "| cell | context | rollouts (problems) | reward ± SE | effect vs sys_instr ± SE | "
        "\\boxed{} rate ± SE (Δ vs sys_instr) | math: last-number reward ± SE |",
        "|---|---|---|---|---|---|---|",
    ]
    summary = []
    for (cell, context), rs in sorted(
        by.items(), key=lambda kv: (kv[0][0], CONTEXTS.index(kv[0][1]))
    ):
        ids = sorted(rs)
        m, se = mean_se(per_problem(rs, ids, reward))
        bm, bse = mean_se(per_problem(rs, ids, boxed))
        base = by.get((cell, "sys_instr"), {})
        common = [i for i in ids if i in base]
        dm = dse = bdm = bdse = float("nan")
        eff, bfx = "—", ""
        if context != "sys_instr" and len(common) > 1:
            d = per_problem(rs, common, reward) - per_problem(base, common, reward)
            dm, dse = mean_se(d)
            z = dm / dse if dse > 0 else float("nan")
            eff = f"{dm:+.3f} ± {dse:.3f} (z={z:+.1f})" if dse > 0 else f"{dm:+.3f} ± 0"
            bd = per_problem(rs, common, boxed) - per_problem(base, common, boxed)
            bdm, bdse = mean_se(bd)
            bfx = f" (Δ {bdm:+.3f} ± {bdse:.3f})"
        ln = ""
        if "reward_last_number" in rs[ids[0]][0]:
            lm, lse = mean_se(per_problem(rs, ids, lambda r: r["reward_last_number"]))
            ln = f"{lm:.3f} ± {lse:.3f}"
        n_roll = sum(len(rs[i]) for i in ids)
        lines.append(
            f"| {cell} | {context} | {n_roll} ({len(ids)}) | {m:.3f} ± {se:.3f} | {eff} | "
            f"{bm:.3f} ± {bse:.3f}{bfx} | {ln} |"
        )
        summary.append(
            {"cell": cell, "context": context, "rollouts": n_roll, "problems": len(ids),
             "mean": m, "se": se, "effect": dm, "effect_se": dse, "boxed_rate": bm,
             "boxed_se": bse, "boxed_effect": bdm, "boxed_effect_se": bdse}
        )  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    print(table)
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="model spec or HF dir")
    ap.add_argument("--init_from", default="", help="fst-train workdir whose params to use")
    ap.add_argument("--init_from_step", type=int, default=-1, help="-1 = latest checkpoint")
    ap.add_argument("--out", default="experiments/results/context_effect/base")
    ap.add_argument("--cells", default=",".join(CELLS))
    ap.add_argument("--contexts", default=",".join(CONTEXTS))
    ap.add_argument("--n", type=int, default=128, help="validation problems")
    ap.add_argument("--samples", type=int, default=1, help="rollouts per problem")
    ap.add_argument("--batch", type=int, default=64, help="rows per sampler call (memory)")
    ap.add_argument("--max_new_tokens", type=int, default=96)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--summarize", default="", help="only rebuild the table of this out dir")
    args = ap.parse_args()
    if args.summarize:
        summarize(Path(args.summarize))
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run(args)


if __name__ == "__main__":
    main()
