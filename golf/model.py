"""GolfLM: the LightningModule that trains a Backbone the way the challenge's scripts do (manual optimization: grad
accumulation inside one training_step, one Muon+Adam step, a wall-clock-based LR schedule)."""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import lightning.pytorch as pl
import torch
import torch._inductor.config
from lightning.pytorch.utilities import rank_zero_info

from golf.agreement import LaggedMax
from golf.callbacks.budget import find_budget
from golf.errors import GolfError
from golf.evaluate import score_windows
from golf.metrics import BitsPerByte
from golf.modules.backbone import Backbone
from golf.modules.config import BackboneConfig
from golf.modules.layers import CastedLinear
from golf.modules.mamba3 import Mamba3Mixer
from golf.optim import GolfOptimizer

SSM_DYNAMICS = ("dt_bias", "B_bias", "C_bias", "D", "B_norm_weight", "C_norm_weight")

# Inductor's mix-order reduction fuses a per-row reduction (the RMSNorm backward) with per-channel sums over all rows
# (the control vectors' gradients) into one kernel. On the hybrid it ran 5.5 ms per micro-batch on an H200, about 10x
# the time its bytes need, and the separate kernels are faster (benchmarks/RESULTS.md). Older torch has no switch.
INDUCTOR_OPTIONS = (
    {"triton.mix_order_reduction": False} if hasattr(torch._inductor.config.triton, "mix_order_reduction") else {}
)


def _compile(fn, options: dict[str, Any]):
    """torch.compile as golf uses it: one whole graph, static shapes, Inductor ``options``."""
    return torch.compile(fn, fullgraph=True, dynamic=False, options=options)


def inductor_options(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """golf's Inductor options with a config's ``compile_options`` over them; an unknown option is a one-line error
    (torch would raise only at the first compile, listing every option it has)."""
    overrides = dict(overrides or {})
    known = torch._inductor.config.get_config_copy()
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise GolfError(f"model.compile_options: unknown Inductor option(s) {', '.join(unknown)}; the names are those "
                        "of torch._inductor.config (e.g. max_autotune_gemm, coordinate_descent_tuning)")
    return {**INDUCTOR_OPTIONS, **overrides}


@dataclass
class OptimizerConfig:
    """Muon on block matrices, Adam on embeddings and scalars (parameter-golf.md §3.2 defaults)."""

    matrix_lr: float = 0.04
    scalar_lr: float = 0.04
    tied_embed_lr: float = 0.05
    embed_lr: float = 0.6
    head_lr: float = 0.008
    ssm_dynamics_lr: float | None = None
    """Adam LR of the SSM dynamics parameters (dt_bias, B/C bias and norm, D); default scalar_lr."""
    ssm_in_proj: str = "muon"
    """Which optimizer updates the SSM in_proj: muon (like every matrix) or adam (the row-heterogeneity hypothesis)."""
    adam_matrix_lr: float = 0.008
    """Adam LR for matrices sent to Adam (ssm_in_proj: adam)."""
    muon_momentum: float = 0.95
    muon_momentum_warmup_start: float = 0.85
    muon_momentum_warmup_steps: int = 500
    muon_ns_steps: int = 5
    muon_row_normalize: bool = False
    """MuonEq-R: normalise rows before Newton–Schulz."""
    muon_weight_decay: float = 0.0
    adam_weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip_norm: float = 0.0


@dataclass
class ScheduleConfig:
    """LR multiplier: constant, then linear warm-down to ``min_lr_scale``. Time-based when a WallClockBudget runs."""

    warmdown_steps: int = 0
    """Baseline style: warm-down over this many steps, converted to time with the mean step time so far."""
    warmdown_fraction: float = 0.0
    """Alternative: warm-down over this final fraction of the budget (or of max_steps without a budget)."""
    min_lr_scale: float = 0.0
    """Floor of the multiplier at the end of warm-down (records used 0.1)."""


def _run_block(block: torch.nn.Module, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """One block as a free function, so that one torch.compile of it serves every block of the same kind."""
    return block(x, x0)


class GolfLM(pl.LightningModule):
    def __init__(
        self,
        vocab_size: int = 1024,
        seq_len: int = 1024,
        backbone: BackboneConfig = BackboneConfig(),  # noqa: B008  (frozen in use: never mutated)
        optimizer: OptimizerConfig = OptimizerConfig(),  # noqa: B008
        schedule: ScheduleConfig = ScheduleConfig(),  # noqa: B008
        compile: bool = False,
        compile_regions: bool = False,
        compile_warmup_steps: int = 0,
        compile_options: dict[str, Any] | None = None,
        max_bad_steps: int = 3,
    ) -> None:
        """
        Args:
            vocab_size: Linked from data.vocab_size.
            seq_len: Linked from data.seq_len.
            backbone: Layer stack and sizes.
            optimizer: Muon/Adam groups and learning rates.
            schedule: Warm-down of the LR multiplier.
            compile: torch.compile(fullgraph=True) the training and evaluation forward.
            compile_regions: With compile, compile each block on its own (the blocks of one kind share one compiled
                graph) and the head + loss on their own instead of the whole model as one graph: a shorter cold
                compile, no fusion across block boundaries.
            compile_warmup_steps: Steps run before the clock starts to compile, then model and optimizer are restored.
            compile_options: Inductor options (``torch._inductor.config`` names) over golf's, for the model's graphs,
                e.g. ``{triton.cudagraphs: true}``; None keeps golf's. benchmarks/RESULTS.md has the ones measured
                (``max_autotune_gemm``: slower, and a compile over two minutes).
            max_bad_steps: Stop with an error after this many consecutive non-finite losses (their updates are skipped).
        """
        super().__init__()
        self.save_hyperparameters(
            {"vocab_size": vocab_size, "seq_len": seq_len, "backbone": asdict(backbone), "optimizer": asdict(optimizer),
             "schedule": asdict(schedule), "compile": compile, "compile_regions": compile_regions,
             "compile_warmup_steps": compile_warmup_steps, "compile_options": compile_options,
             "max_bad_steps": max_bad_steps}
        )
        self.automatic_optimization = False
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self.backbone_config, self.optim_config, self.schedule_config = backbone, optimizer, schedule
        self.model = Backbone(backbone, vocab_size)
        # Non-persistent buffers are tables derived from the config (RoPE), equal on every rank: DDP would broadcast
        # them from rank 0 before every forward. DDP's per-module ignore list (broadcast_buffers=False would be the
        # strategy-wide switch, for buffers that do need it too).
        derived = [f"{name}.{b}" for name, module in self.named_modules() for b in module._non_persistent_buffers_set]
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, derived)
        self.compile = compile
        self.compile_regions = compile_regions
        self.compile_warmup_steps = compile_warmup_steps
        self.inductor_options = inductor_options(compile_options)
        # CUDA graphs (Inductor's cudagraph trees) reuse their output memory on every replay. A first backward's
        # gradient is installed as ``.grad`` by stealing that memory, and the next micro-batch's replay overwrites it
        # (pytorch/pytorch#169545): with CUDA graphs every ``.grad`` is kept as its own buffer, and each backward adds
        # into it.
        self.keep_grad_buffers = bool(self.inductor_options.get("triton.cudagraphs", False))
        self.max_bad_steps = max_bad_steps
        self.val_metric = BitsPerByte()
        self.lr_scale = 1.0
        self.bad_steps = 0
        self.last_loss: torch.Tensor | None = None
        self._nonfinite = LaggedMax()  # any rank's loss non-finite, agreed one step later
        self._compiled: dict[str, object] = {}  # compiled callables, kept out of the module tree and checkpoints

    # -- parameters and optimizer ----------------------------------------------------------------------------------
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def param_groups(self) -> list[dict]:
        """The baseline's grouping: 2-D Linear weights in blocks -> Muon; embedding, head, SSM dynamics and the
        control vectors (scales, resid_mix, q_gain, skip weights) -> Adam with their own LRs."""
        cfg = self.optim_config
        muon, adam_matrix, scalars, dynamics = [], [], [], []
        seen = set()
        ssm_in_projs = {id(m.in_proj) for m in self.model.modules() if isinstance(m, Mamba3Mixer)}
        for module in self.model.blocks.modules():
            if isinstance(module, CastedLinear):
                to_adam = id(module) in ssm_in_projs and cfg.ssm_in_proj == "adam"
                (adam_matrix if to_adam else muon).append(module.weight)
                seen.add(module.weight)
                if module.bias is not None:
                    scalars.append(module.bias)
                    seen.add(module.bias)
        for name, p in self.model.blocks.named_parameters():
            if p in seen:
                continue
            (dynamics if name.rsplit(".", 1)[-1] in SSM_DYNAMICS else scalars).append(p)
        if self.model.skip_weights is not None:
            scalars.append(self.model.skip_weights)
        if cfg.ssm_in_proj not in ("muon", "adam"):
            raise ValueError(f"model.optimizer.ssm_in_proj={cfg.ssm_in_proj!r}: use 'muon' or 'adam'")
        adam = dict(use_muon=False, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, weight_decay=cfg.adam_weight_decay)
        embed_lr = cfg.tied_embed_lr if self.model.lm_head is None else cfg.embed_lr
        groups = [
            dict(params=muon, lr=cfg.matrix_lr, use_muon=True, momentum=cfg.muon_momentum, nesterov=True,
                 ns_steps=cfg.muon_ns_steps, row_normalize=cfg.muon_row_normalize, weight_decay=cfg.muon_weight_decay),
            dict(params=[self.model.tok_emb.weight], lr=embed_lr, **adam),
            dict(params=scalars, lr=cfg.scalar_lr, **adam),
        ]
        if self.model.lm_head is not None:
            groups.append(dict(params=[self.model.lm_head.weight], lr=cfg.head_lr, **adam))
        if dynamics:
            groups.append(dict(params=dynamics, lr=cfg.ssm_dynamics_lr or cfg.scalar_lr, **adam))
        if adam_matrix:
            groups.append(dict(params=adam_matrix, lr=cfg.adam_matrix_lr, **adam))
        return [g for g in groups if g["params"]]

    def configure_optimizers(self):
        on_cuda = self.device.type == "cuda"
        return GolfOptimizer(self.param_groups(), fused=on_cuda, compile_ns=self.compile and on_cuda)

    # -- compile and warm-up ---------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if not self.compile or self._compiled:
            return
        if self.compile_regions:
            block = _compile(_run_block, self.inductor_options)
            head_loss = _compile(self.model.head_loss, self.inductor_options)
            head = _compile(self.model.head, self.inductor_options)
            self._compiled["loss"] = lambda x, y: head_loss(self.model.hidden(x, run_block=block)[0], y)
            self._compiled["forward"] = lambda x: head(self.model.hidden(x, run_block=block)[0])
        else:
            self._compiled["loss"] = _compile(self.model.loss, self.inductor_options)
            self._compiled["forward"] = _compile(self.model, self.inductor_options)

    def _train_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._compiled.get("loss", self.model.loss)(x, y)

    def _eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._compiled.get("forward", self.model)(x)

    def on_train_start(self) -> None:
        rank_zero_info(f"golf: {self.num_parameters():,} parameters, layers {self.backbone_config.layers}")
        if self.compile_warmup_steps > 0:
            self.warm_up(self.compile_warmup_steps)

    def warm_up(self, steps: int) -> None:
        """Run ``steps`` real optimizer steps to compile every graph, then restore model and optimizer state, as the
        challenge's scripts do; the wall-clock budget starts after this."""
        model_state = copy.deepcopy(self.model.state_dict())
        opt = self.optimizers()
        opt_state = copy.deepcopy(opt.optimizer.state_dict())
        windows = self.trainer.datamodule.train_dataloader().dataset
        # The precision context of a real training_step (bf16 autocast), so warm-up compiles the graphs the run uses.
        with self.trainer.precision_plugin.train_step_context():
            for step in range(steps):
                batch = windows.batch(step).to(self.device, non_blocking=True)
                with self.no_grad_sync():
                    self._step(batch, opt.optimizer, sync_grads=False)
        self.model.load_state_dict(model_state)
        opt.optimizer.load_state_dict(opt_state)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # -- training --------------------------------------------------------------------------------------------------
    def momentum(self, step: int) -> float:
        cfg = self.optim_config
        if cfg.muon_momentum_warmup_steps <= 0:
            return cfg.muon_momentum
        frac = min(step / cfg.muon_momentum_warmup_steps, 1.0)
        return (1 - frac) * cfg.muon_momentum_warmup_start + frac * cfg.muon_momentum

    def compute_lr_scale(self) -> float:
        """Constant, then linear warm-down to min_lr_scale; on elapsed wall-clock when a budget callback exists."""
        sched = self.schedule_config
        budget = find_budget(self.trainer) if self._trainer is not None else None
        step = self.trainer.global_step if self._trainer is not None else 0
        if budget is not None and budget.budget_seconds:
            total, done = budget.usable_seconds, budget.agreed_elapsed
            warmdown = sched.warmdown_steps * done / max(step, 1) if sched.warmdown_steps else sched.warmdown_fraction * total
        else:
            total = self.trainer.max_steps if self._trainer is not None and self.trainer.max_steps > 0 else 0
            done = step
            warmdown = sched.warmdown_steps or sched.warmdown_fraction * total
        if warmdown <= 0 or total <= 0:
            return 1.0
        remaining = max(total - done, 0.0)
        linear = min(remaining / warmdown, 1.0)
        return sched.min_lr_scale + (1 - sched.min_lr_scale) * linear

    def _step(self, batch: torch.Tensor, optimizer: torch.optim.Optimizer, sync_grads: bool = True) -> torch.Tensor:
        """One optimizer step over ``[accum, micro_seqs, L+1]`` windows; returns the mean loss (device tensor)."""
        accum = batch.size(0)
        total = torch.zeros((), device=batch.device)
        if self.keep_grad_buffers:
            for p in self.model.parameters():
                if p.requires_grad and p.grad is None:
                    p.grad = torch.zeros_like(p)
        for m in range(accum):
            x, y = batch[m, :, :-1], batch[m, :, 1:]
            last = m == accum - 1
            with self.no_grad_sync() if (not last or not sync_grads) else nullcontext():
                loss = self._train_loss(x, y)
                self.manual_backward(loss / accum)
            total += loss.detach()
        total /= accum
        finite = torch.isfinite(total)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * self.lr_scale
            if group["use_muon"]:
                group["momentum"] = self.momentum(self.trainer.global_step)
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.masked_fill_(~finite, 0.0)  # a non-finite step changes nothing (no host sync needed)
        if self.optim_config.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optim_config.grad_clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=not self.keep_grad_buffers)
        return total

    def no_grad_sync(self):
        """DDP's no_sync for accumulation micro-steps; a no-op on a single device."""
        strategy = self.trainer.strategy
        return strategy.block_backward_sync() if hasattr(strategy, "block_backward_sync") else nullcontext()

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.lr_scale = self.compute_lr_scale()
        # One LightningOptimizer.step() per batch: Lightning counts it as one global step.
        loss = self._step(batch, self.optimizers())
        self.last_loss = loss
        # In the progress bar only when one is shown: Lightning turns every progress-bar metric into a Python number
        # (``.item()``, a host sync) at every batch end, shown or not. The logger reads it every log_every_n_steps.
        self.log("train_loss", loss, prog_bar=self.trainer.progress_bar_callback is not None, on_step=True,
                 on_epoch=False)
        # A host tensor: Lightning turns a Python number into a tensor on the module's device, a blocking copy that
        # would make the host wait for the whole step, every step, before it queues the next one.
        self.log("lr_scale", torch.tensor(self.lr_scale), on_step=True, on_epoch=False)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # The previous step's loss is checked, not this one's: its finiteness (MAX over ranks) is queued to the host
        # without waiting, so the read waits at most for the previous step while this step's kernels are queued, and
        # every rank reads the same verdict at the same step (all raise together). A non-finite step's update was
        # already skipped on the device (see _step).
        if self.max_bad_steps <= 0 or self.last_loss is None:
            return
        verdict = self._nonfinite.exchange(~torch.isfinite(self.last_loss), self.device, self.trainer.world_size)
        if verdict is None:
            return
        bad = verdict > 0
        self.bad_steps = self.bad_steps + 1 if bad else 0
        if self.bad_steps >= self.max_bad_steps:
            raise GolfError(
                f"training loss was NaN/Inf for {self.bad_steps} consecutive steps (up to step "
                f"{self.trainer.global_step - 1}); their updates were skipped and earlier checkpoints are kept; lower "
                f"model.optimizer learning rates or set model.optimizer.grad_clip_norm, then resume with --ckpt_path"
            )

    # -- validation ------------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self.val_metric.reset()
        self._val_luts = self.trainer.datamodule.byte_luts.to(self.device)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.val_metric.update(*score_windows(self._eval_forward, batch, self._val_luts))

    def on_validation_epoch_end(self) -> None:
        out = self.val_metric.compute()
        self.log("val_loss", out["val_loss"].float(), prog_bar=True, sync_dist=False)
        self.log("val_bpb", out["val_bpb"].float(), prog_bar=True, sync_dist=False)
        self.last_val = {k: float(v) for k, v in out.items()}
