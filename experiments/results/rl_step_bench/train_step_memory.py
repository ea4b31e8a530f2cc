"""XLA's compiled memory of the CISPO train step (SmolLM2-135M shapes, fp32, one CPU device).

    PYTHONPATH=. python experiments/results/rl_step_bench/train_step_memory.py ROWS,WIDTH,REMAT,MB,CHUNK ...

Prints temp (activations + temporaries) and argument (params + AdamW state) bytes from
`compiled.memory_analysis()`; nothing is executed, so it needs ~1 GB of RAM whatever the shape.
"""

import sys
import time

import jax
import jax.numpy as jnp

from fst_jax import sharding
from fst_jax.models import get_config
from fst_jax.models.decoder import param_shapes
from fst_jax.rl.batch import RLBatch
from fst_jax.rl.train_step import RLConfig, TrainState, make_train_step

mesh = sharding.single_device_mesh()


def run(rows, width, remat, mb, chunk):
    cfg = get_config("smollm2_135m", remat=remat, dtype="float32")
    step = make_train_step(cfg, mesh, RLConfig(num_microbatches=mb, logit_chunk=chunk))
    ps = param_shapes(cfg)
    sc = jax.ShapeDtypeStruct((), jnp.int32)
    st = TrainState(
        step=sc, params=ps, opt_state=jax.eval_shape(step.optimizer.init, ps), skipped=sc
    )

    def a(s, d):
        return jax.ShapeDtypeStruct(s, d)

    b = RLBatch(
        tokens=a((rows, width), jnp.int32),
        positions=a((rows, width), jnp.int32),
        completion_mask=a((rows, width), jnp.float32),
        old_logps=a((rows, width), jnp.float32),
        ref_logps=a((rows, width), jnp.float32),
        advantages=a((rows,), jnp.float32),
        row_weight=a((rows,), jnp.float32),
        row_valid=a((rows,), jnp.float32),
        group_ids=a((rows,), jnp.int32),
    )
    t = time.time()
    c = step.jitted.lower(st, b).compile()
    m = c.memory_analysis()
    print(
        rows,
        width,
        remat,
        mb,
        chunk,
        "temp GB",
        round(m.temp_size_in_bytes / 1e9, 2),
        "args GB",
        round(m.argument_size_in_bytes / 1e9, 2),
        "compile s",
        round(time.time() - t),
        flush=True,
    )


for spec in sys.argv[1:]:
    r, w, remat, mb, ch = spec.split(",")
    run(int(r), int(w), remat, int(mb), int(ch))
