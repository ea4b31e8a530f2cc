"""Meta-prompt rendering and reply extraction, checked against the `gepa` package's own versions."""

from __future__ import annotations

import pytest
from gepa.strategies.instruction_proposal import InstructionProposalSignature

from fst_jax.gepa import (
    PopulationState,
    Reflector,
    extract_context,
    load_template,
    render_meta_prompt,
)
from fst_jax.gepa.reflection import LocalReflectionLM, render_records

RECORDS = [
    {"Inputs": "What is 2+2?", "Generated Outputs": "5", "Feedback": "expected 4"},
    {"Inputs": {"x": 1, "y": [1, 2]}, "Generated Outputs": "ok", "Feedback": "correct"},
]


def test_records_render_like_gepa():
    # gepa renders the same Markdown inside its own template; cut it out and compare.
    g = InstructionProposalSignature.prompt_renderer(
        {
            "current_instruction_doc": "CUR",
            "dataset_with_feedback": RECORDS,
            "prompt_template": "<curr_param>|<side_info>",
        }
    )
    assert g == "CUR|" + render_records(RECORDS)


def test_meta_prompt_structure_and_modes():
    p = render_meta_prompt("Be exact.", RECORDS)
    assert (
        p.index("Be exact.")
        < p.index("# Example 1")
        < p.index("# Example 2")
        < p.index("inside one ``` block")
    )
    assert "## Feedback\nexpected 4" in p and "incremental" in p and "<side_info>" not in p
    r = render_meta_prompt("Be exact.", RECORDS, edit_mode="rewrite")
    assert "from scratch" in r and "incremental" not in r
    # Text inside the examples is never treated as a placeholder.
    tricky = [{"Inputs": "<curr_param> <edit_request>", "Generated Outputs": "", "Feedback": ""}]
    assert "<curr_param> <edit_request>" in render_meta_prompt("C", tricky)
    with pytest.raises(ValueError, match="edit_mode"):
        render_meta_prompt("C", RECORDS, edit_mode="shuffle")


def test_custom_template_must_have_placeholders(tmp_path):
    bad = tmp_path / "t.md"
    bad.write_text("Improve: <curr_param>")
    with pytest.raises(ValueError, match="lacks placeholder"):
        load_template(str(bad))
    good = tmp_path / "g.md"
    good.write_text("A <curr_param> B <side_info> C <edit_request>")
    assert render_meta_prompt("X", RECORDS, template=load_template(str(good))).startswith(
        "A X B # Example 1"
    )


@pytest.mark.parametrize(
    "reply",
    [
        "Sure!\n```\nNew context.\n```",
        "```markdown\nNew context.\n```\nDone.",
        "```text\nStep 1.\n```python\nprint(1)\n```\nEnd.\n```",
        "no fences at all",
        "```\nunclosed context",
        "context then closing fence```",
        "<think>```draft```</think>```\nFinal.\n```",
        "   ",
    ],
)
def test_extraction_agrees_with_gepa_where_fenced(reply):
    ours, fault = extract_context(reply)
    theirs = InstructionProposalSignature.output_extractor(
        reply.replace("<think>```draft```</think>", "")
    )
    if reply.count("```") >= 2 and "<think>" not in reply:
        assert ours == theirs["new_instruction"] and fault is None
    elif "<think>" in reply:
        assert ours == "Final." and fault is None
    elif not reply.strip():
        assert (ours, fault) == (None, "empty")
    else:  # strict mode refuses unfenced replies; lenient mode falls back like gepa
        assert (ours, fault) == (None, "unfenced")
        lenient, fault2 = extract_context(reply, require_fence=False)
        assert fault2 is None and lenient == theirs["new_instruction"]


def test_reflector_validation_and_counters():
    with pytest.raises(ValueError, match="needs a reflection LM"):
        Reflector(None)
    with pytest.raises(ValueError, match="edit_mode"):
        Reflector(LocalReflectionLM(lambda c: ["x"]), edit_mode="shuffle")
    bad = LocalReflectionLM(lambda convs: ["a", "b"])
    with pytest.raises(TypeError, match="one reply per conversation"):
        Reflector(bad).propose(PopulationState.new(["p"]), "p", RECORDS)
    state = PopulationState.new(["p"])
    replies = iter(["```\np\n```", "```\nq\n```"])
    lm = LocalReflectionLM(lambda convs: [next(replies)])
    out = Reflector(lm, content_retries=1).propose(state, "p", RECORDS, salt="i0")
    assert (
        out.text == "q" and out.attempts == 2 and out.raw_replies == ("```\np\n```", "```\nq\n```")
    )
    assert state.counters["lm_requests"] == 2 and len(state.lm_cache) == 2
