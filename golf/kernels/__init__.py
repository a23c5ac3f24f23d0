"""Custom kernels of golf: one folder per op (`reference.py` in plain PyTorch, Triton variants beside it).

Importing any of them tags torch.compile's on-disk caches with a hash of all their sources (:func:`kernel_source_tag`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch


def kernel_source_tag(kernels_dir: Path = Path(__file__).parent) -> str:
    """``golf-<hash>`` of the Python sources of every golf kernel package (ops, references, Triton kernels)."""
    digest = hashlib.sha256()
    for path in sorted(kernels_dir.rglob("*.py")):
        digest.update(path.relative_to(kernels_dir).as_posix().encode() + b"\0" + path.read_bytes())
    return f"golf-{digest.hexdigest()[:16]}"


def tag_compile_caches() -> None:
    """Tag torch.compile's on-disk cache keys with :func:`kernel_source_tag`, unless a tag is set already
    (``TORCH_COMPILE_CACHE_KEY_TAG``). The caches key a graph by the custom ops' names, not by their schemas or
    autograd formulas: after an op gained an output to save for its backward, a warm cache served the old compiled
    backward, which called the new op with the old arguments."""
    config = getattr(torch.compiler, "config", None)
    if config is not None and hasattr(config, "cache_key_tag") and not config.cache_key_tag:
        config.cache_key_tag = kernel_source_tag()


tag_compile_caches()
