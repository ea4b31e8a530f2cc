"""Issue 12: the method's knobs reachable from the config (point 9), task-stream schedule
(point 5), the answer-leak metric (point 8), and the bad-input checks at start."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from test_controller_e2e import load_config, tiny_config

from fst_jax import controller, evaluation, gepa, rl, run_setup, settings


def test_every_loss_gepa_and_train_field_is_a_config_key():
    c = load_config()
    for cls, node, aliases in (
        (rl.LossConfig, c.rl, settings.LOSS_ALIASES),
        (gepa.GepaConfig, c.gepa, settings.GEPA_ALIASES),
    ):
        for f in dataclasses.fields(cls):
            assert aliases.get(f.name, f.name) in node, (cls.__name__, f.name)
    for name in rl.list_advantages():
        for p in inspect.signature(rl.get_advantage(name)).parameters.values():
            if p.kind is inspect.Parameter.KEYWORD_ONLY:
                assert settings.ADVANTAGE_PREFIX + p.name in c.rl, (name, p.name)


def test_overrides_reach_the_built_settings():
    c = tiny_config()
    c.rl.clip_low, c.rl.eps_low, c.rl.eps_high, c.rl.kl_estimator = 0.5, 0.1, 0.3, "k1"
    c.rl.loss, c.rl.updates_per_batch, c.sampling.temperature = "gspo", 2, 0.7
    c.rl.advantage_std, c.rl.advantage_eps = "population", 1e-3
    c.gepa.acceptance, c.gepa.carry, c.gepa.candidate_selection = (
        "improvement_or_equal",
        "2",
        "current_best",
    )
    c.gepa.perfect_score, c.gepa.max_consecutive_skips = 0.9, 3
    r = settings.rl_config(c)
    assert (r.loss.name, r.loss.clip_low, r.loss.eps_low, r.loss.eps_high) == (
        "gspo",
        0.5,
        0.1,
        0.3,
    )
    assert (r.loss.kl_estimator, r.updates_per_batch, r.temperature) == ("k1", 2, 0.7)
    assert settings.advantage_kwargs(c.rl, "grpo") == {
        "eps": 1e-3,
        "std": "population",
        "scale": True,
    }
    assert settings.advantage_kwargs(c.rl, "rloo") == {}
    g = settings.gepa_config(c.gepa)
    assert (g.acceptance, g.carry, g.candidate_selection) == (
        "improvement_or_equal",
        2,
        "current_best",
    )
    assert (g.perfect_score, g.max_consecutive_skips, g.minibatch_size) == (
        0.9,
        3,
        c.gepa.minibatch,
    )
    c.rl.clip_low = 0.0  # 0 = no lower clip (None)
    assert settings.rl_config(c).loss.clip_low is None
    c.mode = "fst_distill"
    assert settings.rl_config(c).loss.name == "fst_distill"


def test_a_field_without_a_config_key_is_an_error_naming_the_key():
    c = tiny_config()
    del c.gepa["max_rollout_chars"]  # ml_collections: remove a key to simulate a missing one
    with pytest.raises(
        run_setup.ConfigError, match=r"GepaConfig.max_rollout_chars.*config.gepa.max_rollout_chars"
    ):
        settings.gepa_config(c.gepa)


def test_stream_stages_are_exactly_switch_every_steps():
    c = load_config()
    c.task.stream, c.task.switch_every, c.rl.steps_per_cycle = "a,b,c", 200, 6
    n = controller.stream_cycles(c)
    assert n == 3 * 34
    steps: dict[str, int] = {}
    order = []
    for cycle in range(n):
        task, k = controller.cycle_plan(c, cycle)
        assert 1 <= k <= 6
        steps[task] = steps.get(task, 0) + k
        if not order or order[-1] != task:
            order.append(task)
    assert steps == {"a": 200, "b": 200, "c": 200} and order == ["a", "b", "c"]
    with pytest.raises(run_setup.ConfigError, match="num_cycles=102"):
        controller.cycle_plan(c, n)


def test_answer_leak_hand_checked():
    ctxs = ["Remember: f(7, 0) = 1234. Always double check.", "Path 3,14,15 is common."]
    golds = ["1234", "123", "3,14,15", "A", None, "99999"]
    leak, checked = evaluation.answer_leak(ctxs, golds)
    # 1234 yes; 123 no (inside 1234); 3,14,15 yes; A and None too short; 99999 no.
    assert (leak, checked) == (2 / 6, 4 / 6)
    assert evaluation.answer_leak(ctxs, []) == (0.0, 0.0)
    assert evaluation.answer_leak(["the answer is A"], ["A"], min_chars=1) == (1.0, 1.0)


@pytest.mark.parametrize(
    "edit, match",
    [
        (
            {"task.stream": "ctl_parity,math", "task.switch_every": 3},
            r"\(num_cycles=2\): set --config.num_cycles=4",
        ),
        (
            {"gepa.anchors": "heldout"},
            r"unknown GEPA anchor source \(gepa.anchors='heldout'\).*lookahead, disjoint",
        ),
        ({"gepa.anchors": "disjoint", "gepa.disjoint_size": 2}, r"\(gepa.disjoint_size=2\): use 0"),
        (
            {"rl.updates_per_batch": 3},
            r"divide rl.batch_size=2.*\(rl.updates_per_batch=3\)",
        ),
        ({"rl.clip_low": 5.0}, r"config.rl: Need 0 <= clip_low < tau"),
        ({"rl.kl_estimator": "k9"}, "k1, k2 or k3"),
        ({"rl.loss": "gsp"}, r"unknown RL loss \(rl.loss='gsp'\): did you mean 'gspo'"),
        ({"rl.advantage": "grpoo"}, "unknown advantage estimator"),
        ({"gepa.acceptance": "maybe"}, "acceptance"),
        ({"gepa.carry": "some"}, "carry"),
        ({"gepa.max_consecutive_skips": -1}, "max_consecutive_skips"),
        ({"sampling.temperature": 0.0}, "temperature"),
        ({"gepa.k": 8}, "gepa.k=8 contexts must divide rl.group_size=4"),  # K > G
    ],
)
def test_bad_method_configs_fail_at_start_naming_key_value_and_fix(edit, match):
    c = tiny_config()
    for key, value in edit.items():
        node, leaf = key.split(".")
        c[node][leaf] = value
    with pytest.raises(run_setup.ConfigError, match=match):
        run_setup.validate_config(c, 1)


def test_budget_warning_when_fewer_than_three_iterations_fit():
    assert gepa.round.budget_warning(960, 192, 3) is None  # paper: 4 worst-case iterations
    msg = gepa.round.budget_warning(16, 4, 3)
    assert "pays for only 1" in msg and "raise gepa.budget to >= 30" in msg
    msg = gepa.round.budget_warning(960, 192, 3, rescore_calls=768)
    assert "pays for only 0" in msg and "after 768 re-scoring calls" in msg
