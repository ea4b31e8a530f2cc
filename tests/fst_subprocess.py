"""Shared by the tests that run the real `fst-train` app in subprocesses on the tiny model."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Registers the controller tests' `ctl_parity` task (tests/test_controller_e2e.py) in the child,
# then runs the real app.
BOOT = (
    "import sys; sys.path.insert(0, {tests!r}); import test_controller_e2e; "
    "from fst_jax.main import run; sys.argv[0] = 'fst-train'; run()"
).format(tests=str(REPO / "tests"))


def tiny_flags(num_cycles: int, *extra: str) -> list[str]:
    """`fst-train` flags for a seconds-long tiny-model run (2 RL steps per cycle)."""
    return [
        "--config.model.spec=random:tiny_llama",
        "--config.task.name=ctl_parity",
        f"--config.num_cycles={num_cycles}",
        "--config.rl.steps_per_cycle=2",
        "--config.rl.batch_size=2",
        "--config.rl.group_size=4",
        "--config.rl.lr=0.01",
        "--config.rl.warmup_steps=1",
        "--config.gepa.k=2",
        "--config.gepa.budget=12",
        "--config.gepa.anchor_size=4",
        "--config.gepa.max_pool=6",
        "--config.sampling.max_new_tokens=6",
        "--config.sampling.max_context_len=96",
        "--config.eval.num_examples=2",
        "--config.eval.kl_examples=2",
        "--config.eval.every_cycles=1",
        "--config.summary=False",
        *extra,
    ]
