"""The shipped fst-train configs (installed as `fst_jax.configs`; see fst_jax.main.config_dir)."""
