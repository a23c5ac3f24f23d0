"""The language model: tied embedding -> blocks (mixer + MLP, resid_mix to x0) with U-Net skips -> RMSNorm -> tied
head with logit softcap. With ``layers: AAAAAAAAA`` this is exactly the challenge baseline (17,059,912 parameters at
vocab 1024); with S letters the SSM mixer replaces attention in those blocks."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from golf.errors import GolfError
from golf.modules.attention import CausalSelfAttention
from golf.modules.config import BackboneConfig
from golf.modules.layers import MLP, CastedLinear, RMSNorm, autocast_dtype, rms_norm
from golf.modules.mamba3 import Mamba3Mixer

BUILTIN_MIXERS: dict[str, type[nn.Module]] = {"A": CausalSelfAttention, "S": Mamba3Mixer}


def resolve_mixers(config: BackboneConfig) -> list[type[nn.Module]]:
    """Map each letter of ``layers`` to a mixer class; custom letters come from ``mixers`` (import paths)."""
    table: dict[str, type[nn.Module]] = dict(BUILTIN_MIXERS)
    for letter, path in config.mixers.items():
        module_name, _, attr = path.rpartition(".")
        try:
            table[letter] = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ValueError) as e:
            raise GolfError(f"model.backbone.mixers.{letter}: cannot import {path!r} ({e}); give a module.Class path") from None
    if not config.layers:
        raise GolfError("model.backbone.layers is empty; give one letter per block, e.g. AAAAAAAAA or SSASSAS")
    unknown = sorted({c for c in config.layers if c not in table})
    if unknown:
        raise GolfError(
            f"model.backbone.layers={config.layers!r} names unknown mixer(s) {', '.join(unknown)}; "
            f"use {', '.join(sorted(table))} or register a letter under model.backbone.mixers"
        )
    return [table[c] for c in config.layers]


class Block(nn.Module):
    """x = mix0·x + mix1·x0;  x += mix_scale·mixer(norm x);  x += mlp_scale·mlp(norm x)."""

    def __init__(self, mixer_cls: type[nn.Module], config: BackboneConfig, layer_idx: int) -> None:
        super().__init__()
        dim = config.model_dim
        self.mixer = mixer_cls(dim, config, layer_idx)
        self.mlp = MLP(dim, config.mlp_mult, config.mlp_activation, fused=config.fused_mlp)
        self.mix_scale = nn.Parameter(torch.ones(dim))
        self.mlp_scale = nn.Parameter(torch.ones(dim))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))))

    def forward(self, x: torch.Tensor, x0: torch.Tensor, state: Any = None, return_state: bool = False):
        mix = self.resid_mix.to(x.dtype)
        x = mix[0] * x + mix[1] * x0
        h = rms_norm(x)
        if return_state:
            h, state = self.mixer(h, state=state, return_state=True)
        else:
            h = self.mixer(h)
        x = x + self.mix_scale.to(x.dtype) * h
        x = x + self.mlp_scale.to(x.dtype) * self.mlp(rms_norm(x))
        return (x, state) if return_state else x


class Backbone(nn.Module):
    def __init__(self, config: BackboneConfig, vocab_size: int) -> None:
        super().__init__()
        if config.residual_dtype not in ("float32", "autocast"):
            raise GolfError(f"model.backbone.residual_dtype={config.residual_dtype!r}: use 'float32' or 'autocast'")
        self.config = config
        self.vocab_size = vocab_size
        self.tok_emb = nn.Embedding(vocab_size, config.model_dim)
        nn.init.normal_(self.tok_emb.weight, std=config.tied_embed_init_std)
        self.blocks = nn.ModuleList(Block(cls, config, i) for i, cls in enumerate(resolve_mixers(config)))
        n = len(self.blocks)
        self.num_encoder = n // 2 if config.unet_skips else 0
        num_skips = min(self.num_encoder, n - self.num_encoder)
        self.skip_weights = nn.Parameter(torch.ones(num_skips, config.model_dim)) if num_skips else None
        self.final_norm = RMSNorm()
        self.lm_head = None if config.tie_embeddings else CastedLinear(config.model_dim, vocab_size, zero_init=True)

    def forward(self, idx: torch.Tensor, states: list | None = None, return_states: bool = False):
        """Logits (softcapped, in the activation dtype). With ``return_states`` also each block's mixer state
        (SSM recurrent state or attention KV cache), which can be passed back as ``states`` to continue the stream."""
        x, new_states = self.hidden(idx, states, return_states)
        logits = self.head(x)
        return (logits, new_states) if return_states else logits

    def hidden(self, idx: torch.Tensor, states: list | None = None, return_states: bool = False,
               run_block: Callable | None = None) -> tuple[torch.Tensor, list]:
        """The residual stream after the last block, and each block's state with ``return_states``.
        ``run_block(block, x, x0)`` stands in for ``block(x, x0)``: regional compilation passes one compiled
        function that every block of a kind shares."""
        x = rms_norm(self.tok_emb(idx))
        if self.config.residual_dtype == "autocast":
            x = x.to(autocast_dtype(x))
        x0 = x
        skips: list[torch.Tensor] = []
        new_states = []
        for i, block in enumerate(self.blocks):
            if i >= self.num_encoder and skips:
                x = x + self.skip_weights[i - self.num_encoder].to(x.dtype) * skips.pop()
            if return_states:
                x, s = block(x, x0, None if states is None else states[i], return_state=True)
                new_states.append(s)
            else:
                x = block(x, x0) if run_block is None else run_block(block, x, x0)
            if i < self.num_encoder:
                skips.append(x)
        return x, new_states

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Final RMSNorm, the tied (or own) output projection and the logit softcap."""
        x = self.final_norm(x)
        weight = self.tok_emb.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(x, weight.to(x.dtype))
        cap = self.config.logit_softcap
        if cap > 0:
            logits = cap * torch.tanh(logits / cap)
        return logits

    def head_loss(self, x: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        logits = self.head(x)
        return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return self.head_loss(self.hidden(idx)[0], targets, reduction)

    def row_groups(self) -> dict[str, list[tuple[str, int, int]]]:
        """Row-role splits of fused projections (SSM in_proj), keyed by state_dict name."""
        return {
            f"{name}.in_proj.weight": module.row_groups()
            for name, module in self.named_modules()
            if hasattr(module, "row_groups") and module is not self
        }
