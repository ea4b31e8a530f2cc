"""experiments/study.py's manifest merge: rerunning arms with other seeds adds, never drops."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _study_script():
    spec = importlib.util.spec_from_file_location("study_script", REPO / "experiments/study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _manifest(command: str, seeds: list[int], arms: dict[str, str]) -> dict:
    return {
        "command": command,
        "seeds": seeds,
        "arms": {
            name: {
                "kind": "main",
                "mode": mode,
                "reflection_lm": None,
                "workdirs": {str(s): f"runs/{name}/seed{s}" for s in seeds},
            }
            for name, mode in arms.items()
        },
    }


def test_rerun_with_other_seeds_keeps_the_earlier_seeds_of_each_arm():
    merge = _study_script().merge_manifest
    first = _manifest("first", [0], {"rl": "rl", "fst_local": "fst"})
    second = _manifest("second", [1], {"fst_local": "fst", "gepa_local": "gepa"})
    m = merge(first, second)
    assert m["command"] == "second"  # the latest invocation's settings
    assert m["arms"]["fst_local"]["workdirs"] == {
        "0": "runs/fst_local/seed0",
        "1": "runs/fst_local/seed1",
    }
    assert m["arms"]["rl"]["workdirs"] == {"0": "runs/rl/seed0"}  # arm not rerun: kept as is
    assert m["arms"]["gepa_local"]["workdirs"] == {"1": "runs/gepa_local/seed1"}
    assert m["seeds"] == [0, 1]  # the union over arms, not the last invocation's
    # the inputs are not modified (the caller writes the merged manifest, not the old one)
    assert first["arms"]["fst_local"]["workdirs"] == {"0": "runs/fst_local/seed0"}


def test_a_run_without_star_arms_keeps_the_star_settings_of_the_star_runs():
    merge = _study_script().merge_manifest
    star = _manifest("star", [0], {"star_rl": "rl"})
    star["arms"]["star_rl"]["kind"] = "star"
    star.update(star_size="tiny", star_overrides=["--config.sampling.max_context_len=384"])
    main = _manifest("main", [1], {"fst_local": "fst"})
    main.update(star_size="medium", star_overrides=[])  # argparse defaults of a non-star run
    m = merge(star, main)
    assert m["star_size"] == "tiny"
    assert m["star_overrides"] == ["--config.sampling.max_context_len=384"]
    again = _manifest("star2", [1], {"star_rl": "rl"})
    again["arms"]["star_rl"]["kind"] = "star"
    again.update(star_size="easy", star_overrides=[])
    assert merge(m, again)["star_size"] == "easy"  # a new star run's settings win


def test_same_seeds_again_is_idempotent_and_seeds_sort_numerically():
    merge = _study_script().merge_manifest
    a = _manifest("a", [10, 2], {"rl": "rl"})
    m = merge(merge(a, a), _manifest("b", [2], {"rl": "rl"}))
    assert list(m["arms"]["rl"]["workdirs"]) == ["2", "10"]
    assert m["seeds"] == [2, 10]
