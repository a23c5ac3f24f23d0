"""A golf training step on one GPU must not synchronise the host with the GPU: the host queues step N+1 while the GPU
runs step N. Any synchronising CUDA call in the steady-state loop (a blocking copy, ``.item()``, ``bool(tensor)``)
makes the GPU idle for the whole of Lightning's between-step work. GPU only; run with
``TRITON_INTERPRET=0 python -m pytest -m gpu tests/test_host_sync.py``."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import tiny_config
from lightning.pytorch.callbacks import Callback

from golf.cli import main

RECORDED: list[str] = []


class SyncWatch(Callback):
    """Turns on torch's CUDA sync debug mode ("warn") from step ``start`` until step ``stop`` and records the
    synchronising calls it reports."""

    def __init__(self, start: int = 3, stop: int = 7) -> None:
        self.start, self.stop = start, stop
        self._catcher = None
        self._records: list[warnings.WarningMessage] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.start:
            self._catcher = warnings.catch_warnings(record=True)
            self._records = self._catcher.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        elif trainer.global_step == self.stop:
            self._finish()

    def on_train_end(self, trainer, pl_module) -> None:
        self._finish()

    def _finish(self) -> None:
        if self._catcher is None:
            return
        torch.cuda.set_sync_debug_mode("default")
        self._catcher.__exit__(None, None, None)
        self._catcher = None
        RECORDED.extend(f"{r.filename}:{r.lineno}: {r.message}" for r in self._records
                        if "called a synchronizing" in str(r.message))  # not the mode's own "prototype" notice


@pytest.mark.gpu
@pytest.mark.parametrize("compile_model", [False, True], ids=["eager", "compiled"])
def test_steady_state_training_steps_do_not_synchronize_the_host(tmp_path, tiny_data, compile_model):
    RECORDED.clear()
    cfg = tiny_config(tmp_path, tiny_data, **{
        "trainer.accelerator": "gpu", "trainer.precision": "bf16-mixed", "trainer.max_steps": 8,
        "trainer.val_check_interval": 1000, "trainer.log_every_n_steps": 1000,
        "trainer.callbacks": [
            {"class_path": "golf.callbacks.WallClockBudget", "init_args": {"budget_seconds": 600}},
            {"class_path": "golf.callbacks.LateQAT", "init_args": {"lr_scale_threshold": 0.15}},
            {"class_path": "test_host_sync.SyncWatch", "init_args": {"start": 3, "stop": 7}},
        ],
        "model.compile": compile_model,
    })
    assert main(["fit", "--config", str(cfg)]) == 0
    assert not RECORDED, "synchronising CUDA calls inside training steps 3-6:\n" + "\n".join(RECORDED)
