"""The challenge baseline's causal GQA attention: QK RMSNorm, RoPE, learnable per-head q_gain, SDPA, zero-init proj."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from golf.modules.config import BackboneConfig
from golf.modules.layers import CastedLinear, Rotary, apply_rotary, rms_norm

KVCache = tuple[torch.Tensor, torch.Tensor]


class CausalSelfAttention(nn.Module):
    """State (for token-by-token generation) is the (k, v) cache of the tokens seen so far, post-RoPE."""

    def __init__(self, dim: int, config: BackboneConfig, layer_idx: int = 0) -> None:
        super().__init__()
        if dim % config.num_heads or config.num_heads % config.num_kv_heads:
            raise ValueError(
                f"model.backbone: model_dim {dim} must divide by num_heads {config.num_heads}, "
                f"and num_heads by num_kv_heads {config.num_kv_heads}"
            )
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = dim // config.num_heads
        kv_dim = self.num_kv_heads * self.head_dim
        self.c_q = CastedLinear(dim, dim)
        self.c_k = CastedLinear(dim, kv_dim)
        self.c_v = CastedLinear(dim, kv_dim)
        self.proj = CastedLinear(dim, dim, zero_init=True)
        self.q_gain = nn.Parameter(torch.full((self.num_heads,), config.qk_gain_init))
        self.rotary = Rotary(self.head_dim, config.rope_base)

    def forward(
        self, x: torch.Tensor, state: KVCache | None = None, return_state: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, KVCache]:
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.c_k(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.c_v(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = rms_norm(q), rms_norm(k)
        past = 0 if state is None else state[0].size(2)
        cos, sin = self.rotary(T, x.device, offset=past)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q = q * self.q_gain.to(q.dtype)[None, :, None, None]
        if state is not None:
            k = torch.cat([state[0].to(k.dtype), k], dim=2)
            v = torch.cat([state[1].to(v.dtype), v], dim=2)
        if past and T > 1:
            # Queries at positions past..past+T-1 see all cached keys and the causal part of the new ones.
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.num_kv_heads != self.num_heads)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=past == 0, enable_gqa=self.num_kv_heads != self.num_heads
            )
        y = self.proj(y.transpose(1, 2).reshape(B, T, C))
        return (y, (k, v)) if return_state else y
