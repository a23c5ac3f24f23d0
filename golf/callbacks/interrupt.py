"""Nothing is lost on Ctrl-C or SIGTERM: finish the current optimizer step, save a resumable checkpoint, exit.

Lightning already turns SIGTERM into an exception at the next step boundary, agreed across ranks; golf adds the
checkpoint. Ctrl-C is turned into the same kind of step-boundary stop (a raw KeyboardInterrupt could land in the
middle of an optimizer update and leave half-updated weights behind)."""

from __future__ import annotations

import signal
from pathlib import Path

from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from golf.agreement import LaggedMax


class SaveOnInterrupt(Callback):
    def __init__(self, filename: str = "interrupted.ckpt") -> None:
        """
        Args:
            filename: Checkpoint file name, written next to ModelCheckpoint's files (or in the run's checkpoints/).
        """
        self.filename = filename
        self.requested = False
        self._previous_handler = None
        self.saved_path: Path | None = None
        self._agreed = LaggedMax()

    def _on_sigint(self, signum, frame) -> None:
        if self.requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True
        rank_zero_info("golf: Ctrl-C: finishing this step, then saving a checkpoint (press again to abort at once)")

    def on_fit_start(self, trainer, pl_module) -> None:
        try:
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:  # not the main thread (e.g. a notebook worker): leave Ctrl-C alone
            self._previous_handler = None

    def on_fit_end(self, trainer, pl_module) -> None:
        self._restore_handler()

    def _restore_handler(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def checkpoint_path(self, trainer) -> Path:
        ckpt = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
        folder = Path(ckpt.dirpath) if ckpt is not None and ckpt.dirpath else Path(trainer.default_root_dir) / "checkpoints"
        return folder / self.filename

    def _save(self, trainer, why: str) -> None:
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path)  # rank 0 writes, every rank waits
        self.saved_path = path
        rank_zero_info(f"golf: {why} at step {trainer.global_step}; saved {path}; resume with --ckpt_path {path}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.world_size == 1:
            stop = self.requested
        else:  # agreed by all ranks without stalling the step: a Ctrl-C on any rank stops all after the next step
            stop = (self._agreed.exchange(float(self.requested), pl_module.device, trainer.world_size) or 0.0) > 0
        if stop:
            self._save(trainer, "interrupted (Ctrl-C)")
            self._restore_handler()
            raise KeyboardInterrupt

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore_handler()
        if isinstance(exception, SIGTERMException):
            self._save(trainer, "terminated (SIGTERM)")
