"""Test-only plug-ins loaded by class_path from YAML, the way a user would add their own (tests/ is on PYTHONPATH)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from golf.callbacks import Constraint


class MaxLayers(Constraint):
    """A user rule: at most ``max_layers`` blocks."""

    def __init__(self, max_layers: int) -> None:
        self.max_layers = max_layers

    def check_start(self, trainer, pl_module):
        n = len(pl_module.model.blocks)
        return None if n <= self.max_layers else f"{n} layers > max_layers {self.max_layers}"


class MinValTokens(Constraint):
    """A user rule on the final report: the score must cover at least ``min_tokens`` val tokens."""

    def __init__(self, min_tokens: int) -> None:
        self.min_tokens = min_tokens

    def check_end(self, report):
        n = report["post_quant"]["tokens"]
        return None if n >= self.min_tokens else f"scored {n} val tokens < {self.min_tokens}"


def record_last_step(out_dir: str, trainer) -> None:
    """stop_rank{rank}.json: the last step this rank trained (tests/test_fit.py's ``stop_steps`` reads it)."""
    (Path(out_dir) / f"stop_rank{trainer.global_rank}.json").write_text(json.dumps({"step": trainer.global_step}))


class SlowRank(Callback):
    """Sleeps after every step on one rank and records, per rank, the step at which training ended."""

    def __init__(self, rank: int = 1, seconds: float = 0.5, out_dir: str = ".") -> None:
        self.rank, self.seconds, self.out_dir = rank, seconds, out_dir

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_rank == self.rank:
            time.sleep(self.seconds)

    def on_train_end(self, trainer, pl_module):
        record_last_step(self.out_dir, trainer)


class PoisonWeights(Callback):
    """Writes NaN into the embedding at ``step`` (a stand-in for a diverging run), on one rank or (-1) on all."""

    def __init__(self, step: int = 2, rank: int = -1) -> None:
        self.step, self.rank = step, rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step and self.rank in (-1, trainer.global_rank):
            import torch

            with torch.no_grad():
                pl_module.model.tok_emb.weight.fill_(float("nan"))


class SignalSelf(Callback):
    """Sends ``signal_name`` to this process after optimizer step ``step`` (Ctrl-C, SIGTERM or kill -9 mid-run), on
    one rank or (-1) on all."""

    def __init__(self, step: int = 2, signal_name: str = "SIGTERM", rank: int = -1) -> None:
        self.step, self.signal_name, self.rank = step, signal_name, rank

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        import signal

        if trainer.global_step == self.step and self.rank in (-1, trainer.global_rank):
            os.kill(os.getpid(), getattr(signal, self.signal_name))


class RaiseOnRank(Callback):
    """Raises on one rank at ``step``, to check that the other ranks exit too instead of hanging."""

    def __init__(self, rank: int = 1, step: int = 2) -> None:
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            raise RuntimeError(f"planted failure on rank {self.rank}")


class FailFromStep(Constraint):
    """A per-step rule that fails from optimizer step ``step`` on, on one rank or (-1) on all, and records on each
    rank the last step trained."""

    def __init__(self, step: int = 2, rank: int = -1, out_dir: str = ".") -> None:
        self.step, self.rank, self.out_dir = step, rank, out_dir

    def check_step(self, trainer, pl_module):
        if trainer.global_step >= self.step and self.rank in (-1, trainer.global_rank):
            return f"step {trainer.global_step} >= {self.step} on rank {trainer.global_rank}"
        return None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        record_last_step(self.out_dir, trainer)  # every step: the file left at the end holds the last one


class GradBufferProbe(Callback):
    """Records, after every training batch, whether every parameter still holds a ``.grad`` tensor (grad_buffers.json)."""

    def __init__(self, out_dir: str = ".") -> None:
        self.out_dir, self.kept = out_dir, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.kept.append(all(p.grad is not None for p in pl_module.model.parameters()))

    def on_train_end(self, trainer, pl_module):
        (Path(self.out_dir) / "grad_buffers.json").write_text(json.dumps(self.kept))
