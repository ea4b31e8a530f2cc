"""fst_jax.distributed: 2 real local processes (gloo) checked against numpy, plus argument errors."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from fst_jax import distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(REPO, "launch", "local.py")

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    from fst_jax import distributed
    from fst_jax.rows import RowShardedTask, gather_rows, row_blocks, rows_of
    info = distributed.maybe_initialize()          # from the launcher's FST_* environment
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    rank = jax.process_index()
    out = {"info": [info.initialized, info.process_id, info.num_processes, info.how],
           "main": distributed.is_main_process(), "devices": jax.device_count()}

    # Process 0's object reaches everyone; the other ranks' argument is ignored.
    obj = {"prompt": "Think step by step. " * 50, "seed": 1234, "ids": list(range(7))}
    out["bcast"] = distributed.broadcast_from_main(obj if rank == 0 else {"junk": rank})

    distributed.assert_same_across_processes(("round", 3), "GEPA round id")
    try:
        distributed.assert_same_across_processes(rank, "a rank-dependent value")
        out["lockstep_error"] = None
    except RuntimeError as e:
        out["lockstep_error"] = str(e)

    mesh = Mesh(np.array(jax.devices()), ("batch",))
    sh = NamedSharding(mesh, P("batch"))
    global_rows, width = 8, 3
    full = np.arange(global_rows * width, dtype=np.float32).reshape(global_rows, width)
    start, stop = distributed.local_row_range(sh, full.shape)
    out["rows"] = [start, stop]
    local = {"x": full[start:stop], "m": (full[start:stop] > 5).astype(np.int32)}
    g = distributed.global_batch_from_local(local, sh, global_rows)
    total_fn = jax.jit(lambda t: (t["x"] * t["m"]).sum(), out_shardings=NamedSharding(mesh, P()))
    total = total_fn(g)
    out["sum"] = float(total)
    doubled = jax.jit(lambda x: 2 * x, out_shardings=sh)(g["x"])
    out["local_doubled"] = distributed.host_local_rows(doubled).tolist()
    out["gathered"] = np.asarray(distributed.gather_to_all(doubled)).tolist()
    out["per_rank"] = np.asarray(distributed.gather_to_all(np.array([rank * 10.0]))).tolist()
    # Identical host data on every process -> global arrays; a jitted fn with in_shardings.
    g2 = distributed.host_to_global({"x": full, "m": (full > 5).astype(np.int32)}, sh)
    out["sum_replicated_host"] = float(total_fn(g2))
    double = jax.jit(lambda x: 2 * x, in_shardings=sh, out_shardings=sh)
    out["wrapped"] = np.asarray(
        distributed.with_global_inputs(double, sh, gather_outputs=True)(full)
    ).tolist()
    try:
        distributed.global_batch_from_local({"x": full[:1]}, sh, global_rows)
        out["rows_error"] = None
    except ValueError as e:
        out["rows_error"] = str(e)

    # Per-host rows: row_blocks splits a 10-row batch into 4 blocks (2 per process); each
    # process verifies only its rows; texts/verdicts/arrays come back whole everywhere.
    plan = row_blocks(10, sh)
    out["blocks"] = [plan.num_blocks, plan.chunk, plan.lo, plan.hi]
    out["objects"] = distributed.allgather_objects({"rank": rank, "text": "é" * (rank + 1)})
    mine = list(range(plan.lo, plan.hi))
    g = gather_rows(
        {"t": [f"row{i}" for i in mine], "x": np.asarray(mine, np.float32)[:, None] * [1, -1]},
        plan.lo, plan.hi, 10,
    )
    out["gathered_rows"] = [g["t"], g["x"].tolist()]

    class Recorder:
        calls = []

        def verify_batch(self, examples, completions):
            self.calls.append(list(examples))
            return [{"ex": e, "len": len(c)} for e, c in zip(examples, completions)]

    task = RowShardedTask(Recorder(), sh)
    out["verdicts"] = task.verify_batch([f"ex{i}" for i in range(10)], ["y" * i for i in range(10)])
    out["verify_calls"] = Recorder.calls
    # Blocks replicated across processes (the second mesh axis pairs devices of both processes):
    # both own every row; the gather keeps one copy of each.
    cross = Mesh(np.array(jax.devices()).reshape(2, 2).T, ("batch", "rep"))
    xsh = NamedSharding(cross, P("batch"))
    xplan = row_blocks(5, xsh)
    out["replica_rows"] = [xplan.lo, xplan.hi]
    out["replica_gather"] = gather_rows(
        {"t": [f"r{i}" for i in range(xplan.lo, xplan.hi)]}, xplan.lo, xplan.hi, 5)["t"]
    mesh2 = Mesh(np.array(jax.devices()).reshape(2, 2), ("a", "b"))
    rows_only = jax.jit(lambda x: 3 * x, out_shardings=NamedSharding(mesh2, P("a")))(g2["x"])
    out["rows_of"] = rows_of(rows_only, 4 * rank + 1, 4 * rank + 3).tolist()
    split = jax.jit(lambda x: 3 * x, out_shardings=NamedSharding(mesh2, P("a", "b")))(
        np.ones((8, 4), np.float32))
    try:
        rows_of(split, 0, 2)
        out["rows_of_error"] = None
    except ValueError as e:
        out["rows_of_error"] = str(e)

    distributed.sync_barrier("before_write")
    with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
        json.dump(out, f)
    distributed.sync_barrier("after_write")
    distributed.shutdown()
    """
)


@pytest.mark.slow
def test_two_processes_gloo(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cmd = [
        sys.executable,
        LAUNCHER,
        "--num_processes=2",
        "--devices_per_process=2",
        "--timeout_s=240",
        "--",
        sys.executable,
        str(script),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[rank 1]" in proc.stdout or "all 2 ranks finished OK" in proc.stdout
    res = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    full = np.arange(24, dtype=np.float32).reshape(8, 3)
    expected_obj = {"prompt": "Think step by step. " * 50, "seed": 1234, "ids": list(range(7))}
    for r, out in enumerate(res):
        assert out["info"] == [True, r, 2, "env"]
        assert out["main"] == (r == 0)
        assert out["devices"] == 4
        assert out["bcast"] == expected_obj
        assert "disagree with process 0 on a rank-dependent value" in out["lockstep_error"]
        assert out["rows"] == [4 * r, 4 * r + 4]
        assert out["sum"] == pytest.approx(float((full * (full > 5)).sum()))
        np.testing.assert_array_equal(out["local_doubled"], 2 * full[4 * r : 4 * r + 4])
        np.testing.assert_array_equal(out["gathered"], 2 * full)
        np.testing.assert_array_equal(np.ravel(out["per_rank"]), [0.0, 10.0])
        assert "passed 1 rows but owns rows" in out["rows_error"]
        assert out["sum_replicated_host"] == out["sum"]
        np.testing.assert_array_equal(out["wrapped"], 2 * full)
        # chunk 3 over 4 blocks: rank 0 blocks {0,1} = rows [0,6), rank 1 blocks {2,3} = [6,10).
        assert out["blocks"] == [4, 3, 6 * r, 6 if r == 0 else 10]
        assert out["objects"] == [{"rank": 0, "text": "é"}, {"rank": 1, "text": "éé"}]
        assert out["gathered_rows"] == [[f"row{i}" for i in range(10)],
                                        [[float(i), -float(i)] for i in range(10)]]  # fmt: skip
        assert out["verdicts"] == [{"ex": f"ex{i}", "len": i} for i in range(10)]
        assert out["verify_calls"] == [[f"ex{i}" for i in (range(6) if r == 0 else range(6, 10))]]
        assert out["replica_rows"] == [0, 5]
        assert out["replica_gather"] == [f"r{i}" for i in range(5)]
        np.testing.assert_array_equal(out["rows_of"], 3 * full[4 * r + 1 : 4 * r + 3])
        assert "are not all held by process" in out["rows_of_error"]


def test_single_process_is_a_no_op(monkeypatch):
    for k in (
        distributed.ENV_COORDINATOR,
        distributed.ENV_NUM_PROCESSES,
        distributed.ENV_PROCESS_ID,
    ):
        monkeypatch.delenv(k, raising=False)
    info = distributed.maybe_initialize(auto_detect=False)
    assert info == distributed.DistributedInfo(False, 0, 1, None, "single-process")
    info1 = distributed.maybe_initialize("127.0.0.1:1234", 1, 0)
    assert not info1.initialized and info1.num_processes == 1
    assert distributed.is_main_process()
    obj = {"a": [1, 2]}
    assert distributed.broadcast_from_main(obj) is obj
    distributed.sync_barrier("noop")
    distributed.assert_same_across_processes(obj, "anything")


@pytest.mark.parametrize(
    "args, match",
    [
        (("127.0.0.1:1234", None, 0), r"missing \['num_processes'\]"),
        ((None, 2, None), r"missing \['coordinator_address', 'process_id'\]"),
        (("127.0.0.1:1234", 2, 2), r"process_id=2 must be in \[0, num_processes=2\)"),
        (("127.0.0.1:1234", 0, 0), r"num_processes=0 must be >= 1"),
        (("localhost", 2, 0), r"must look like 'host:port'"),
    ],
)
def test_bad_arguments_are_named(args, match):
    with pytest.raises(ValueError, match=match):
        distributed.maybe_initialize(*args)


def test_bad_env_is_named(monkeypatch):
    monkeypatch.setenv(distributed.ENV_COORDINATOR, "127.0.0.1:1")
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "two")
    monkeypatch.setenv(distributed.ENV_PROCESS_ID, "0")
    with pytest.raises(ValueError, match="FST_NUM_PROCESSES='two' is not an integer"):
        distributed.maybe_initialize()


def test_local_rows_single_process():
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("a", "b"))
    sh = NamedSharding(mesh, P(("a", "b")))
    assert distributed.local_row_range(sh, (16, 3)) == (0, 16)
    x = np.arange(48.0).reshape(16, 3)
    g = distributed.global_batch_from_local(x, sh, 16)
    assert g.sharding == sh
    np.testing.assert_array_equal(distributed.host_local_rows(g), x)
    with pytest.raises(ValueError, match="passed 8 rows but owns rows"):
        distributed.global_batch_from_local(x[:8], sh, 16)
    with pytest.raises(ValueError, match="rank >= 1"):
        distributed.local_row_range(sh, ())
