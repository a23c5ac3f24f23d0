"""Shared fixtures: a tiny prepared corpus (made once per session from the embedded Austen text) and offline env."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

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


def tiny_config(tmp_path: Path, data_dir: Path, **over) -> Path:
    cfg = {
        "seed_everything": 7,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 4,
            "val_check_interval": 2,
            "check_val_every_n_epoch": None,
            "num_sanity_val_steps": 0,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(tmp_path / "run"),
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(tmp_path / "run"), "name": "t"}},
            "callbacks": [
                {"class_path": "golf.callbacks.Finalize", "init_args": {"quant": {"method": "int8"}, "compressor": "zlib"}},
                {"class_path": "golf.callbacks.ArtifactSizeCap", "init_args": {"cap_bytes": 16_000_000}},
                {"class_path": "golf.callbacks.LateQAT", "init_args": {"lr_scale_threshold": 0.6}},
            ],
        },
        "model": {
            "backbone": {"model_dim": 32, "layers": "SA", "num_heads": 2, "num_kv_heads": 1,
                         "ssm": {"d_state": 16, "headdim": 16, "chunk_size": 16}},
            "schedule": {"warmdown_fraction": 0.5},
        },
        "data": {"data_dir": str(data_dir), "vocab_size": 512, "seq_len": 64, "train_batch_tokens": 512,
                 "micro_batch_tokens": 256, "val_batch_tokens": 4096, "val_max_tokens": 8192},
    }
    for key, value in over.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def only_version_dir(tmp_path: Path) -> Path:
    (version,) = sorted((tmp_path / "run" / "t").glob("version_*"))
    return version


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls: OpenMP threads only spin against each other (30x slower on a busy 2-core machine)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
