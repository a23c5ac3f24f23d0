"""The challenge baseline's causal GQA attention: QK RMSNorm, RoPE, learnable per-head q_gain, SDPA, zero-init proj."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from golf.modules.config import BackboneConfig
from golf.modules.layers import CastedLinear, Rotary, apply_rotary, rms_norm


class KVCache:
    """Post-RoPE keys and values of the tokens seen so far (``k``, ``v``: ``[B, H_kv, L, D]``) in buffers with room to
    grow. Appending writes in place and the buffers double when full, so token-by-token generation copies O(L) in
    total instead of the whole cache at every token (``torch.cat`` made it quadratic). Only the newest cache of a
    buffer appends in place; continuing an older one (a second branch from the same state) copies first, so two
    states never share the positions they write. Indexing gives ``(k, v)``, as the plain tuple form that
    ``from_state`` also accepts."""

    __slots__ = ("_k", "_v", "length", "_filled")

    def __init__(self, k_buf: torch.Tensor, v_buf: torch.Tensor, length: int, filled: list[int]) -> None:
        self._k, self._v, self.length, self._filled = k_buf, v_buf, length, filled

    @classmethod
    def from_state(cls, state: "KVCache | tuple[torch.Tensor, torch.Tensor]") -> "KVCache":
        if isinstance(state, KVCache):
            return state
        k, v = state
        return cls(k, v, k.size(2), [k.size(2)])

    @property
    def k(self) -> torch.Tensor:
        return self._k[:, :, : self.length]

    @property
    def v(self) -> torch.Tensor:
        return self._v[:, :, : self.length]

    def __getitem__(self, i: int) -> torch.Tensor:
        return (self.k, self.v)[i]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> "KVCache":
        """The cache with ``k``, ``v`` (``[B, H_kv, T, D]``) after its positions, in their dtype."""
        end = self.length + k.size(2)
        if end <= self._k.size(2) and self._k.dtype == k.dtype and self._filled[0] == self.length:
            self._k[:, :, self.length : end] = k
            self._v[:, :, self.length : end] = v
            self._filled[0] = end
            return KVCache(self._k, self._v, end, self._filled)
        capacity = max(2 * end, 16)
        k_buf = k.new_empty(*k.shape[:2], capacity, k.size(3))
        v_buf = v.new_empty(*v.shape[:2], capacity, v.size(3))
        k_buf[:, :, : self.length], v_buf[:, :, : self.length] = self.k, self.v
        k_buf[:, :, self.length : end], v_buf[:, :, self.length : end] = k, v
        return KVCache(k_buf, v_buf, end, [end])


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
    ) -> torch.Tensor | tuple[torch.Tensor, KVCache]:  # fmt: skip
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.c_k(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.c_v(x).view(B, T, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = rms_norm(q), rms_norm(k)
        cache = None if state is None else KVCache.from_state(state)
        past = 0 if cache is None else cache.length
        cos, sin = self.rotary(T, x.device, offset=past)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q = q * self.q_gain.to(q.dtype)[None, :, None, None]
        if return_state or cache is not None:
            cache = KVCache(k, v, T, [T]) if cache is None else cache.append(k, v)
            k, v = cache.k, cache.v
        if past and T > 1:
            # Queries at positions past..past+T-1 see all cached keys and the causal part of the new ones.
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.num_kv_heads != self.num_heads)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=past == 0, enable_gqa=self.num_kv_heads != self.num_heads
            )
        y = self.proj(y.transpose(1, 2).reshape(B, T, C))
        return (y, cache) if return_state else y
