"""`python -m fst_jax.aot`: the memory-plan CLI (also the per-slice worker entry)."""

import sys

from fst_jax.aot.plan import main

sys.exit(main())
