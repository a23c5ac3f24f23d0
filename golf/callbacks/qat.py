"""Late quantization-aware training: fake-quantize every large Linear (attention, MLP, SSM in_proj/out_proj) with a
straight-through estimator once the LR multiplier falls below a threshold (records: 0.15).

The quantized-dequantized weights are computed once per optimizer step, before its micro-batches (the weights do not
change in between), and the forward only blends them in: ``(w − sg(w)) + lerp(sg(w), target, mix)``. Until QAT
switches on, ``mix`` is 0 and the targets are never computed; switching it on changes tensor values, never the
compiled graph."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from golf.modules.layers import CastedLinear
from golf.quant import QuantScheme
from golf.quant.qat import dequantized_planned, qat_plan, straight_through


class LateQAT(Callback):
    def __init__(self, lr_scale_threshold: float = 0.15, scheme: QuantScheme | None = None) -> None:
        """
        Args:
            lr_scale_threshold: Switch fake-quantization on at the first step whose LR multiplier is below this.
            scheme: The quantization to mirror; default the Finalize callback's scheme (so QAT trains for the grid the
                artifact will use).
        """
        self.lr_scale_threshold = lr_scale_threshold
        self.scheme = scheme
        self.mix: torch.Tensor | None = None
        self._targets: list[tuple[CastedLinear, tuple, torch.Tensor]] = []
        self.enabled_at_step: int | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        from golf.callbacks.finalize import Finalize

        scheme = self.scheme
        if scheme is None:
            scheme = next((c.quant for c in trainer.callbacks if isinstance(c, Finalize)), QuantScheme(method="int6"))
        # A 0-d tensor rather than a flag: flipping it changes a value, never the compiled graph.
        self.mix = torch.full((), 1.0 if self.enabled_at_step is not None else 0.0, device=pl_module.device)
        self._targets = []
        groups = pl_module.model.row_groups()
        for name, module in pl_module.model.named_modules():
            if isinstance(module, CastedLinear) and module.weight.numel() > scheme.passthrough_max_numel:
                pname = f"{name}.weight"
                plan = qat_plan(module.weight, pname, scheme, groups.get(pname))  # resolved here, not in the graph
                if plan is not None:
                    target = module.weight.detach().float().clone()
                    module.weight_transform = partial(straight_through, target=target, mix=self.mix)
                    self._targets.append((module, plan, target))
        if self.enabled_at_step is not None:
            self.refresh_targets()

    def refresh_targets(self) -> None:
        """Recompute every fake-quantized weight from the current weights (once per step while QAT is on)."""
        for module, plan, target in self._targets:
            target.copy_(dequantized_planned(module.weight, plan))

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        if self.enabled_at_step is None:
            scale = pl_module.compute_lr_scale()  # the multiplier this step will use (same on every rank)
            if scale < self.lr_scale_threshold:
                self.mix.fill_(1.0)
                self.enabled_at_step = trainer.global_step
                rank_zero_info(f"golf: late QAT on at step {trainer.global_step} (lr scale {scale:.3f})")
        if self.enabled_at_step is not None:
            self.refresh_targets()

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.enabled_at_step is not None:
            self.refresh_targets()

    def on_train_end(self, trainer, pl_module) -> None:
        for module in pl_module.model.modules():
            if isinstance(module, CastedLinear):
                module.weight_transform = None
        self._targets = []

    def state_dict(self) -> dict[str, Any]:
        return {"enabled_at_step": self.enabled_at_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.enabled_at_step = state_dict.get("enabled_at_step")
