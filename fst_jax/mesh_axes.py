"""Mesh axis names: the leaf both `fst_jax.sharding` and the model kernels read them from (so the
attention kernel needs no import of sharding, which imports the decoder: no cycle)."""

DATA, FSDP, TENSOR = "data", "fsdp", "tensor"
MESH_AXES = (DATA, FSDP, TENSOR)
# Axes a batch dimension is split over (pure data parallelism plus FSDP's data split).
BATCH_AXES = (DATA, FSDP)
