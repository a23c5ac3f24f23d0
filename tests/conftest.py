"""Shared fixtures: a tiny prepared corpus (made once per session from the embedded Austen text) and offline env."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def austen_docs():
    from golf.data.corpora import default_documents

    return [d.text for d in default_documents()]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, austen_docs) -> Path:
    """~60 Austen chapters tokenized with a 512-piece tokenizer: a few hundred thousand tokens, made in seconds."""
    from golf.data.prepare import prepare

    out = tmp_path_factory.mktemp("tiny_data")
    prepare(austen_docs[:60], out, vocab_size=512, val_docs=6)
    return out


def run_golf(args: list[str], cwd: Path, timeout: float = 600, env: dict | None = None):
    """Run the `golf` CLI in a subprocess (DDP's launcher re-executes argv, which must not be pytest's)."""
    import subprocess

    full_env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "golf", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )
