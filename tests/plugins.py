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


class SlowRank(Callback):
    """Sleeps after every step on one rank and records, per rank, the step at which training ended."""

    def __init__(self, rank: int = 1, seconds: float = 0.5, out_dir: str = ".") -> None:
        self.rank, self.seconds, self.out_dir = rank, seconds, out_dir

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_rank == self.rank:
            time.sleep(self.seconds)

    def on_train_end(self, trainer, pl_module):
        path = Path(self.out_dir) / f"stop_rank{trainer.global_rank}.json"
        path.write_text(json.dumps({"step": trainer.global_step, "pid": os.getpid()}))
