"""The challenge's training clock (parameter-golf.md §3.3) as a callback.

Not Lightning's ``Timer``: its clock also counts validation and the first-step compile, and its stop decision is
rank 0's broadcast; the challenge pauses the clock during validation, starts it after compile warm-up, and stops on
the first step at which *any* rank is over the budget (an all-reduced MAX). With several ranks the MAX is agreed
one step late without stalling the step (``golf.agreement.LaggedMax``), and the stop looks one step ahead: it
stops after the step whose end the agreed clock plus the last agreed step time puts over the budget."""

from __future__ import annotations

import time
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from golf.agreement import LaggedMax


class WallClockBudget(Callback):
    def __init__(self, budget_seconds: float = 600.0, reserve_seconds: float = 0.0, verbose: bool = True) -> None:
        """
        Args:
            budget_seconds: Training wall-clock budget (600 in the challenge). 0 disables the stop but keeps the clock.
            reserve_seconds: Part of the budget kept for work that must finish inside it after the loop (e.g. GPTQ
                Hessians on training data); training stops at budget - reserve.
            verbose: Log why and when training stopped.
        """
        if budget_seconds < 0 or reserve_seconds < 0 or (budget_seconds and reserve_seconds >= budget_seconds):
            raise ValueError(
                f"WallClockBudget: need 0 <= reserve_seconds ({reserve_seconds}) < budget_seconds ({budget_seconds})"
            )
        self.budget_seconds = budget_seconds
        self.reserve_seconds = reserve_seconds
        self.verbose = verbose
        self._spent = 0.0  # seconds accumulated while the clock was running, survives resume
        self._started_at: float | None = None
        self.agreed_elapsed = 0.0  # max over ranks of elapsed(), as of the last step agreed: same on every rank
        self.agreed_step_seconds = 0.0  # the last agreed step time (several ranks: for the one-step look-ahead)
        self._agreed = LaggedMax()
        self.steps_timed = 0
        self.stopped_at_step: int | None = None
        self.stop_reason: str | None = None

    # -- the clock -------------------------------------------------------------------------------------------------
    @property
    def usable_seconds(self) -> float:
        return self.budget_seconds - self.reserve_seconds

    def elapsed(self) -> float:
        running = time.perf_counter() - self._started_at if self._started_at is not None else 0.0
        return self._spent + running

    def fraction(self) -> float:
        """Agreed elapsed share of the usable budget (drives time-based LR schedules and late QAT)."""
        return self.agreed_elapsed / self.usable_seconds if self.budget_seconds else 0.0

    def _pause(self, device: torch.device | None = None) -> None:
        if self._started_at is not None:
            if device is not None and device.type == "cuda":
                torch.cuda.synchronize(device)  # the host runs ahead of the GPU: count the training work still queued
            self._spent += time.perf_counter() - self._started_at
            self._started_at = None

    def _resume(self) -> None:
        if self._started_at is None:
            self._started_at = time.perf_counter()

    # -- hooks -----------------------------------------------------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        self._resume()  # first call is after compile warm-up (on_train_start), so warm-up is not counted

    def on_validation_start(self, trainer, pl_module) -> None:
        self._pause(pl_module.device)  # resumed by the next on_train_batch_start

    def on_train_batch_end(self, trainer, pl_module, outputs, batch: Any, batch_idx: int) -> None:
        self.steps_timed += 1
        if trainer.world_size > 1:
            # Every rank sees the same clock (MAX over ranks), so the time-based LR schedule and late QAT switch
            # identically everywhere and all ranks stop after the same step (no hang). Agreed one step late: this
            # step's clock is queued, the previous step's is read, and the stop looks one step ahead.
            previous = self._agreed.exchange(self.elapsed(), pl_module.device, trainer.world_size)
            if previous is None:
                return
            self.agreed_step_seconds = max(previous - self.agreed_elapsed, 0.0)
            self.agreed_elapsed = previous
            projected = previous + self.agreed_step_seconds  # this step's end, as the agreed clock predicts it
        else:
            # One process: the host clock as is. Reading a device tensor back would make the host wait for this
            # step's kernels every step (the challenge's script also reads its clock on the host between syncs).
            self.agreed_elapsed = projected = self.elapsed()
        if not self.budget_seconds:
            return
        if projected >= self.usable_seconds:
            trainer.should_stop = True
            self.stopped_at_step = trainer.global_step
            self.stop_reason = f"wall-clock budget: {projected:.1f}s >= {self.usable_seconds:.1f}s"
            if self.verbose:
                rank_zero_info(f"golf: stopping at step {trainer.global_step}: {self.stop_reason}")

    def on_train_end(self, trainer, pl_module) -> None:
        self._pause(pl_module.device)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._pause()

    def state_dict(self) -> dict[str, Any]:
        return {"spent": self.elapsed(), "steps_timed": self.steps_timed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._spent = self.agreed_elapsed = float(state_dict.get("spent", 0.0))
        self.steps_timed = int(state_dict.get("steps_timed", 0))


def find_budget(trainer) -> WallClockBudget | None:
    return next((c for c in trainer.callbacks if isinstance(c, WallClockBudget)), None)
