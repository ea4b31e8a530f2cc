"""The `rule` reflection LM: parsed by the real Reflector, reads only its request, deterministic."""

from __future__ import annotations

import json

import pytest

from fst_jax import gepa
from fst_jax.gepa import PopulationState, Reflector, render_meta_prompt
from fst_jax.gepa.lm import ReflectionLMError
from fst_jax.gepa.rule_lm import EXAMPLE_HEADER, format_rule, parse_request, propose
from fst_jax.tasks import base as task_base

SEED = "Solve the problem."


def math_records(tag: str, n: int = 3) -> list[dict[str, str]]:
    """Records with the math task's exact feedback wording (tasks/math.py), unique per `tag`."""
    fbs = [
        "No \\boxed{{}} answer found; put the final answer within \\boxed{{}}. "
        "The correct answer is {g}.",
        "Your final number 7 is incorrect (put the final answer within \\boxed{{}}). "
        "The correct answer is {g}.",
        "Your answer 3 is incorrect. The correct answer is {g}. Reference solution: add {tag}.",
    ]
    return [
        {
            "Inputs": f"Problem {tag}-{i}: what is {i} + {tag}?",
            "Generated Outputs": f"I think it is 7 ({tag})",
            "Feedback": fbs[i % len(fbs)].format(g=f"G{tag}{i}", tag=tag),
        }
        for i in range(n)
    ]


def _propose(records, parent=SEED, salt=""):
    lm = gepa.get_reflection_lm("rule")
    state = PopulationState.new([parent], seed=0)
    return Reflector(lm).propose(state, parent, records, salt=salt), lm


def test_reply_parses_through_the_reflector_with_rule_and_example():
    out, lm = _propose(math_records("A"))
    assert out.skip_reason is None and out.attempts == 1, out
    text = out.text
    assert text.startswith(SEED + "\n\n")
    assert "Put the final answer within \\boxed{}." in text  # copied from the feedback
    ex = text.split(f"{EXAMPLE_HEADER}\n")[1].splitlines()
    i = [r["Inputs"] for r in math_records("A")].index(ex[0].removeprefix("Problem: "))
    assert ex[-1] == f"Answer: \\boxed{{GA{i}}}"  # the gold that record's feedback revealed
    assert lm.usage["requests"] == 1 and lm.fingerprint() == "rule:v1"


def test_uses_only_text_present_in_the_request():
    marker = "ZQX-unique-7731"
    records = math_records(marker)
    prompt = render_meta_prompt(SEED, records)
    text = propose(prompt)
    scaffold = (EXAMPLE_HEADER, "Problem: ", "Solution: ", "Answer: ")
    for line in text.splitlines():
        body = line
        for s in scaffold:
            body = body.removeprefix(s)
        if body.startswith("\\boxed{") and body.endswith("}"):
            body = body[len("\\boxed{") : -1]
        # (a rule is the feedback's clause, capitalised and ended with a full stop)
        assert body == "" or body.lower().rstrip(".") in prompt.lower(), line
    assert marker in text  # the example is one of this request's problems
    other = propose(render_meta_prompt(SEED, math_records("B")))
    assert marker not in other and "GB" in other


def test_deterministic_and_varies_with_the_request():
    prompts = [render_meta_prompt(SEED, math_records(t, 5)) for t in "PQRSTUVW"]
    assert [propose(p) for p in prompts] == [propose(p) for p in prompts]
    # Which record becomes the example depends on the request (hash), not always the first.
    picked = {propose(p).split("Problem: Problem ")[1].split(":")[0][2:] for p in prompts}
    assert len(picked) >= 2, picked


def test_swaps_its_own_example_instead_of_growing():
    first = propose(render_meta_prompt(SEED, math_records("C")))
    second = propose(render_meta_prompt(first, math_records("D")))
    assert second.count(EXAMPLE_HEADER) == 1 and "GD" in second and "GC" not in second
    assert second.count("Put the final answer within") == 1  # rule kept, not repeated
    # A word that merely ends in the rule's first word does not state the rule.
    out = propose(
        render_meta_prompt("Output the final answer within \\boxed{}.", math_records("F"))
    )
    assert "Put the final answer within \\boxed{}." in out


def test_nothing_to_add_is_a_counted_skip():
    records = [{"Inputs": "q", "Generated Outputs": "a", "Feedback": "Correct output."}]
    out, _ = _propose(records)
    assert out.text is None and out.skip_reason == "lm_nothing_to_add"
    with pytest.raises(ReflectionLMError, match="no such structure") as e:
        gepa.get_reflection_lm("rule").complete([{"role": "user", "content": "improve this"}])
    assert e.value.reason == "unparsable_prompt"


def test_parse_request_ignores_example_headers_inside_outputs():
    records = math_records("E", 2)
    records[0]["Generated Outputs"] = (
        "# Example 9\n## Inputs\nfake\n## Feedback\nThe correct answer is X."
    )
    req = parse_request(render_meta_prompt("Ctx with ``` fence ``` inside", records))
    assert req.current == "Ctx with ``` fence ``` inside"
    assert [r.problem for r in req.records] == [r["Inputs"] for r in records]
    assert req.records[1].feedback == records[1]["Feedback"]


def test_format_rule_from_other_tasks_feedback():
    star = "No \\boxed{} answer found; put the path in \\boxed{}. The correct path is 1,2,3."
    codeio = 'Fail to extract a complete and valid json from the output! (x) Answer with one JSON object like {"output": ...}.'  # fmt: skip
    assert format_rule([star]) == "Put the path in \\boxed{}."
    assert format_rule([codeio]) == 'Answer with one JSON object like {"output": ...}.'
    assert format_rule(["Your answer 3 is incorrect. The correct answer is 4."]) is None


class GoldParity(task_base.Task):
    """Reward = parity of the first character (a random policy scores ~1/2, so minibatch scores
    vary), feedback in the math task's wording with a gold answer the rule LM can copy."""

    name = "rule_lm_parity"
    seed_prompt = "Reply with one word."

    def __init__(self, **kwargs):
        super().__init__()

    def _load_split(self, split):
        lo = {"train": 0, "validation": 1000, "test": 2000}[split]
        n = 24 if split == "train" else 4
        return [task_base.Example(f"{split}-{i}", f"Add {lo + i} and 1.", str(lo + i + 1), {})
                for i in range(n)]  # fmt: skip

    def _verify(self, example, completion):
        ok = bool(completion) and ord(completion[0]) % 2 == 0
        if ok:
            return task_base.Verdict(1.0, "correct", f"Your answer {example.gold} is correct.")
        return task_base.Verdict(0.0, "incorrect", "No \\boxed{} answer found; put the final "
                                 f"answer within \\boxed{{}}. The correct answer is {example.gold}.")  # fmt: skip


if GoldParity.name not in task_base.list_tasks():
    task_base.register_task(GoldParity.name)(GoldParity)


@pytest.mark.slow
def test_tiny_fst_run_with_rule_reflection_accepts_a_candidate(tmp_path):
    from test_controller_e2e import tiny_config

    from fst_jax import controller, metrics

    c = tiny_config("fst")
    c.task.name = GoldParity.name
    c.gepa.reflection_lm = "rule"
    c.gepa.budget, c.num_cycles = 24, 2
    c.sampling.max_context_len = 160
    summary = controller.Controller(c, tmp_path).run()
    recs = [json.loads(x) for x in (tmp_path / metrics.METRICS_FILE).read_text().splitlines()]
    accepted = sum(r.get("gepa/accepted", 0) for r in recs)
    assert accepted >= 1, [{k: v for k, v in r.items() if k.startswith("gepa/")} for r in recs]
    log = (tmp_path / "gepa_log.jsonl").read_text()
    assert EXAMPLE_HEADER in log  # the candidates GEPA logged include rule-written contexts
    assert summary["steps"] == 4
