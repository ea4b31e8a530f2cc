"""gepa_log.jsonl: rows agree with the round's report, and a resumed run's log equals the
uninterrupted run's byte for byte (cut back to the offset stored in the checkpoint)."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from test_controller_e2e import tiny_config
from test_workdir_uri import fake_gs  # noqa: F401 - the fake gs:// store fixture

from fst_jax import controller, gepa, metrics
from fst_jax.analysis import report
from fst_jax.gepa import lineage


class HashLM:
    """Reflection LM whose reply depends only on the conversation (replays identically)."""

    def __call__(self, conversations):
        out = []
        for conv in conversations:
            h = hashlib.sha256(json.dumps(conv, sort_keys=True).encode()).hexdigest()[:6]
            out.append(f"```\nReply with one word. Tip {h}.\n```")
        return out


def _run(workdir, cycles=3):
    c = tiny_config("fst")
    c.num_cycles, c.rl.steps_per_cycle, c.gepa.budget = cycles, 1, 22
    c.eval.every_cycles, c.checkpoint.every_cycles, c.checkpoint.keep = 1, 1, 5
    c.summary = False
    lm = gepa.get_reflection_lm("local", generate=HashLM())
    return controller.Controller(c, workdir, reflection_lm=lm)


@pytest.mark.slow
def test_log_rows_and_exact_resume(tmp_path):
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    ref = _run(ref_dir)
    ref.run()
    log = lineage.read_gepa_log(ref_dir)
    rounds = [r for r in log if r["kind"] == "round"]
    its = [r for r in log if r["kind"] == "iteration"]
    assert [r["cycle"] for r in rounds] == [0, 1, 2]
    assert len(its) == ref.population.counters["iterations"]
    # Accepted rows name a pool member with that text; rejected ones hash a text not kept.
    for r in its:
        assert r["decision"] in ("accepted", "rejected", "skipped_perfect", "skipped_lm")
        assert r["calls"] >= len(r["minibatch"]) and r["reason"]
        if r["decision"] == "accepted":
            cand = ref.population.candidates[r["child"]]
            assert (
                r["child_hash"]
                == lineage.text_hash(cand.text)
                == lineage.text_hash(r["child_text"])
            )
            assert r["child_parents"] == [r["parent"]] and r["child_sum"] > r["parent_sum"]
        if r["decision"] == "rejected":
            assert r["child"] is None and r["child_sum"] <= r["parent_sum"]
            assert r["child_hash"] not in {
                lineage.text_hash(c.text) for c in ref.population.candidates
            }
    last = rounds[-1]
    assert [e["text"] for e in last["exported"]] == ref.exported
    assert last["seeds"][0]["text"] == "Reply with one word."
    usage = sum(r["usage"]["requests"] for r in rounds)
    assert usage == ref.population.counters.get("lm_requests", 0)

    # A run that died after cycle 2's GEPA round was logged but before its checkpoint: copy the
    # finished run and drop its last checkpoint (step 3); resuming must redo cycle 2 exactly.
    shutil.copytree(ref_dir, cut_dir)
    shutil.rmtree(cut_dir / "checkpoints" / "3")
    before = (cut_dir / lineage.GEPA_LOG_FILE).read_bytes()
    _run(cut_dir).run()
    after = (cut_dir / lineage.GEPA_LOG_FILE).read_bytes()
    assert after == (ref_dir / lineage.GEPA_LOG_FILE).read_bytes() == before
    a = metrics.comparable_records(metrics.read_metrics(ref_dir))
    b = metrics.comparable_records(metrics.read_metrics(cut_dir))
    assert a == b


def test_truncate_handles_checkpoints_from_before_the_log(tmp_path):
    path = Path(tmp_path, lineage.GEPA_LOG_FILE)
    path.write_text('{"kind": "round"}\n{"kind": "round"}\n')
    lineage.truncate(tmp_path, 18)
    assert path.read_text() == '{"kind": "round"}\n'
    lineage.truncate(tmp_path, None)  # checkpoint without gepa_log_offset: nothing predates it
    assert path.read_text() == ""
    with pytest.raises(ValueError, match="recorded 99"):
        lineage.truncate(tmp_path, 99)
    path.write_text("not json\n")
    with pytest.raises(ValueError, match="not valid JSON"):
        lineage.read_gepa_log(tmp_path)
    assert lineage.read_gepa_log(tmp_path / "absent") == []


def test_log_and_report_on_a_uri_workdir(fake_gs):  # noqa: F811 - the imported fixture
    """A gs:// workdir: the log is uploaded per round, cut back on resume, and fst-report reads
    the run and writes its HTML and PNGs into the store."""
    run, out = "gs://bucket/runs/fst_uri", "gs://bucket/reports/r1"
    seed = {"id": 0, "hash": lineage.text_hash("Be brief."), "text": "Be brief."}
    rows = [{"kind": "round", "cycle": c, "step": 2 * c, "budget": 10, "calls_used": 6,
             "total_calls": 10, "rescore_calls": 4, "rescored": [0], "iterations": 1,
             "accepted": 0, "rejected": 1, "skipped_perfect": 0, "skipped_lm": 0,
             "pool_size": 1, "front": [0], "best_mean": 0.5, "front_mean": 0.5,
             "anchor_means": {"0": 0.5}, "seeds": [seed],
             "exported": [{**seed, "mean_score": 0.5, "on_front": True}],
             "usage": {"requests": 1}} for c in range(3)]  # fmt: skip
    log = lineage.GepaLog(run)
    log.write(rows[:1])
    assert len(fake_gs.cat(f"{run}/{lineage.GEPA_LOG_FILE}").splitlines()) == 1  # uploaded
    log.write(rows[1:2])
    offset = log.offset()
    log.write(rows[2:])
    log.close()
    lineage.truncate(run, offset)
    assert [r["cycle"] for r in lineage.read_gepa_log(run)] == [0, 1]
    with metrics.MetricsWriter(run, enabled=True, tensorboard=False) as w:
        w.write(0, {"run/mode": "fst", "run/config": json.dumps({"mode": "fst", "seed": 3})})
        for s in range(4):
            w.write(s, {"val/mean@4": 0.1 * s, "val/kl_to_base": 0.01 * s})
    data = report.build_report([run], out, bootstrap=0)
    assert data["sections"]["kl_vs_reward"]["data"]["fst"]["reward"] == pytest.approx(
        [0, 0.1, 0.2, 0.3]
    )
    assert data["sections"]["runs"]["data"]["fst"][0]["seed"] == 3
    assert fake_gs.cat(f"{out}/kl_vs_reward.png")[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<html" in fake_gs.cat(f"{out}/index.html")
    assert data["sections"]["gepa"]["data"]["fst_uri"]["usage"]["requests"] == 2
