"""Model configs: one frozen dataclass covers the Llama / Qwen2 / Qwen3 decoder family.

The config is hashable so it can be a static argument of jitted functions. Architecture fields
mirror HF `config.json` names where one exists, so conversion both ways is a rename.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fst_jax.registry import Registry

ARCHITECTURES = ("llama", "qwen2", "qwen3")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3 style frequency-dependent RoPE scaling (`rope_type: llama3` in HF)."""

    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    rope_type: str = "llama3"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture plus the runtime knobs that change how (not what) the forward computes."""

    name: str
    arch: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q/k/v projection biases (Qwen2)
    qk_norm: bool = False  # per-head RMSNorm on q and k before RoPE (Qwen3)
    max_position_embeddings: int = 4096
    # Runtime knobs (not part of the checkpoint):
    param_dtype: str = "float32"
    dtype: str = "float32"  # activation / matmul input dtype; accumulation is always f32
    remat: str = "none"  # "none" | "layer" (recompute each layer in backward) | "dots"
    scan_layers: bool = False  # stack layers and lax.scan (fast compile, TPU) vs unrolled (CPU)
    # Projection kernels stored [in..., out...] (checkpoints, training) or [out..., in...] (torch's
    # order; XLA:CPU's small-batch decode matmuls run ~1.8x faster on it): see
    # `decoder.to_kernel_layout`.
    kernel_layout: str = "in_out"
    # "auto" (splash on TPU, cuDNN on GPU, XLA elsewhere) | "xla" | "splash" | "cudnn":
    # see `fst_jax.models.attention`.
    attention: str = "auto"

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(
                f"Unknown architecture {self.arch!r}; supported: {', '.join(ARCHITECTURES)}. "
                "Only Llama, Qwen2/2.5 and Qwen3 decoders are implemented."
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.remat not in ("none", "layer", "dots"):
            raise ValueError(f"remat={self.remat!r}; use one of 'none', 'layer', 'dots'")
        if self.attention not in ("auto", "xla", "splash", "cudnn"):
            raise ValueError(
                f"attention={self.attention!r}; use one of 'auto', 'xla', 'splash', 'cudnn'"
            )
        if self.kernel_layout not in ("in_out", "out_in"):
            raise ValueError(f"kernel_layout={self.kernel_layout!r}; use 'in_out' or 'out_in'")
        for field in ("param_dtype", "dtype"):
            if getattr(self, field) not in ("float32", "bfloat16", "float16"):
                raise ValueError(f"{field}={getattr(self, field)!r}; use float32 or bfloat16")

    def replace(self, **kwargs: Any) -> ModelConfig:
        return dataclasses.replace(self, **kwargs)

    @property
    def num_params(self) -> int:
        """Parameter count (embeddings counted once when tied)."""
        d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        q = d * self.num_heads * self.head_dim
        kv = 2 * d * self.num_kv_heads * self.head_dim
        o = self.num_heads * self.head_dim * d
        bias = (
            (self.num_heads + 2 * self.num_kv_heads) * self.head_dim if self.attention_bias else 0
        )
        qk = 2 * self.head_dim if self.qk_norm else 0
        layer = q + kv + o + bias + qk + 3 * d * f + 2 * d
        head = 0 if self.tie_word_embeddings else d * v
        return v * d + self.num_layers * layer + d + head


_NAMED: Registry[ModelConfig] = Registry("model config", normalize=lambda n: n.replace("-", "_"))


def register(config: ModelConfig) -> ModelConfig:
    """Adds a named config (`get_config(name)`); a name registered twice is an error."""
    return _NAMED.add(config.name, config)


register(
    ModelConfig(
        name="smollm2_135m",
        arch="llama",
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        head_dim=64,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        max_position_embeddings=8192,
    )
)
register(
    ModelConfig(
        name="qwen2p5_0p5b",
        arch="qwen2",
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_layers=24,
        num_heads=14,
        num_kv_heads=2,
        head_dim=64,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        attention_bias=True,
        max_position_embeddings=32768,
    )
)
_QWEN3 = dict(
    arch="qwen3",
    vocab_size=151936,
    num_kv_heads=8,
    head_dim=128,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    qk_norm=True,
    max_position_embeddings=40960,
)
register(
    ModelConfig(
        name="qwen3_0p6b",
        hidden_size=1024,
        intermediate_size=3072,
        num_layers=28,
        num_heads=16,
        tie_word_embeddings=True,
        **_QWEN3,
    )
)
register(
    ModelConfig(
        name="qwen3_1p7b",
        hidden_size=2048,
        intermediate_size=6144,
        num_layers=28,
        num_heads=16,
        tie_word_embeddings=True,
        **_QWEN3,
    )
)
register(
    ModelConfig(
        name="qwen3_8b",
        hidden_size=4096,
        intermediate_size=12288,
        num_layers=36,
        num_heads=32,
        tie_word_embeddings=False,
        **_QWEN3,
    )
)
_LLAMA3 = dict(
    arch="llama",
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_layers=32,
    num_heads=32,
    num_kv_heads=8,
    head_dim=128,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)
register(ModelConfig(name="llama3_8b", max_position_embeddings=8192, **_LLAMA3))
register(
    ModelConfig(
        name="llama3p1_8b",
        max_position_embeddings=131072,
        rope_scaling=RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0),
        **_LLAMA3,
    )
)
# Tiny random configs for tests: same code paths as the real ones, milliseconds to run.
_TINY = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    max_position_embeddings=512,
)
register(ModelConfig(name="tiny_llama", arch="llama", rms_norm_eps=1e-5, **_TINY))
register(
    ModelConfig(
        name="tiny_llama3",
        arch="llama",
        rope_theta=500000.0,
        rope_scaling=RopeScaling(factor=8.0, original_max_position_embeddings=64),
        **_TINY,
    )
)
register(ModelConfig(name="tiny_qwen2", arch="qwen2", attention_bias=True, **_TINY))
register(ModelConfig(name="tiny_qwen3", arch="qwen3", qk_norm=True, **_TINY))


def named_configs() -> list[str]:
    return _NAMED.names()


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """A named config, optionally with runtime knobs overridden (e.g. remat="layer")."""
    config = _NAMED.get(name)
    return config.replace(**overrides) if overrides else config
