"""GPTQ (Frantar et al., 2022) into golf's per-row int-N format, and a forward-hook Hessian collector.

For a linear layer ``y = x Wᵀ`` with calibration inputs ``X`` (``[n, cols]``), GPTQ minimises
``‖X Wᵀ − X Ŵᵀ‖² = tr((W − Ŵ) H (W − Ŵ)ᵀ)`` with ``H = Xᵀ X`` by quantizing one column at a time and spreading
each column's error over the columns not yet quantized, using the upper Cholesky factor ``U`` of ``H⁻¹``::

    for column j (in act-order: decreasing diag(H), if enabled):
        q_j   = clamp(round(w_j / s), -L, L)                 # s: the fixed per-row scales (fp16)
        e_j   = (w_j − q_j s) / U_jj
        w_k  -= e_j U_jk        for k > j                      # applied lazily: within a block of `block_size`
                                                              # columns, then once per block to the rest

Rows are independent given ``H`` (each row is its own least-squares problem), so splitting a matrix into row
groups and running GPTQ on each with the same ``H`` gives the same codes.

Dead inputs (``H_jj == 0``) get ``H_jj = 1`` and a zeroed weight column; ``damp · mean(diag H)`` is added to the
diagonal (``damp = 0.01`` by default), as the records do. If the Cholesky still fails, damping grows ×10 up to
3 times, then the caller falls back to round-to-nearest.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

import torch
import torch.nn as nn
from torch import Tensor

from golf.quant.intn import levels, quantize_with_scales


# -----------------------------------------------------------------------------
# GPTQ
# -----------------------------------------------------------------------------


def _inverse_cholesky_upper(H: Tensor, damp: float) -> Tensor | None:
    """Upper Cholesky factor of ``(H + λI)⁻¹`` with ``λ = damp · mean(diag H)``; None if H is not usable."""
    mean_diag = float(H.diagonal().mean())
    if not mean_diag > 0 or not torch.isfinite(H).all():
        return None
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    for attempt in range(4):
        lam = damp * (10.0**attempt) * mean_diag
        L, info = torch.linalg.cholesky_ex(H + lam * eye)
        if int(info) != 0:
            continue
        Hinv = torch.cholesky_inverse(L)
        U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
        if int(info) == 0 and torch.isfinite(U).all():
            return U
    return None


@torch.no_grad()
def gptq_quantize(
    w: Tensor,
    H: Tensor,
    scale: Tensor,
    bits: int,
    *,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = True,
) -> Tensor | None:
    """GPTQ codes (int8 ``[rows, cols]`` in ``[-L, L]``) for weight ``w`` given ``H = Σ xᵀx`` and fixed per-row scales.

    ``scale`` are the stored fp16 per-row scales (from :func:`golf.quant.intn.row_scales` of the *original* weight),
    so the output is dequantized exactly like round-to-nearest int-N. Returns None when ``H`` cannot be factorised
    (not finite, zero, or not positive definite after damping); callers then use round-to-nearest.
    """
    if w.ndim != 2:
        raise ValueError(f"GPTQ needs a 2-D weight, got shape {tuple(w.shape)}")
    rows, cols = w.shape
    if H.shape != (cols, cols):
        raise ValueError(f"Hessian shape {tuple(H.shape)} does not match weight columns {cols}")
    lv = levels(bits)
    W = w.detach().to(torch.float32).clone()
    H = H.detach().to(device=W.device, dtype=torch.float32).clone()
    dead = H.diagonal() == 0
    if dead.all():
        return None
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    if act_order:
        perm = torch.argsort(H.diagonal(), descending=True)
        W = W[:, perm]
        H = H[perm][:, perm]
    U = _inverse_cholesky_upper(H, damp)
    if U is None:
        return None
    s = scale.to(device=W.device, dtype=torch.float32)
    Q = torch.zeros((rows, cols), dtype=torch.int8, device=W.device)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for j in range(i2 - i1):
            wj = W1[:, j]
            qj = torch.clamp(torch.round(wj / s), -lv, lv)
            Q[:, i1 + j] = qj.to(torch.int8)
            ej = (wj - qj * s) / U1[j, j]
            W1[:, j:] -= ej[:, None] * U1[j, j:][None, :]
            Err1[:, j] = ej
        if i2 < cols:
            W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    if act_order:
        Q = Q[:, torch.argsort(perm)]
    return Q.contiguous()


def rtn_quantize(w: Tensor, scale: Tensor, bits: int) -> Tensor:
    """Round-to-nearest codes with the same scales (GPTQ's fallback and the baseline of comparison)."""
    return quantize_with_scales(w, scale, bits)


# -----------------------------------------------------------------------------
# Hessian collection
# -----------------------------------------------------------------------------


class HessianCollector:
    """Accumulate ``H = Σ xᵀx`` over the inputs of linear layers during calibration forwards.

    Hooks every selected module that has a 2-D ``weight`` parameter applied as ``F.linear(x, weight)``
    (``nn.Linear`` and its subclasses, or any module whose forward input's last dimension equals
    ``weight.shape[1]``); ``nn.Embedding`` is skipped. Keys of :attr:`hessians` are the parameter names relative to
    the model passed (``"blocks.0.mixer.in_proj.weight"``), i.e. state-dict keys.

    On exit the sums and counts are all-reduced (SUM) over ranks when ``torch.distributed`` is initialised, so every
    rank ends with the global ``H``; every rank must therefore enter and exit the context with the same modules.
    Pass the eager (uncompiled) model: hooks inside a compiled graph are not guaranteed to fire.

    Inputs that a hook cannot see (e.g. the tied head's ``F.linear(x, tok_emb.weight)``) can be fed with
    :meth:`add`.

    >>> with HessianCollector(model) as hc:            # doctest: +SKIP
    ...     for x in calib_batches: model(x)
    >>> hessians = hc.hessians                         # {param name: Σ xᵀx}, counts in hc.counts
    """

    def __init__(
        self,
        model: nn.Module,
        names: Iterable[str] | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        """
        Args:
            model: the module tree to hook.
            names: module names or fnmatch patterns over module names (``"blocks.*.mlp.fc"``) to hook;
                None hooks every eligible module.
            dtype: accumulator dtype (float32 or float64).
            device: accumulator device; default the weight's device.
        """
        self.model = model
        self.patterns = None if names is None else list(names)
        self.dtype = dtype
        self.device = device
        self.hessians: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}
        self._handles: list = []

    # -- selection --------------------------------------------------------------------------------------------
    def _selected(self) -> list[tuple[str, nn.Module]]:
        out = []
        for mname, mod in self.model.named_modules():
            if isinstance(mod, nn.Embedding):
                continue
            w = getattr(mod, "weight", None)
            if not isinstance(w, nn.Parameter) or w.ndim != 2:
                continue
            if self.patterns is not None and not any(
                mname == p or fnmatch.fnmatchcase(mname, p) for p in self.patterns
            ):
                continue
            out.append((mname, mod))
        return out

    # -- accumulation -----------------------------------------------------------------------------------------
    def add(self, param_name: str, x: Tensor) -> None:
        """Add ``xᵀx`` of an input batch ``x`` (``[..., cols]``) to the Hessian of ``param_name``."""
        x2 = x.detach().reshape(-1, x.shape[-1])
        xf = x2.to(torch.float64 if self.dtype == torch.float64 else torch.float32)
        xtx = xf.T @ xf
        H = self.hessians.get(param_name)
        if H is None:
            dev = self.device if self.device is not None else x2.device
            H = self.hessians[param_name] = torch.zeros(xtx.shape, dtype=self.dtype, device=dev)
            self.counts[param_name] = 0
        H += xtx.to(device=H.device, dtype=self.dtype)
        self.counts[param_name] += int(x2.shape[0])

    def _make_hook(self, param_name: str, cols: int):
        def hook(_mod, inputs, _output):
            if not inputs:
                return
            x = inputs[0]
            if not isinstance(x, Tensor) or not x.is_floating_point() or x.shape[-1] != cols:
                return
            self.add(param_name, x)

        return hook

    def __enter__(self) -> HessianCollector:
        for mname, mod in self._selected():
            pname = f"{mname}.weight" if mname else "weight"
            cols = mod.weight.shape[1]
            if pname not in self.hessians:  # pre-allocate so every rank reduces the same set of tensors
                dev = self.device if self.device is not None else mod.weight.device
                self.hessians[pname] = torch.zeros((cols, cols), dtype=self.dtype, device=dev)
                self.counts[pname] = 0
            self._handles.append(mod.register_forward_hook(self._make_hook(pname, mod.weight.shape[1])))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if exc[0] is None:
            self.all_reduce()
            for name in [k for k, n in self.counts.items() if n == 0]:  # hooked but never called
                del self.hessians[name], self.counts[name]

    def all_reduce(self) -> None:
        """Sum Hessians and counts over ranks (no-op unless torch.distributed is initialised)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        for name in sorted(self.hessians):
            dist.all_reduce(self.hessians[name], op=dist.ReduceOp.SUM)
            c = torch.tensor([self.counts[name]], dtype=torch.float64, device=self.hessians[name].device)
            dist.all_reduce(c, op=dist.ReduceOp.SUM)
            self.counts[name] = int(c.item())

    def mean_hessians(self) -> dict[str, Tensor]:
        """``H / n`` per parameter (GPTQ is invariant to the scale of H; this is for inspection)."""
        return {k: v / max(self.counts[k], 1) for k, v in self.hessians.items()}
