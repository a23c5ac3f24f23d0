"""Constraint plug-ins: rules a run must obey, checked at fit start, after each step and on the final report.

A rule is one subclass of ``Constraint`` overriding any of the three ``check_*`` methods (return ``None`` when the
rule holds, else a one-line reason), named in YAML under ``trainer.callbacks`` with its ``class_path``. golf's
finalization calls ``check_end`` on the report and exits non-zero (3) when any rule fails, after writing the report.
Example in docs/constraints.md."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from golf.agreement import LaggedMax
from golf.errors import ConstraintViolation

CHALLENGE_CAP_BYTES = 16_000_000


class Constraint(Callback):
    """Base class. ``check_start`` failing aborts before training; ``check_step`` failing on any rank stops every
    rank after the same step (the step after the failing one: the verdict is agreed one step late, so that the
    check never stalls a step) and fails the run at the end; ``check_end`` sees the final report dict."""

    @property
    def name(self) -> str:
        return type(self).__name__

    def check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str | None:
        return None

    def check_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> str | None:
        return None

    def check_end(self, report: dict[str, Any]) -> str | None:
        return None

    # -- wiring (subclasses need not touch these) ------------------------------------------------------------------
    step_violation: str | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        # check_step's verdicts are agreed over the ranks one step later, without stalling the step (agreement.py).
        self._violated, self._last_reason = LaggedMax(), None
        reason = self.check_start(trainer, pl_module)
        if reason:
            raise ConstraintViolation(f"constraint {self.name} failed before training: {reason}")

    def _has_step_rule(self) -> bool:
        return type(self).check_step is not Constraint.check_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self._has_step_rule():
            return  # no per-step rule: no collective
        reason = self.check_step(trainer, pl_module)
        agreed = self._violated.exchange(float(reason is not None), pl_module.device, trainer.world_size)
        if self._record(agreed):
            trainer.should_stop = True
        self._last_reason = reason

    def _record(self, agreed: float | None) -> bool:
        """Keep the first violation of the step just agreed (this rank's reason, if it was this rank's)."""
        if not agreed:
            return False
        self.step_violation = self.step_violation or self._last_reason or "violated on another rank"
        return True

    def evaluate_end(self, report: dict[str, Any]) -> dict[str, Any]:
        if self._has_step_rule():
            self._record(self._violated.last())  # the final step's verdict: agreed, not read yet
        reason = self.step_violation or self.check_end(report)
        return {"name": self.name, "ok": reason is None, "reason": reason}


class ArtifactSizeCap(Constraint):
    """Code bytes + compressed model bytes must not exceed ``cap_bytes`` (the challenge's decimal 16,000,000)."""

    def __init__(self, cap_bytes: int = CHALLENGE_CAP_BYTES) -> None:
        self.cap_bytes = cap_bytes

    def check_end(self, report: dict[str, Any]) -> str | None:
        art = report["artifact"]
        if art["total_bytes"] > self.cap_bytes:
            return (
                f"artifact {art['total_bytes']:,} bytes (model {art['model_bytes']:,} + code "
                f"{art['code_bytes_compressed']:,}) > cap {self.cap_bytes:,}; shrink the model or quantize harder"
            )
        return None


class ParameterCap(Constraint):
    """The model may have at most ``max_parameters`` parameters (checked before training)."""

    def __init__(self, max_parameters: int) -> None:
        self.max_parameters = max_parameters

    def check_start(self, trainer, pl_module) -> str | None:
        n = sum(p.numel() for p in pl_module.parameters())
        if n > self.max_parameters:
            return f"{n:,} parameters > max_parameters {self.max_parameters:,}; make the model smaller"
        return None


class EvalTimeBudget(Constraint):
    """The final (post-quantization) evaluation must finish within ``max_seconds`` (the challenge allows 600 s on
    8xH100 for evaluation, on top of training)."""

    def __init__(self, max_seconds: float = 600.0) -> None:
        self.max_seconds = max_seconds

    def check_end(self, report: dict[str, Any]) -> str | None:
        seconds = report["post_quant"]["seconds"]
        if seconds > self.max_seconds:
            return f"final evaluation took {seconds:.1f}s > {self.max_seconds:.1f}s; use a cheaper eval mode or fewer TTT epochs"
        return None


def find_constraints(trainer: pl.Trainer) -> list[Constraint]:
    return [c for c in trainer.callbacks if isinstance(c, Constraint)]


def cap_of(trainer: pl.Trainer) -> int:
    caps = [c.cap_bytes for c in trainer.callbacks if isinstance(c, ArtifactSizeCap)]
    return min(caps) if caps else CHALLENGE_CAP_BYTES
