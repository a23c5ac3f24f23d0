"""Post-training quantization of a golf state dict into a safetensors-ready, JSON-described form.

One entry point for every scheme::

    qs = quantize_state_dict(model.state_dict(), QuantScheme(method="gptq", bits=6, clip="sdclip"),
                             row_groups=model.row_groups(), hessians=collector.hessians)
    sd = dequantize_state_dict(qs)        # original names, shapes and dtypes

Methods (``QuantScheme.method``):

* ``"int8"``: the challenge baseline ``int8_clean_per_row_v1`` (see :mod:`golf.quant.int8`), exactly;
* ``"int6"`` / ``"intN"``: round-to-nearest per-row symmetric int-N (int6: ``bits`` forced to 6) with a
  ``percentile`` / ``sdclip`` / ``absmax`` clip (see :mod:`golf.quant.intn`);
* ``"gptq"``: GPTQ into the same per-row int-N format where a Hessian is given (see :mod:`golf.quant.gptq`),
  round-to-nearest elsewhere;
* ``"none"``: every tensor stored as is (for measuring and debugging).

Rules applied to each tensor, in order (:meth:`QuantScheme.rule_for`):

1. non-float tensors are stored unchanged;
2. float tensors with ``≤ passthrough_max_numel`` elements are stored as floats: a ``protect`` pattern with a float
   value (``"fp16"``, ``"bf16"``, ``"fp32"``) picks the dtype, names containing a control pattern stay fp32, other
   fp32/bf16 tensors are stored fp16 (the baseline's rules); the original dtype is restored on dequantization;
3. larger tensors listed in ``row_groups`` (``{param: [(group, start_row, end_row), ...]}``) are split into pieces
   ``"{param}::{group}"``, each quantized on its own (the small-tensor rule of step 2 is decided on the whole
   parameter, never on a piece) and concatenated back on dequantization;
4. a ``protect`` pattern (fnmatch over the name, piece names included) gives the bits (int) or a float dtype;
   else ``embed_bits`` for the embedding, else ``bits``. 2-D tensors are quantized per row, others per tensor.

Tensors that share storage in the state dict (a tied head) are stored once; the other name is an alias.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from golf.errors import GolfError
from golf.quant.gptq import HessianCollector, gptq_quantize
from golf.quant.int8 import quantize_int8_per_row, quantize_int8_per_tensor
from golf.quant.intn import (
    CLIP_METHODS,
    DEFAULT_PERCENTILE,
    DEFAULT_SDCLIP_K,
    dequantize_per_row,
    dequantize_per_tensor,
    quantize_per_tensor,
    quantize_with_scales,
    row_scales,
)
from golf.quant.roles import CONTROL_PATTERNS, matches_any, role_base, tensor_role

__all__ = [
    "QUANT_FORMAT",
    "METHODS",
    "DEFAULT_SSM_PROTECT",
    "QuantScheme",
    "TensorRule",
    "QuantizedState",
    "quantize_state_dict",
    "dequantize_state_dict",
    "HessianCollector",
    "tensor_role",
]

QUANT_FORMAT = "golf_quant_v1"
METHODS = ("int8", "int6", "intN", "gptq", "none")
#: SSM in_proj decay/step rows kept at int8 when the rest is int6 (the record's "dynamics protection", -0.8 mBPB).
DEFAULT_SSM_PROTECT: dict[str, str | int] = {"*.in_proj.weight::dd_A": 8, "*.in_proj.weight::dd_dt": 8}
FLOAT_STORE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
_DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float64, torch.float32, torch.float16, torch.bfloat16,
        torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool,
    )
}  # fmt: skip


def dtype_name(d: torch.dtype) -> str:
    return str(d).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"unsupported dtype {name!r}")
    return _DTYPES[name]


# -----------------------------------------------------------------------------
# Scheme
# -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorRule:
    """How one tensor (or row-group piece) is stored: the result of :meth:`QuantScheme.rule_for`."""

    kind: str  # "raw" (unchanged) | "small" (baseline keep-float) | "float" (cast to store_dtype) | "int"
    reason: str  # nonfloat | none | small | control | protected | quantized
    bits: int | None = None
    clip: str | None = None  # percentile | sdclip | absmax | int8_baseline
    sdclip_k: float = DEFAULT_SDCLIP_K
    percentile: float = DEFAULT_PERCENTILE
    gptq: bool = False
    store_dtype: str | None = None


@dataclass
class QuantScheme:
    """A quantization scheme; JSON-able through :meth:`to_dict` / :meth:`from_dict`."""

    method: str = "int8"
    """int8 (challenge baseline) | int6 | intN | gptq | none."""
    bits: int = 8
    """Bits of the quantized matrices (2..8; forced to 8 for int8 and 6 for int6)."""
    clip: str = "percentile"
    """Per-row clip for int6/intN/gptq: percentile | sdclip (k·std(row)) | absmax."""
    percentile: float = DEFAULT_PERCENTILE
    """Percentile of |w| per row for clip=percentile."""
    sdclip_k: float = DEFAULT_SDCLIP_K
    """k of clip=sdclip (records: 12.85 for matrices)."""
    sdclip_k_by_role: dict[str, float] = field(default_factory=dict)
    """Per-role k overrides, e.g. {"embedding": 14.0, "mlp": 11.5, "attn_qkv": 13.0}."""
    embed_bits: int | None = None
    """Bits of the embedding (None: same as bits)."""
    protect: dict[str, str | int] = field(default_factory=lambda: dict(DEFAULT_SSM_PROTECT))
    """fnmatch pattern -> bits (int) or float dtype ("fp16", "bf16", "fp32"); first match wins."""
    control_patterns: tuple[str, ...] = CONTROL_PATTERNS
    """Name fragments of control tensors kept fp32 when small."""
    passthrough_max_numel: int = 65_536
    """Float tensors with at most this many elements are stored as floats."""
    gptq_damp: float = 0.01
    """GPTQ damping, as a fraction of mean(diag H)."""
    gptq_block_size: int = 128
    """GPTQ lazy-update block (columns)."""
    gptq_act_order: bool = True
    """GPTQ column order by decreasing diag(H), as the records do."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise GolfError(f"quant scheme: method={self.method!r} is unknown; use one of {', '.join(METHODS)}")
        if self.method == "int8":
            self.bits = 8
        elif self.method == "int6":
            self.bits = 6
        for fname in ("bits", "embed_bits"):
            v = getattr(self, fname)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 2 <= v <= 8):
                raise GolfError(f"quant scheme: {fname}={v!r} is out of range; use an integer from 2 to 8")
        if self.clip not in CLIP_METHODS:
            raise GolfError(f"quant scheme: clip={self.clip!r} is unknown; use one of {', '.join(CLIP_METHODS)}")
        if not 0.0 < float(self.percentile) <= 100.0:
            raise GolfError(f"quant scheme: percentile={self.percentile} must be in (0, 100]")
        for k in [self.sdclip_k, *self.sdclip_k_by_role.values()]:
            if not float(k) > 0:
                raise GolfError(f"quant scheme: sdclip k={k} must be positive")
        self.control_patterns = tuple(self.control_patterns)
        self.protect = dict(self.protect)
        for pat, v in self.protect.items():
            ok = (isinstance(v, int) and not isinstance(v, bool) and 2 <= v <= 8) or v in FLOAT_STORE_DTYPES
            if not ok:
                raise GolfError(
                    f"quant scheme: protect[{pat!r}]={v!r} is invalid; use bits 2..8 or one of "
                    f"{', '.join(FLOAT_STORE_DTYPES)}"
                )
        if int(self.passthrough_max_numel) < 0:
            raise GolfError("quant scheme: passthrough_max_numel must be >= 0")
        if not float(self.gptq_damp) > 0 or int(self.gptq_block_size) < 1:
            raise GolfError("quant scheme: gptq_damp must be > 0 and gptq_block_size >= 1")

    # -- (de)serialisation ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["control_patterns"] = list(self.control_patterns)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantScheme:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise GolfError(f"quant scheme: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    # -- per-tensor decision ----------------------------------------------------------------------------------
    def protection(self, name: str) -> str | int | None:
        """The value of the first ``protect`` pattern matching ``name`` (fnmatch, case-sensitive), else None."""
        for pat, v in self.protect.items():
            if fnmatch.fnmatchcase(name, pat):
                return v
        return None

    def sdclip_k_for(self, role: str) -> float:
        return float(self.sdclip_k_by_role.get(role, self.sdclip_k_by_role.get(role_base(role), self.sdclip_k)))

    def rule_for(self, name: str, numel: int | None = None, is_float: bool = True) -> TensorRule:
        """How ``name`` is stored. ``numel`` decides the small-tensor rule (ignored for ``param::group`` pieces)."""
        if not is_float:
            return TensorRule("raw", "nonfloat")
        if self.method == "none":
            return TensorRule("raw", "none")
        prot = self.protection(name)
        if isinstance(prot, str):
            return TensorRule("float", "protected", store_dtype=prot)
        is_piece = "::" in name
        if not is_piece and numel is not None and numel <= self.passthrough_max_numel:
            if matches_any(name, self.control_patterns):
                return TensorRule("float", "control", store_dtype="fp32")
            return TensorRule("small", "small")
        role = tensor_role(name, self.control_patterns)
        if prot is not None:
            bits = int(prot)
        elif role_base(role) == "embedding" and self.embed_bits is not None:
            bits = self.embed_bits
        else:
            bits = self.bits
        clip = "int8_baseline" if (self.method == "int8" and bits == 8) else self.clip
        return TensorRule(
            "int",
            "protected" if prot is not None else "quantized",
            bits=bits,
            clip=clip,
            sdclip_k=self.sdclip_k_for(role),
            percentile=float(self.percentile),
            gptq=self.method == "gptq",
        )


# -----------------------------------------------------------------------------
# Quantized state
# -----------------------------------------------------------------------------


@dataclass
class QuantizedState:
    """Quantized tensors ready for ``safetensors.torch.save`` (no shared storage) plus JSON-able metadata.

    ``meta`` maps names to entries (insertion order = state-dict order). Entry kinds:

    * ``stored``: tensor at ``tensors[name]`` in ``store_dtype``; restored to ``dtype``;
    * ``int_per_row``: codes ``tensors[name + "#q"]`` (int8) and fp16 ``tensors[name + "#scale"]`` (one per row);
    * ``int_per_tensor``: codes and a 0-d fp32 scale under the same keys;
    * ``split``: a parameter cut into row-group ``pieces`` (names ``param::group``, each its own entry carrying
      ``parent``, ``group``, ``start``, ``end``);
    * ``alias``: same tensor as ``of`` (tied weights).

    Every entry has ``dtype`` (original), ``shape``, ``role`` and ``reason``; quantized ones have ``bits``,
    ``clip`` and ``algo`` (``rtn`` | ``gptq``).
    """

    tensors: dict[str, Tensor]
    meta: dict[str, dict[str, Any]]
    scheme: dict[str, Any]
    stats: dict[str, int] = field(default_factory=dict)
    format: str = QUANT_FORMAT

    @property
    def payload_bytes(self) -> int:
        """Raw bytes of all stored tensors (before safetensors framing and compression)."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def storage_entries(self) -> list[tuple[str, dict[str, Any], list[str]]]:
        """``(name, meta, tensor keys)`` of every entry that owns stored tensors (pieces yes, parents/aliases no)."""
        out = []
        for name, m in self.meta.items():
            if m["kind"] in ("split", "alias"):
                continue
            out.append((name, m, _keys_of(name, m)))
        return out

    def to_header(self) -> dict[str, Any]:
        return {"format": self.format, "scheme": self.scheme, "tensors": self.meta, "stats": self.stats}

    @classmethod
    def from_header(cls, header: dict[str, Any], tensors: dict[str, Tensor]) -> QuantizedState:
        """Rebuild from :meth:`to_header` output and the loaded tensors; raises ValueError if inconsistent."""
        if not isinstance(header, dict) or header.get("format") != QUANT_FORMAT:
            raise ValueError(f"quant format {header.get('format') if isinstance(header, dict) else None!r} "
                             f"is not {QUANT_FORMAT!r}")
        qs = cls(tensors=tensors, meta=header.get("tensors"), scheme=header.get("scheme") or {},
                 stats=header.get("stats") or {})
        qs.validate()
        return qs

    def validate(self) -> None:
        """Check that the metadata is consistent with the stored tensors (ValueError otherwise)."""
        if not isinstance(self.meta, dict):
            raise ValueError("tensor metadata is not a mapping")
        used: set[str] = set()
        for name, m in self.meta.items():
            if not isinstance(m, dict) or "kind" not in m:
                raise ValueError(f"metadata of {name!r} has no kind")
            kind = m["kind"]
            shape = m.get("shape")
            if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
                raise ValueError(f"metadata of {name!r} has a bad shape {shape!r}")
            dtype_from_name(m.get("dtype", "?"))
            if kind == "alias":
                if m.get("of") not in self.meta:
                    raise ValueError(f"alias {name!r} points to unknown {m.get('of')!r}")
                continue
            if kind == "split":
                rows = 0
                for p in m.get("pieces", []):
                    pm = self.meta.get(p)
                    if not isinstance(pm, dict) or pm.get("parent") != name:
                        raise ValueError(f"piece {p!r} of {name!r} is missing")
                    if pm.get("start") != rows or not isinstance(pm.get("end"), int) or pm["end"] < rows:
                        raise ValueError(f"pieces of {name!r} do not tile its rows")
                    rows = pm["end"]
                if not shape or rows != shape[0]:
                    raise ValueError(f"pieces of {name!r} cover {rows} rows, shape is {shape}")
                continue
            if kind not in ("stored", "int_per_row", "int_per_tensor"):
                raise ValueError(f"metadata of {name!r} has unknown kind {kind!r}")
            for key in _keys_of(name, m):
                if key not in self.tensors:
                    raise ValueError(f"tensor {key!r} is missing")
                used.add(key)
            if kind == "stored":
                t = self.tensors[name]
                if list(t.shape) != shape or dtype_name(t.dtype) != m.get("store_dtype"):
                    raise ValueError(f"tensor {name!r} does not match its metadata")
            else:
                q, s = self.tensors[name + "#q"], self.tensors[name + "#scale"]
                if q.dtype != torch.int8 or list(q.shape) != shape:
                    raise ValueError(f"codes of {name!r} do not match its metadata")
                if kind == "int_per_row" and (len(shape) < 1 or s.numel() != shape[0]):
                    raise ValueError(f"scales of {name!r} do not match its rows")
                if kind == "int_per_tensor" and s.numel() != 1:
                    raise ValueError(f"scale of {name!r} is not a scalar")
        extra = set(self.tensors) - used
        if extra:
            raise ValueError(f"tensors without metadata: {sorted(extra)[:3]}")


def _keys_of(name: str, m: dict[str, Any]) -> list[str]:
    if m["kind"] == "stored":
        return [name]
    if m["kind"] in ("int_per_row", "int_per_tensor"):
        return [name + "#q", name + "#scale"]
    return []


# -----------------------------------------------------------------------------
# Quantize / dequantize
# -----------------------------------------------------------------------------


def _normalize_groups(name: str, groups: Any, rows: int) -> list[tuple[str, int, int]]:
    try:
        out = sorted(((str(g), int(a), int(b)) for g, a, b in groups), key=lambda x: x[1])
    except (TypeError, ValueError) as e:
        raise GolfError(f"row groups of {name}: expected [(role, start_row, end_row), ...], got {groups!r} ({e})")
    pos = 0
    for g, a, b in out:
        if a != pos or b <= a:
            raise GolfError(
                f"row groups of {name} must tile rows 0..{rows} without gaps or overlaps; "
                f"group {g!r} is [{a}, {b}) after row {pos}; fix the model's row-group map"
            )
        pos = b
    if pos != rows:
        raise GolfError(f"row groups of {name} cover {pos} rows but the tensor has {rows}; fix the row-group map")
    if len({g for g, _, _ in out}) != len(out):
        raise GolfError(f"row groups of {name} repeat a group name; fix the row-group map")
    return out


def _alias_key(t: Tensor):
    if t.numel() == 0:
        return None
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


def _store(
    name: str, t: Tensor, rule: TensorRule, tensors: dict[str, Tensor], H: Tensor | None, gptq_kw: dict[str, Any]
) -> dict[str, Any]:
    """Quantize/store one tensor or piece under ``name``; returns its metadata entry."""
    m: dict[str, Any] = {"dtype": dtype_name(t.dtype), "shape": list(t.shape), "reason": rule.reason}
    if rule.kind in ("raw", "small", "float"):
        if rule.kind == "float":
            store = FLOAT_STORE_DTYPES[rule.store_dtype]
        elif rule.kind == "small" and t.dtype in (torch.float32, torch.bfloat16):
            store = torch.float16
        else:
            store = t.dtype
        tensors[name] = t.to(dtype=store, copy=True).contiguous()
        m.update(kind="stored", store_dtype=dtype_name(store))
        return m
    bits = int(rule.bits)
    m.update(bits=bits, clip=rule.clip, algo="rtn")
    if rule.clip == "sdclip":
        m["sdclip_k"] = rule.sdclip_k
    elif rule.clip == "percentile":
        m["percentile"] = rule.percentile
    if t.ndim == 2:
        if rule.clip == "int8_baseline":
            q, s = quantize_int8_per_row(t)
        else:
            w = t.float()
            s = row_scales(w, bits, rule.clip, sdclip_k=rule.sdclip_k, percentile=rule.percentile)
            q = None
            if rule.gptq and H is not None and tuple(H.shape) == (w.shape[1], w.shape[1]) and w.numel():
                # GPTQ's column loop runs where the Hessian was collected (the GPU after a GPU fit): on the CPU it
                # took 40 s of 64 cores for 25M parameters, and many minutes when several runs shared those cores.
                q = gptq_quantize(w.to(H.device), H, s, bits, **gptq_kw)
                if q is not None:
                    q = q.cpu()
                    m["algo"] = "gptq"
            if q is None:
                q = quantize_with_scales(w, s, bits)
        m["kind"] = "int_per_row"
    else:
        if rule.clip == "int8_baseline":
            q, s = quantize_int8_per_tensor(t)
        else:
            q, s = quantize_per_tensor(t, bits, rule.clip, sdclip_k=rule.sdclip_k, percentile=rule.percentile)
        m["kind"] = "int_per_tensor"
    tensors[name + "#q"] = q.contiguous()
    tensors[name + "#scale"] = s.contiguous()
    return m


def quantize_state_dict(
    sd: dict[str, Tensor],
    scheme: QuantScheme | None = None,
    row_groups: dict[str, list[tuple[str, int, int]]] | None = None,
    hessians: dict[str, Tensor] | None = None,
) -> QuantizedState:
    """Quantize a state dict under ``scheme`` (default: the baseline int8).

    Args:
        sd: name -> tensor (any device; results are on CPU).
        scheme: the :class:`QuantScheme`.
        row_groups: ``{param: [(group, start_row, end_row), ...]}`` tiling each listed parameter's rows.
        hessians: ``{param: H}`` (``Σ xᵀx`` over the inputs, ``[cols, cols]``) for ``method="gptq"``;
            row-group pieces use their parent's ``H``. Parameters without one fall back to round-to-nearest
            (``meta[name]["algo"]`` says which; ``stats["num_gptq"]`` counts the GPTQ ones).
    """
    scheme = scheme or QuantScheme()
    row_groups = row_groups or {}
    hessians = hessians or {}
    tensors: dict[str, Tensor] = {}
    meta: dict[str, dict[str, Any]] = {}
    seen: dict[Any, str] = {}
    gptq_kw = dict(damp=scheme.gptq_damp, block_size=scheme.gptq_block_size, act_order=scheme.gptq_act_order)
    stats = dict.fromkeys(("param_count", "num_tensors", "num_quantized", "num_gptq", "baseline_tensor_bytes"), 0)
    for name, tensor in sd.items():
        if not isinstance(tensor, Tensor):
            raise GolfError(f"state dict entry {name!r} is a {type(tensor).__name__}, not a tensor; pass a state_dict")
        if "::" in name or "#" in name:
            raise GolfError(f"state dict key {name!r} contains '::' or '#', which golf reserves; rename the parameter")
        t = tensor.detach()
        key = _alias_key(t)
        if key is not None and key in seen:
            meta[name] = {"kind": "alias", "of": seen[key], "dtype": dtype_name(t.dtype), "shape": list(t.shape),
                          "role": tensor_role(name, scheme.control_patterns), "reason": "tied"}
            continue
        if key is not None:
            seen[key] = name
        t = t.to("cpu").contiguous()
        stats["param_count"] += t.numel()
        stats["num_tensors"] += 1
        stats["baseline_tensor_bytes"] += t.numel() * t.element_size()
        rule = scheme.rule_for(name, t.numel(), t.is_floating_point())
        H = hessians.get(name)
        groups = row_groups.get(name)
        if groups and rule.kind == "int" and t.ndim == 2:
            pieces = _normalize_groups(name, groups, t.shape[0])
            entry = {"kind": "split", "dtype": dtype_name(t.dtype), "shape": list(t.shape),
                     "role": tensor_role(name, scheme.control_patterns), "reason": "row_groups", "pieces": []}
            meta[name] = entry
            for g, a, b in pieces:
                pname = f"{name}::{g}"
                prule = scheme.rule_for(pname, b - a, True)
                pm = _store(pname, t[a:b], prule, tensors, H, gptq_kw)
                pm.update(role=tensor_role(pname, scheme.control_patterns), parent=name, group=g, start=a, end=b)
                meta[pname] = pm
                entry["pieces"].append(pname)
                stats["num_quantized"] += pm["kind"].startswith("int")
                stats["num_gptq"] += pm.get("algo") == "gptq"
        else:
            m = _store(name, t, rule, tensors, H, gptq_kw)
            m["role"] = tensor_role(name, scheme.control_patterns)
            meta[name] = m
            stats["num_quantized"] += m["kind"].startswith("int")
            stats["num_gptq"] += m.get("algo") == "gptq"
    qs = QuantizedState(tensors=tensors, meta=meta, scheme=scheme.to_dict(), stats=stats)
    qs.stats["payload_bytes"] = qs.payload_bytes
    return qs


def _dequantize_entry(name: str, m: dict[str, Any], tensors: dict[str, Tensor]) -> Tensor:
    dtype = dtype_from_name(m["dtype"])
    kind = m["kind"]
    if kind == "stored":
        out = tensors[name].to(dtype=dtype, copy=True).contiguous()
    elif kind == "int_per_row":
        out = dequantize_per_row(tensors[name + "#q"], tensors[name + "#scale"], dtype)
    elif kind == "int_per_tensor":
        out = dequantize_per_tensor(tensors[name + "#q"], tensors[name + "#scale"], dtype)
    else:
        raise GolfError(f"quantized tensor {name!r} has unknown kind {kind!r}; re-export the artifact with golf fit")
    if list(out.shape) != list(m["shape"]):
        raise GolfError(f"quantized tensor {name!r} has shape {list(out.shape)}, metadata says {m['shape']}")
    return out


def dequantize_state_dict(qs: QuantizedState) -> dict[str, Tensor]:
    """Float state dict with the original names, shapes and dtypes (aliases share one tensor)."""
    out: dict[str, Tensor] = {}
    for name, m in qs.meta.items():
        if "parent" in m:
            continue
        kind = m["kind"]
        if kind == "alias":
            out[name] = out[m["of"]]
        elif kind == "split":
            full = torch.empty(m["shape"], dtype=dtype_from_name(m["dtype"]))
            for p in m["pieces"]:
                pm = qs.meta[p]
                full[pm["start"] : pm["end"]] = _dequantize_entry(p, pm, qs.tensors)
            out[name] = full
        else:
            out[name] = _dequantize_entry(name, m, qs.tensors)
    return out
