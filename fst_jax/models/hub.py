"""Hugging Face Hub ids as model specs: ``--config.model.spec=Qwen/Qwen3-8B[@revision]``.

The id is resolved by `huggingface_hub.snapshot_download` to a local snapshot dir (config,
tokenizer and safetensors files only), then loaded like any HF dir. It honours the usual Hub
settings: ``HF_HOME`` / ``HF_HUB_CACHE`` for where snapshots live, ``HF_TOKEN`` for gated repos,
and ``HF_HUB_OFFLINE=1`` to use only the local cache (pod VMs and CI prepare that cache once).
A path that exists always wins over an id of the same spelling.
"""

from __future__ import annotations

import os
import re

from fst_jax.errors import CheckpointError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]


def is_hub_id(spec: str) -> bool:
    """``owner/name[@revision]`` that is not an existing local path."""
    return bool(_HUB_ID.match(spec)) and not os.path.exists(os.path.expanduser(spec))


def snapshot_dir(spec: str) -> str:
    """Local directory of the Hub snapshot named by `spec` (downloaded unless offline/cached)."""
    import huggingface_hub
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    repo_id, _, revision = spec.partition("@")
    try:
        return huggingface_hub.snapshot_download(
            repo_id, revision=revision or None, allow_patterns=ALLOW_PATTERNS
        )
    except LocalEntryNotFoundError as e:
        raise CheckpointError(
            f"{spec!r} is not in the local Hugging Face cache and the Hub cannot be reached "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')!r}): download it once with "
            f"`hf download {repo_id}` where the Hub is reachable, or pass a local checkpoint dir"
        ) from e
    except (HFValidationError, OSError, ValueError) as e:  # unknown/gated repo, bad revision
        msg = " ".join(str(e).split())[:300]
        raise CheckpointError(
            f"cannot fetch {spec!r} from the Hugging Face Hub ({type(e).__name__}: {msg}); check "
            "the id and revision, set HF_TOKEN for gated models, or pass a local checkpoint dir"
        ) from e
