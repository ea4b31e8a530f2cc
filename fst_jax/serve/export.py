"""``fst-export``: a checkpoint of an fst-train run → an HF safetensors dir plus its contexts.

    fst-export --workdir=runs/fst-default --out=exported/        # latest step
    fst-export --workdir=gs://bucket/runs/codeio --step=600 --out=/tmp/codeio-600

The output is what `transformers.AutoModelForCausalLM.from_pretrained(out)` and
`AutoTokenizer.from_pretrained(out)` load (config.json, model.safetensors, tokenizer files with
the chat template), plus ``contexts.json``: the run's exported top-K contexts, best first, with
their population ids, anchor mean scores, front coverage and the run/step they come from. It is
also what ``fst-serve --model=OUT`` serves, one model name per context.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from fst_jax.serve.runs import CONTEXTS_FILE, RunError, ServedModel, load_run


def write_contexts(path: str, model: ServedModel, workdir: str = "") -> str:
    """contexts.json next to the weights: what to put in the system turn, and how good it was."""
    doc: dict[str, Any] = {
        "run": model.name.split("@")[0],
        "step": model.step,
        "workdir": str(workdir),
        "usage": "each context is a system prompt; index 0 scored best on the run's anchor set",
        "contexts": model.contexts,
    }
    out = os.path.join(path, CONTEXTS_FILE)
    with open(out, "w") as f:
        json.dump(doc, f, indent=2, ensure_ascii=False)
    return out


def export_run(
    workdir: str, out: str, step: int | None = None, *, dtype: str | None = None
) -> ServedModel:
    """Writes step `step` (default latest) of `workdir` to `out`; returns what was exported."""
    from fst_jax.models import save_hf

    if os.path.exists(out) and not os.path.isdir(out):
        raise RunError(f"--out={out} exists and is not a directory; pick a directory path")
    model = load_run(workdir, step)
    save_hf(out, model.config, model.params, model.tokenizer, dtype=dtype)
    write_contexts(out, model, workdir)
    return model


def main(argv: list[str]) -> None:
    from absl import flags

    f = flags.FLAGS
    if len(argv) > 1:
        raise SystemExit(f"fst-export: unexpected arguments {argv[1:]}; use --flag=value forms")
    if not f.workdir or not f.out:
        raise SystemExit("fst-export: pass --workdir=RUN_DIR and --out=EXPORT_DIR")
    try:
        model = export_run(f.workdir, f.out, None if f.step < 0 else f.step, dtype=f.dtype)
    except RunError as e:
        print(f"fst-export: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(
        f"fst-export: {model.name} ({model.config.name}, {model.config.num_params / 1e6:.1f}M "
        f"params) -> {f.out} with {len(model.contexts)} contexts in {CONTEXTS_FILE}",
        flush=True,
    )


def run() -> None:
    """Console-script entry point (setup.py: fst-export = fst_jax.serve.export:run)."""
    from absl import app, flags

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    flags.DEFINE_string("workdir", None, "fst-train run directory (local path or URI).")
    flags.DEFINE_integer("step", -1, "Checkpoint step to export (default: the latest).")
    flags.DEFINE_string("out", None, "Output directory (HF safetensors + contexts.json).")
    flags.DEFINE_string("dtype", None, "Stored dtype (default: the run's param_dtype).")
    app.run(main)


if __name__ == "__main__":
    run()
