"""A run's products outside the run: HF export with its contexts, and an OpenAI-compatible server.

Public API:
  load_run(workdir, step=None) -> ServedModel       # a checkpoint's policy + Pareto contexts
  load_spec(spec) -> ServedModel                    # HF/export dir, GGUF, embedded, random:...
  export_run(workdir, out, step=None)               # `fst-export`
  build(model, ...) -> App; ServerThread(app); serving(model)   # `fst-serve`
"""

from fst_jax.serve.export import export_run, write_contexts
from fst_jax.serve.runs import CONTEXTS_FILE, RunError, ServedModel, load_run, load_spec
from fst_jax.serve.server import App, ServerThread, build, model_names, serving

__all__ = [
    "CONTEXTS_FILE",
    "App",
    "RunError",
    "ServedModel",
    "ServerThread",
    "build",
    "export_run",
    "load_run",
    "load_spec",
    "model_names",
    "serving",
    "write_contexts",
]
