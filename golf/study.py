"""`golf study`: reproduce the seed write-up's SSM findings (ssm.md §1.7-1.10) with golf, on any given hardware.

    golf study --out DIR [--budget-seconds S] [--studies arch vocab protect calibration in_proj_optimizer compress]
               [--config BASE.yaml] [--data-root data] [--vocabs 1024 4096 8192] [--accelerator cpu|gpu] [--devices N]
               [--gpus 0 1 2 3 | --parallel N] [--seeds 1337 1338 ...]

Every *arm* is one ``golf fit`` of a config derived from BASE.yaml (default ``configs/study_cpu.yaml``), all with the
same wall-clock budget (golf's ``WallClockBudget``), seed and data order; arms shared by several studies are trained
once. ``--gpus`` trains several arms at once, each alone on its own GPU(s); ``--parallel N`` does the same with CPU
subprocesses. Studies:

* ``arch``: the base hybrid vs a transformer of the same depth and width whose MLP is widened until both have the
  same parameter count (within ±2%; the exact counts are reported);
* ``vocab``: both architectures at each of ``--vocabs`` (data in ``{data-root}/{corpus}_sp{N}``, made with
  ``golf data prepare`` when missing);
* ``layout``: two hybrid layouts at each of ``--vocabs`` (``--layouts``; default the base and the base with its first
  attention block made an SSM block: the seed's 2 -> 1 attention decision that flipped sign between SP4096 and SP8192);
* ``protect``: int6 export of the trained hybrid with the default dynamics protection (dd_A/dd_dt rows of in_proj at
  int8) vs ``protect: {}``; both exports come from the *same* trained weights, so the difference is quantization only;
* ``calibration``: int6 round-to-nearest vs GPTQ with Hessians from training batches vs from self-generated sequences
  (the fallback the seed had to use, ssm.md §1.7), same weights, same number of calibration tokens;
* ``in_proj_optimizer``: SSM in_proj under Muon vs Adam (``model.optimizer.ssm_in_proj``);
* ``compress``: compressed bytes per parameter of ``ssm_in_proj:*`` vs ``attn_qkv`` after int6, and remedies measured
  against it (lossless: role-grouped streams, zig-zag codes, transposed codes, byte shuffle; lossy: SDClip k of
  in_proj, int5 in_proj), each with the bytes saved and the BPB of the artifact read back from disk.

DIR gets ``study.json``, ``study.md``, PNG plots, ``configs/<arm>.yaml`` and ``runs/<arm>/version_0/`` (each fit's
``report.json``, ``metrics.csv``, ``model.golf``, and ``study_extra.json`` for variants and the compress analysis).
study.json and study.md are rewritten as each arm finishes (``"complete": false`` until the last), so a study cut off
midway keeps the finished arms' tables and the validation curves of the others. An arm whose run directory already
holds a report made from the same config is not trained again (``--fresh`` retrains). ``--plan`` writes the configs
and prints the arms without training. ``--seeds`` trains the arms of the training comparisons (arch, vocab,
in_proj_optimizer) once per seed (``<arm>_seed<S>`` after the first) and reports each difference per seed with its
mean and spread; export comparisons (protect, calibration, compress) are exact for given weights and use the first.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import lzma
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from golf.errors import GolfError

STUDIES = ("arch", "vocab", "layout", "protect", "calibration", "in_proj_optimizer", "compress")
SEEDED_STUDIES = ("arch", "vocab", "layout", "in_proj_optimizer")  # training comparisons: repeated per --seeds
DEFAULT_CONFIG = "configs/study_cpu.yaml"
DEFAULT_VOCABS = (1024, 4096, 8192)
DEFAULT_SDCLIP_KS = (2.5, 3.0, 4.0, 6.0, 12.85)
MATCH_TOLERANCE = 0.02
#: Exit codes of an interrupted `golf fit` (Ctrl-C, SIGTERM; negative: killed by that signal).
INTERRUPTED = (130, 143, -2, -15)
#: Roles shown in the tables (LZMA bytes/parameter), in this order; ssm_in_proj sums all its row groups.
TABLE_ROLES = ("embedding", "attn_qkv", "attn_out", "mlp", "ssm_in_proj", "ssm_out_proj")


# =====================================================================================================================
# Callbacks injected into every arm's fit config
# =====================================================================================================================


class StudyClock(Callback):
    """Logs ``train_seconds`` (the WallClockBudget's clock: training only, validation excluded) on every step, so that
    metrics.csv alone gives BPB against wall-clock."""

    def __init__(self) -> None:
        self._t0: float | None = None
        self._spent = 0.0

    def _elapsed(self, trainer) -> float:
        from golf.callbacks.budget import find_budget

        budget = find_budget(trainer)
        if budget is not None:
            return budget.elapsed()
        return self._spent + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def on_validation_start(self, trainer, pl_module) -> None:
        if self._t0 is not None:
            self._spent += time.perf_counter() - self._t0
            self._t0 = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # a host tensor: a Python float would become a device tensor through a blocking copy every step
        pl_module.log("train_seconds", torch.tensor(float(self._elapsed(trainer))), on_step=True, on_epoch=False)


class StudyExtras(Callback):
    """After the arm's Finalize: extra exports of the same trained weights (``variants``: Finalize init_args
    overrides, each scored through golf's own export -> read back -> evaluate path) and, with ``compress``, the
    compressibility analysis of ssm.md §1.8 with its remedies. Writes ``study_extra.json`` into the run directory."""

    def __init__(
        self,
        variants: dict[str, Any] | None = None,
        compress: bool = False,
        sdclip_ks: list[float] | None = None,
        output: str = "study_extra.json",
    ) -> None:
        """
        Args:
            variants: name -> Finalize init_args overrides (``quant`` is merged into the arm's scheme).
            compress: Run the in_proj-vs-attention compressibility analysis and its remedies.
            sdclip_ks: SDClip k values tried for in_proj in the compress analysis.
            output: File name of the results in the run directory.
        """
        self.variants = dict(variants or {})
        self.compress = compress
        self.sdclip_ks = [float(k) for k in (sdclip_ks or DEFAULT_SDCLIP_KS)]
        self.output = output

    def on_train_end(self, trainer, pl_module) -> None:
        from golf.callbacks.finalize import Finalize

        base = next((c for c in trainer.callbacks if isinstance(c, Finalize)), None)
        if base is None:
            raise GolfError("golf study: the arm's fit config has no golf.callbacks.Finalize; add one to the base "
                            "config")
        out: dict[str, Any] = {"variants": {}, "compress": None, "complete": False}
        path = base.out_dir / self.output

        def write() -> None:  # after every export, so an arm cut off midway keeps the exports it finished
            if trainer.is_global_zero:
                path.write_text(json.dumps(out, indent=2, default=_json_default) + "\n")

        for name, over in self.variants.items():
            t0 = time.perf_counter()
            fin = _variant_finalize(base, over, base.out_dir / "variants" / name)
            fin.setup(trainer, pl_module, "fit")
            try:
                fin.on_train_end(trainer, pl_module)
            except GolfError as e:  # a violated constraint still leaves a report
                rank_zero_info(f"golf study: variant {name}: {e}")
            if fin.report is not None:
                from golf.artifact import read_artifact

                report = _slim_report(fin.report)
                qs, _ = read_artifact(report["artifact"]["path"])
                report["compressibility"] = {"by_role": lzma_by_role(qs), "compressors": ["lzma"]}
                out["variants"][name] = {"overrides": over, "report": report, "seconds": time.perf_counter() - t0}
                write()
        if self.compress:
            out["compress"] = compress_analysis(trainer, pl_module, base, self.sdclip_ks)
        out["complete"] = True
        write()


def _variant_finalize(base, over: dict[str, Any], out_dir: Path):
    from golf.callbacks.finalize import Finalize
    from golf.quant import QuantScheme

    over = dict(over)
    quant = {**base.quant.to_dict(), **(over.pop("quant", None) or {})}
    if quant.get("method") in ("int6", "int8"):
        quant.pop("bits", None)  # fixed by the method
    kw = dict(compressor=base.compressor, byte_shuffle=base.byte_shuffle, calibration="none",
              calibration_batches=base.calibration_batches, calibration_seqs=base.calibration_seqs,
              calibration_seq_len=base.calibration_seq_len, calibration_temperature=base.calibration_temperature,
              eval=base.eval)
    kw.update(over)
    # The per-role table of a variant is LZMA only (lzma_by_role, from the artifact read back), not all four
    # compressors: the variants differ in quantization, and LZMA is the compressor of finding 1.
    kw["compressibility_report"] = False
    return Finalize(quant=QuantScheme.from_dict(quant), output_dir=str(out_dir), **kw)


def _slim_report(report: dict[str, Any]) -> dict[str, Any]:
    """A Finalize report without the per-tensor rows (the per-role summary stays)."""
    r = copy.deepcopy(report)
    comp = r.get("compressibility")
    if isinstance(comp, dict):
        comp.pop("tensors", None)
    return r


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    return str(o)


# =====================================================================================================================
# Compressibility analysis (finding 1) and remedies
# =====================================================================================================================


def _entry_parts(qs, name: str, m: dict[str, Any]) -> tuple[torch.Tensor | None, bytes]:
    """(int8 codes or None, the other bytes: scales or stored values) of one storage entry."""
    from golf.compress import tensor_bytes

    if m["kind"] in ("int_per_row", "int_per_tensor"):
        return qs.tensors[name + "#q"], tensor_bytes(qs.tensors[name + "#scale"])
    return None, tensor_bytes(qs.tensors[name])


def _code_bytes(codes: torch.Tensor, transform: str) -> bytes:
    c = codes.to(torch.int16)
    if transform == "transpose" and c.ndim == 2:
        c = c.t().contiguous()
    if transform == "zigzag":
        c = (c << 1) ^ (c >> 15)  # 0,-1,1,-2,2,... -> 0,1,2,3,4,...: small magnitudes become small bytes
        return c.to(torch.uint8).numpy().tobytes()
    return c.to(torch.int8).numpy().tobytes()


def _lzma_len(data: bytes) -> int:
    """Length of golf's LZMA (xz, preset 9 | EXTREME). The dictionary is cut to the next power of two >= the input
    (at most the preset's 64 MiB): the same compressed size for such inputs, without allocating the preset's ~700 MB
    match finder on every small tensor."""
    dict_size = min(max(1 << 12, 1 << max(len(data) - 1, 1).bit_length()), 64 << 20)
    filters = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": dict_size}]
    return len(lzma.compress(data, format=lzma.FORMAT_XZ, filters=filters))


def _lzma_lens(chunks: list[bytes]) -> list[int]:
    """:func:`_lzma_len` of each chunk, on a thread pool of torch's thread count (CPython's lzma releases the GIL
    while compressing; concurrent study arms split the cores through OMP_NUM_THREADS, which sets that count)."""
    if len(chunks) < 2:
        return [_lzma_len(c) for c in chunks]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(torch.get_num_threads(), len(chunks)))) as pool:
        return list(pool.map(_lzma_len, chunks))


def _entropy_bits(codes: list[torch.Tensor]) -> tuple[float, int]:
    """Order-0 entropy (bits per code) of the pooled codes and the number of distinct code values used."""
    if not codes:
        return float("nan"), 0
    flat = torch.cat([c.flatten().to(torch.int16) for c in codes])
    _, counts = torch.unique(flat, return_counts=True)
    p = counts.double() / counts.sum()
    return float(-(p * p.log2()).sum()), int(counts.numel())


def lzma_by_role(qs) -> list[dict[str, Any]]:
    """``[{role, params, lzma_bytes}]``: each stored entry compressed alone (golf.report_compress's accounting)."""
    acc: dict[str, dict[str, Any]] = {}
    entries, chunks = [], []
    for name, m, _ in qs.storage_entries():
        codes, other = _entry_parts(qs, name, m)
        entries.append(m)
        chunks.append((_code_bytes(codes, "none") if codes is not None else b"") + other)
    for m, n in zip(entries, _lzma_lens(chunks)):
        a = acc.setdefault(m.get("role", "other"), {"role": m.get("role", "other"), "params": 0, "lzma_bytes": 0})
        a["params"] += math.prod(m["shape"]) if m["shape"] else 1
        a["lzma_bytes"] += n
    return list(acc.values())


def role_streams(qs, transform: str = "none", only_in_proj: bool = False) -> dict[str, Any]:
    """LZMA bytes of every role (only the SSM in_proj roles with ``only_in_proj``) under three accountings: per tensor
    (each entry compressed alone, as ``golf.report_compress`` counts), role-grouped (all codes of a role
    concatenated, then all its scales, one stream) and, for the int roles, the order-0 entropy bound of the codes."""
    from golf.quant.roles import role_base

    entries = []
    for name, m, _ in qs.storage_entries():
        role = m.get("role", "other")
        if only_in_proj and not role.startswith("ssm_in_proj"):
            continue
        codes, other = _entry_parts(qs, name, m)
        entries.append((m, role, codes, other, _code_bytes(codes, transform) if codes is not None else b""))
    per_tensor_bytes = _lzma_lens([cbytes + other for _, _, _, other, cbytes in entries])
    by_role: dict[str, dict[str, Any]] = {}
    for (m, role, codes, other, cbytes), per_tensor in zip(entries, per_tensor_bytes):
        keys = [role] + (["ssm_in_proj"] if role.startswith("ssm_in_proj:") else [])
        params = math.prod(m["shape"]) if m["shape"] else 1
        for k in keys:
            a = by_role.setdefault(k, {"role": k, "base": role_base(k), "params": 0, "per_tensor_bytes": 0,
                                       "_codes": [], "_code_bytes": [], "_other": []})
            a["params"] += params
            a["per_tensor_bytes"] += per_tensor
            if codes is not None:
                a["_codes"].append(codes)
                a["_code_bytes"].append(cbytes)
            a["_other"].append(other)
    out = {}
    from golf.report_compress import _role_order

    ordered = sorted(by_role.items(), key=lambda kv: _role_order(kv[0]))
    grouped_bytes = _lzma_lens([b"".join(a["_code_bytes"]) + b"".join(a["_other"]) for _, a in ordered])
    for (k, a), grouped in zip(ordered, grouped_bytes):
        ent, levels = _entropy_bits(a["_codes"])
        out[k] = {
            "role": k, "params": a["params"],
            "per_tensor_bytes": a["per_tensor_bytes"], "per_tensor_bpp": a["per_tensor_bytes"] / max(a["params"], 1),
            "grouped_bytes": grouped, "grouped_bpp": grouped / max(a["params"], 1),
            "code_entropy_bits": ent, "code_levels_used": levels,
            "code_abs_mean": float(torch.cat([c.flatten().float().abs() for c in a["_codes"]]).mean())
            if a["_codes"] else None,
        }
    return out


def _is_in_proj(key: str) -> bool:
    return key.split("#", 1)[0].split("::", 1)[0].endswith("in_proj.weight")


def _with_in_proj_from(qs_a, qs_b):
    """``qs_a`` with every SSM in_proj entry (parent, pieces, codes, scales) taken from ``qs_b``: a per-role choice
    that a single QuantScheme cannot express (its clip rule is global). Dequantization reads only per-entry metadata."""
    from golf.quant import QuantizedState

    tensors = {k: v for k, v in qs_a.tensors.items() if not _is_in_proj(k)}
    tensors.update({k: v for k, v in qs_b.tensors.items() if _is_in_proj(k)})
    meta = {k: (qs_b.meta[k] if _is_in_proj(k) else v) for k, v in qs_a.meta.items()}
    qs = QuantizedState(tensors=tensors, meta=meta, scheme=dict(qs_a.scheme), stats=dict(qs_a.stats))
    qs.validate()
    qs.stats["payload_bytes"] = qs.payload_bytes
    return qs


def compress_analysis(trainer, pl_module, base, sdclip_ks: list[float]) -> dict[str, Any]:
    """Finding 1 on the trained weights, plus remedies. Every lossy remedy is written as an artifact, read back from
    disk and scored on the full val split, as Finalize does."""
    import torch.distributed as dist

    from golf.artifact import write_artifact
    from golf.eval import TTTConfig, evaluate
    from golf.export import load_backbone, model_config
    from golf.quant import DEFAULT_SSM_PROTECT, QuantScheme, quantize_state_dict

    t_start = time.perf_counter()
    model, dm, device = pl_module.model, trainer.datamodule, pl_module.device
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    groups = model.row_groups()
    main = base.quant.to_dict()
    int6 = {**main, "method": "int6"}
    int6.pop("bits", None)
    if "protect" not in int6:
        int6["protect"] = dict(DEFAULT_SSM_PROTECT)
    out_dir = base.out_dir / "compress"
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    meta = {"model_config": model_config(model), "tokenizer_sha256": dm.tokenizer_sha256, "seq_len": dm.seq_len}
    val = dm.load_val()
    eval_cfg = replace(base.eval, ttt=TTTConfig())

    def scheme(**over) -> QuantScheme:
        d = {**int6, **over}
        return QuantScheme.from_dict(d)

    def score(name: str, qs, byte_shuffle: bool = False) -> dict[str, Any]:
        path = out_dir / f"{name}.golf"
        info = None
        if trainer.is_global_zero:
            out_dir.mkdir(parents=True, exist_ok=True)
            info = write_artifact(path, qs, meta, compressor=base.compressor, byte_shuffle=byte_shuffle)
        if distributed:
            dist.barrier()
        rt, _ = load_backbone(path, device)
        res = evaluate(rt, val, dm.seq_len, dm.byte_luts, device, eval_cfg, batch_tokens=dm.val_forward_tokens)
        return {"artifact_bytes": info.model_bytes if info else None,
                "header_bytes": info.header_bytes if info else None,
                "payload_bytes": info.model_bytes - info.header_bytes if info else None, "post_bpb": res.val_bpb}

    def in_proj_bytes(qs) -> tuple[int, int]:
        st = role_streams(qs, only_in_proj=True)
        a = st.get("ssm_in_proj") or {"per_tensor_bytes": 0, "params": 0}
        return a["per_tensor_bytes"], a["params"]

    pre = evaluate(model, val, dm.seq_len, dm.byte_luts, device, eval_cfg, batch_tokens=dm.val_forward_tokens).val_bpb

    # --- the measurement: golf's default int6 export (row groups + dynamics protection) --------------------------
    qs_golf = quantize_state_dict(state, scheme(), row_groups=groups)
    roles = {t: role_streams(qs_golf, t) for t in ("none", "zigzag", "transpose")}
    base_roles = roles["none"]
    qkv = base_roles.get("attn_qkv")
    finding: dict[str, Any] = {"roles": base_roles}
    if qkv and "ssm_in_proj" in base_roles:
        ratios = {}
        for k, r in base_roles.items():
            if k.startswith("ssm_in_proj"):
                ratios[k] = {"per_tensor": r["per_tensor_bpp"] / qkv["per_tensor_bpp"],
                             "grouped": r["grouped_bpp"] / qkv["grouped_bpp"]}
        finding["ratio_vs_attn_qkv"] = ratios
        big = {k: v for k, v in ratios.items() if k != "ssm_in_proj" and base_roles[k]["params"] >= 4096}
        if big:
            worst = max(big, key=lambda k: big[k]["grouped"])
            finding["worst_group"] = {"role": worst, **big[worst]}

    # --- lossless remedies: same codes, other byte streams (BPB unchanged) ----------------------------------------
    lossless = []
    ip = base_roles.get("ssm_in_proj")
    if ip:
        for t in ("none", "zigzag", "transpose"):
            r = roles[t]["ssm_in_proj"]
            lossless.append({"remedy": f"per-tensor streams, codes {t}", "in_proj_bytes": r["per_tensor_bytes"],
                             "in_proj_bpp": r["per_tensor_bpp"]})
            lossless.append({"remedy": f"role-grouped stream, codes {t}", "in_proj_bytes": r["grouped_bytes"],
                             "in_proj_bpp": r["grouped_bpp"]})
        for row in lossless:
            row["saved_bytes_vs_golf"] = ip["per_tensor_bytes"] - row["in_proj_bytes"]
            row["delta_bpb"] = 0.0
    # --- lossy remedies: each a real artifact, read back and scored ------------------------------------------------
    lossy: list[dict[str, Any]] = []

    def add(name: str, desc: str, qs, byte_shuffle: bool = False) -> None:
        b, p = in_proj_bytes(qs)
        s = score(name, qs, byte_shuffle)
        lossy.append({"remedy": name, "what": desc, "in_proj_bytes": b, "in_proj_bpp": b / max(p, 1), **s})

    add("golf_default", "int6, in_proj split into row groups, dd_A/dd_dt rows int8 (golf's default)", qs_golf)
    add("golf_default_byte_shuffle", "the same codes, Finalize(byte_shuffle=true)", qs_golf, byte_shuffle=True)
    add("no_protect", "int6, row groups, protect {}", quantize_state_dict(state, scheme(protect={}), row_groups=groups))
    whole_groups = {k: v for k, v in groups.items() if not k.endswith("in_proj.weight")}
    add("whole_in_proj", "int6, in_proj quantized and stored as one tensor (row_groups=None; protection cannot apply)",
        quantize_state_dict(state, scheme(), row_groups=whole_groups))
    add("in_proj_int5", "in_proj rows at int5 (dd_A/dd_dt int8), the rest int6",
        quantize_state_dict(state, scheme(protect={**dict(DEFAULT_SSM_PROTECT), "*.in_proj.weight::*": 5}),
                            row_groups=groups))
    for k in sdclip_ks:
        qs_k = quantize_state_dict(state, scheme(clip="sdclip", sdclip_k=float(k)), row_groups=groups)
        add(f"in_proj_sdclip_k{k:g}", f"in_proj rows clipped at k={k:g}·std(row) (SDClip), every other tensor as "
            f"golf_default", _with_in_proj_from(qs_golf, qs_k))
    ref = lossy[0]
    for row in lossy:
        row["saved_in_proj_bytes"] = ref["in_proj_bytes"] - row["in_proj_bytes"]
        if row["artifact_bytes"] is not None and ref["artifact_bytes"] is not None:
            row["saved_artifact_bytes"] = ref["artifact_bytes"] - row["artifact_bytes"]
        row["delta_bpb"] = row["post_bpb"] - ref["post_bpb"]
    return {
        "scheme": int6,
        "pre_quant_bpb": pre,
        "finding": finding,
        "roles_zigzag": roles["zigzag"],
        "roles_transpose": roles["transpose"],
        "lossless": lossless,
        "lossy": lossy,
        "seconds": time.perf_counter() - t_start,
    }


# =====================================================================================================================
# Arms: derived fit configs
# =====================================================================================================================


@dataclass
class Arm:
    name: str
    arch: str  # transformer | hybrid
    vocab: int
    data_dir: str
    desc: str
    model_over: dict[str, Any] = field(default_factory=dict)  # dotted model.* keys
    variants: dict[str, Any] = field(default_factory=dict)
    compress: bool = False
    seed: int | None = None  # seed_everything of the arm (None: the base config's)
    config: dict[str, Any] | None = None
    match: dict[str, Any] | None = None


def _callbacks(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    trainer = cfg.setdefault("trainer", {})
    cbs = trainer.get("callbacks") or []
    if isinstance(cbs, dict):
        cbs = [cbs]
    trainer["callbacks"] = cbs
    return cbs


def _find_cb(cfg: dict[str, Any], suffix: str) -> dict[str, Any] | None:
    for cb in _callbacks(cfg):
        if isinstance(cb, dict) and str(cb.get("class_path", "")).split(".")[-1] == suffix:
            cb.setdefault("init_args", {})
            return cb
    return None


def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    d[leaf] = value


def _get(d: dict[str, Any], dotted: str, default: Any = None) -> Any:
    for p in dotted.split("."):
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def count_parameters(cfg: dict[str, Any]) -> int:
    from golf.export import backbone_config_from_dict
    from golf.modules.backbone import Backbone

    bb = backbone_config_from_dict(copy.deepcopy(_get(cfg, "model.backbone", {}) or {}))
    vocab = int(_get(cfg, "data.vocab_size", 1024))
    with torch.device("meta"):
        model = Backbone(bb, vocab)
    return sum(p.numel() for p in model.parameters())


def match_transformer(hybrid_cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The transformer twin of a hybrid config: same depth, width, heads and everything else, every S block an A
    block, and the MLP hidden size (the same for all blocks) chosen so that the parameter counts match."""
    layers = str(_get(hybrid_cfg, "model.backbone.layers", ""))
    if "S" not in layers:
        raise GolfError(f"golf study arch: the base config's model.backbone.layers={layers!r} has no S block; "
                        f"pass a hybrid config (e.g. configs/study_cpu.yaml)")
    dim = int(_get(hybrid_cfg, "model.backbone.model_dim", 512))
    target = count_parameters(hybrid_cfg)
    cfg = copy.deepcopy(hybrid_cfg)
    _set(cfg, "model.backbone.layers", layers.replace("S", "A"))

    def with_hidden(h: int) -> int:
        _set(cfg, "model.backbone.mlp_mult", (h + 0.5) / dim)  # int((h + 0.5) / dim * dim) == h
        return count_parameters(cfg)

    h0 = int(float(_get(hybrid_cfg, "model.backbone.mlp_mult", 2.0)) * dim)
    p0, p1 = with_hidden(h0), with_hidden(h0 + 1)
    slope = max(p1 - p0, 1)
    h = max(1, h0 + round((target - p0) / slope))
    best = min((max(1, h + d) for d in (-1, 0, 1)), key=lambda x: abs(with_hidden(x) - target))
    params = with_hidden(best)
    rel = params / target - 1
    info = {
        "hybrid_parameters": target,
        "transformer_parameters": params,
        "relative_difference": rel,
        "hybrid_mlp_hidden": h0,
        "transformer_mlp_hidden": best,
        "transformer_mlp_mult": (best + 0.5) / dim,
        "how": (f"transformer = the hybrid's stack with every S block replaced by an A block ({layers} -> "
                f"{layers.replace('S', 'A')}), same model_dim {dim}, heads and training settings; its MLP hidden size "
                f"raised from {h0} to {best} in every block so that it has {params:,} parameters vs the hybrid's "
                f"{target:,} ({rel:+.2%})"),
    }
    if abs(rel) > MATCH_TOLERANCE:
        raise GolfError(f"golf study arch: could not match parameters within ±2% ({params:,} vs {target:,}); "
                        f"change the base config's model_dim or layers")
    return cfg, info


def _data_dirs(base: dict[str, Any], data_root: Path, vocabs: list[int]) -> tuple[str, dict[int, str]]:
    """(corpus stem, vocab -> data dir) for the vocab and layout studies: ``{data_root}/{stem}_sp{N}``, where stem
    comes from the base config's data_dir name (austen_sp1024 -> austen) and is ``austen`` (the embedded corpus)
    otherwise; the base config's own data_dir, as written, where that is the same folder."""
    base_dir = str(_get(base, "data.data_dir", "data/austen_sp1024"))
    base_vocab = int(_get(base, "data.vocab_size", 1024))
    m = re.fullmatch(r"(.+)_sp\d+", Path(base_dir).name)
    stem = m.group(1) if m else "austen"
    dirs = {v: data_root / f"{stem}_sp{v}" for v in vocabs}
    return stem, {v: base_dir if v == base_vocab and d.resolve() == Path(base_dir).resolve() else str(d)
                  for v, d in dirs.items()}


def prepare_data(data_dir: Path, vocab: int, stem: str) -> None:
    if (data_dir / "manifest.json").is_file():
        return
    from golf.data.prepare import main as prepare_main

    args = ["--out", str(data_dir), "--vocab", str(vocab)]
    if stem == "large":
        args += ["--corpus", "large"]
    elif stem != "austen":
        raise GolfError(f"{data_dir}: missing, and golf study can only make the embedded ('austen') or 'large' "
                        f"corpus; run `golf data prepare --vocab {vocab} --out {data_dir}` with your --input first")
    print(f"golf study: preparing {data_dir} (golf data prepare {' '.join(args)})", flush=True)
    code = prepare_main(args)
    if code:
        raise GolfError(f"golf data prepare {' '.join(args)} failed with exit code {code}")


def plan_arms(base: dict[str, Any], studies: list[str], args) -> tuple[dict[str, Arm], dict[str, list[str]], dict]:
    """The arms each study needs (deduplicated by name) and the arch matching info."""
    base_vocab = int(_get(base, "data.vocab_size", 1024))
    base_dir = str(_get(base, "data.data_dir"))
    base_name = Path(base_dir).name
    arms: dict[str, Arm] = {}
    per_study: dict[str, list[str]] = {}
    notes: dict[str, Any] = {}

    def arm(arch: str, vocab: int, data_dir: str, suffix: str = "", desc: str = "", **kw) -> str:
        name = f"{arch}_{Path(data_dir).name}{suffix}"
        if name not in arms:
            arms[name] = Arm(name, arch, vocab, data_dir, desc or f"{arch}, {Path(data_dir).name}", **kw)
        return name

    needs_hybrid = {"arch", "protect", "calibration", "in_proj_optimizer", "compress"}
    if "S" not in str(_get(base, "model.backbone.layers", "")) and set(studies) & (needs_hybrid | {"vocab", "layout"}):
        raise GolfError("golf study: the base config must be a hybrid (model.backbone.layers with S blocks)")
    hybrid = arm("hybrid", base_vocab, base_dir, desc=f"hybrid {_get(base, 'model.backbone.layers')}, {base_name}") \
        if set(studies) & needs_hybrid else None
    if "arch" in studies:
        t = arm("transformer", base_vocab, base_dir, desc=f"transformer, parameter-matched, {base_name}")
        per_study["arch"] = [t, hybrid]
    if {"vocab", "layout"} & set(studies):
        notes["vocab_stem"], dirs = _data_dirs(base, Path(args.data_root), args.vocabs)
    if "vocab" in studies:
        per_study["vocab"] = [arm(a, v, dirs[v]) for v in args.vocabs for a in ("transformer", "hybrid")]
    if "layout" in studies:
        base_layout = str(_get(base, "model.backbone.layers"))
        layouts = list(dict.fromkeys(args.layouts or [base_layout, base_layout.replace("A", "S", 1)]))
        if len(layouts) != 2 or any(set(x) - {"A", "S"} or "S" not in x for x in layouts):
            raise GolfError(f"golf study --layouts: give two hybrid layouts of A and S blocks (e.g. {base_layout} "
                            f"{base_layout.replace('A', 'S', 1)}); got {' '.join(layouts)}")
        names = []
        for v in args.vocabs:
            for layout in layouts:
                if layout == base_layout:
                    names.append(arm("hybrid", v, dirs[v]))  # the vocab study's hybrid arm, trained once for both
                else:
                    names.append(arm("hybrid", v, dirs[v], f"_{layout}", desc=f"hybrid {layout}, {Path(dirs[v]).name}",
                                     model_over={"model.backbone.layers": layout}))
        per_study["layout"] = names
        notes["layouts"] = layouts
    if "protect" in studies:
        arms[hybrid].variants.update({
            "int6_protect": {"quant": {"method": "int6", "protect": _default_protect()}},
            "int6_noprotect": {"quant": {"method": "int6", "protect": {}}},
        })
        per_study["protect"] = [hybrid]
    if "calibration" in studies:
        seq_len = int(_get(base, "data.seq_len", 1024))
        batches = 4
        tokens = batches * int(_get(base, "data.train_batch_tokens", 524_288))
        seqs = max(1, tokens // seq_len)
        if "int6_protect" not in arms[hybrid].variants:  # the protect study's export is the same one
            arms[hybrid].variants["int6_rtn"] = {"quant": {"method": "int6", "protect": _default_protect()}}
        arms[hybrid].variants.update({
            "gptq_train": {"quant": {"method": "gptq", "bits": 6, "protect": _default_protect()},
                           "calibration": "train", "calibration_batches": batches},
            "gptq_self_generated": {"quant": {"method": "gptq", "bits": 6, "protect": _default_protect()},
                                    "calibration": "self_generated", "calibration_seqs": seqs,
                                    "calibration_seq_len": seq_len},
        })
        per_study["calibration"] = [hybrid]
        notes["calibration_tokens"] = tokens
    if "in_proj_optimizer" in studies:
        adam = arm("hybrid", base_vocab, base_dir, "_inproj_adam", desc=f"hybrid, in_proj on Adam, {base_name}",
                   model_over={"model.optimizer.ssm_in_proj": "adam"})
        per_study["in_proj_optimizer"] = [hybrid, adam]
    if "compress" in studies:
        arms[hybrid].compress = True
        per_study["compress"] = [hybrid] + ([n for n in per_study.get("arch", []) if n.startswith("transformer")])
    seeds = list(dict.fromkeys(args.seeds or []))
    if seeds:
        trained = {n for s in SEEDED_STUDIES for n in per_study.get(s, [])}
        for a in arms.values():
            a.seed = seeds[0]
        replicas = {}
        for name in [n for n in arms if n in trained]:
            replicas[name] = []
            for seed in seeds[1:]:
                twin = replace(arms[name], name=f"{name}_seed{seed}", seed=seed, variants={}, compress=False,
                               desc=f"{arms[name].desc}, seed {seed}")
                arms[twin.name] = twin
                replicas[name].append(twin.name)
        notes.update(seeds=seeds, seed_replicas=replicas)
    return arms, per_study, notes


def _default_protect() -> dict[str, Any]:
    from golf.quant import DEFAULT_SSM_PROTECT

    return dict(DEFAULT_SSM_PROTECT)


def build_arm_config(base: dict[str, Any], arm: Arm, out: Path, args, budget: float) -> dict[str, Any]:
    cfg = copy.deepcopy(base)
    if arm.seed is not None:
        cfg["seed_everything"] = int(arm.seed)
    _set(cfg, "data.data_dir", arm.data_dir)
    _set(cfg, "data.vocab_size", arm.vocab)
    for k, v in arm.model_over.items():
        _set(cfg, k, v)
    if arm.arch == "transformer":
        cfg, arm.match = match_transformer(cfg)
    tr = cfg.setdefault("trainer", {})
    if args.accelerator or args.gpus:
        tr["accelerator"] = "gpu" if args.gpus else args.accelerator
    if args.gpus and not args.devices:
        tr["devices"] = 1
    if args.devices:
        tr["devices"] = args.devices
        if args.devices > 1 and tr.get("strategy") in (None, "auto"):
            tr["strategy"] = "ddp"
    if args.val_every:
        tr["val_check_interval"] = args.val_every
        tr["check_val_every_n_epoch"] = None
    tr["max_steps"] = max(int(tr.get("max_steps") or 0), 10**9)  # the wall-clock budget stops every arm
    if args.warmup_steps:
        # Steps run (and undone) before the clock starts, so that no arm pays first-call costs inside its budget.
        _set(cfg, "model.compile_warmup_steps", max(int(_get(cfg, "model.compile_warmup_steps", 0) or 0),
                                                    args.warmup_steps))
    tr["enable_progress_bar"] = False
    tr["enable_checkpointing"] = False
    tr.pop("default_root_dir", None)
    tr["logger"] = {"class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": str(out / "runs"), "name": arm.name, "version": 0}}
    wc = _find_cb(cfg, "WallClockBudget")
    if wc is None:
        wc = {"class_path": "golf.callbacks.WallClockBudget", "init_args": {}}
        _callbacks(cfg).insert(0, wc)
    wc["init_args"]["budget_seconds"] = float(budget)
    wc["init_args"]["reserve_seconds"] = min(float(wc["init_args"].get("reserve_seconds", 0) or 0), budget / 2)
    fin = _find_cb(cfg, "Finalize")
    if fin is None:
        _callbacks(cfg).append({"class_path": "golf.callbacks.Finalize",
                                "init_args": {"quant": {"method": "int6"}, "compressor": "lzma"}})
        fin = _find_cb(cfg, "Finalize")
    fin["init_args"].pop("output_dir", None)
    fin["init_args"]["compressibility_report"] = True
    cbs = _callbacks(cfg)
    cbs.append({"class_path": "golf.study.StudyClock"})
    if arm.variants or arm.compress:
        cbs.append({"class_path": "golf.study.StudyExtras",
                    "init_args": {"variants": arm.variants, "compress": arm.compress,
                                  "sdclip_ks": list(args.sdclip_ks)}})
    return cfg


# =====================================================================================================================
# Running arms
# =====================================================================================================================


def run_dir(out: Path, arm: str) -> Path:
    return out / "runs" / arm / "version_0"


def read_extras(arm: Arm, rd: Path) -> dict[str, Any] | None:
    """The arm's ``study_extra.json`` (``"complete": false`` while its exports are still running; files without the
    key are from a finished run). Without the file, the variant reports already on disk (a run cut off before the
    file existed), marked incomplete; None when there is neither."""
    path = rd / "study_extra.json"
    if path.is_file():
        extras = json.loads(path.read_text())
        extras.setdefault("complete", True)
        return extras
    found = {name: {"overrides": over, "report": _slim_report(json.loads((rd / "variants" / name / "report.json")
                                                                          .read_text()))}
             for name, over in arm.variants.items() if (rd / "variants" / name / "report.json").is_file()}
    return {"variants": found, "compress": None, "complete": False} if found else None


def _reused(arm: Arm, cfg_path: Path, out: Path, args) -> dict[str, Any] | None:
    """The result of an arm whose run directory already holds a report made from the same config, else None."""
    rd = run_dir(out, arm.name)
    saved = rd / "study_config.yaml"
    if (args.fresh or not (rd / "report.json").is_file() or not saved.is_file()
            or saved.read_text() != cfg_path.read_text()
            or ((arm.variants or arm.compress) and not (read_extras(arm, rd) or {}).get("complete", False))):
        return None
    print(f"golf study: {arm.name}: reusing {rd / 'report.json'} (same config; --fresh retrains)", flush=True)
    return {"exit_code": 0, "reused": True}


def _fresh_run_dir(arm: Arm, out: Path) -> None:
    rd = run_dir(out, arm.name)
    if rd.exists():
        shutil.rmtree(rd)


def _finished(arm: Arm, cfg_path: Path, out: Path, code: int, t0: float, load0: tuple) -> dict[str, Any]:
    """The result of an arm that just ran; its run directory keeps the config it was trained from (for reuse)."""
    rd = run_dir(out, arm.name)
    if rd.is_dir():
        shutil.copyfile(cfg_path, rd / "study_config.yaml")
    return {"exit_code": code, "reused": False, "wall_seconds_total": time.perf_counter() - t0,
            "loadavg_before": load0, "loadavg_after": os.getloadavg()}


def _arm_env(args, gpus: list[str] | None = None, at_once: int = 1) -> dict[str, str]:
    """Environment of an arm's subprocess. Arms running at once share the host's cores evenly: unbounded, each
    process's thread pools take every core and their CPU work slows down many-fold."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    elif at_once > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // at_once))
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    return env


def _fit_command(cfg_path: Path) -> list[str]:
    return [sys.executable, "-m", "golf", "fit", "--config", str(cfg_path)]


def run_arm(arm: Arm, cfg_path: Path, out: Path, args) -> dict[str, Any]:
    """Train one arm in this process (or as a subprocess for DDP / ``--subprocess``) unless it can be reused."""
    reused = _reused(arm, cfg_path, out, args)
    if reused is not None:
        return reused
    _fresh_run_dir(arm, out)
    print(f"golf study: training {arm.name} ({arm.desc})", flush=True)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    dev = arm.config["trainer"].get("devices", 1)
    devices = int(dev) if str(dev).isdigit() else 1
    if args.subprocess or devices > 1:
        code = subprocess.run(_fit_command(cfg_path), env=_arm_env(args)).returncode
    else:
        from golf.cli import main as golf_main

        try:
            code = golf_main(["fit", "--config", str(cfg_path)])
        except SystemExit as e:  # argument errors from jsonargparse
            code = e.code if isinstance(e.code, int) else 2
    return _finished(arm, cfg_path, out, code, t0, load0)


def arm_slots(args) -> list[list[str] | None]:
    """Where arms run at once: one slot per ``--devices``-sized group of ``--gpus`` (CUDA_VISIBLE_DEVICES of its
    subprocess), or ``--parallel`` CPU slots; an empty list means one arm after another."""
    if args.gpus:
        per = max(1, args.devices or 1)
        if len(args.gpus) % per:
            raise GolfError(f"golf study: --gpus lists {len(args.gpus)} GPU(s), not a multiple of --devices {per}; "
                            f"list {per} GPU ids per arm slot")
        return [args.gpus[i:i + per] for i in range(0, len(args.gpus), per)]
    if args.parallel and args.parallel > 1:
        return [None] * args.parallel
    return []


def run_arms_concurrently(arms: list[Arm], cfg_paths: dict[str, Path], out: Path, args,
                          slots: list[list[str] | None], on_done=None) -> dict[str, dict[str, Any]]:
    """Train arms as ``golf fit`` subprocesses, as many at once as there are slots (each arm alone on its GPUs); each
    arm's output goes to ``DIR/logs/<arm>.log``. Same budget per arm as one after another: the wall-clock budget
    counts each arm's own training time. ``on_done(name, result)`` is called as each arm finishes."""
    results: dict[str, dict[str, Any]] = {}
    todo = []
    for a in arms:
        reused = _reused(a, cfg_paths[a.name], out, args)
        if reused is None:
            todo.append(a)
            continue
        results[a.name] = reused
        if on_done is not None:
            on_done(a.name, reused)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    free = list(slots)
    running: dict[str, tuple[Arm, subprocess.Popen, list[str] | None, float, tuple, Any]] = {}
    try:
        while todo or running:
            while todo and free:
                a, slot = todo.pop(0), free.pop(0)
                _fresh_run_dir(a, out)
                where = f"GPU {','.join(slot)}" if slot is not None else "CPU"
                print(f"golf study: training {a.name} ({a.desc}) on {where}; log {logs / (a.name + '.log')}",
                      flush=True)
                log = open(logs / f"{a.name}.log", "w")
                proc = subprocess.Popen(_fit_command(cfg_paths[a.name]), env=_arm_env(args, slot, len(slots)),
                                        stdout=log, stderr=subprocess.STDOUT)
                running[a.name] = (a, proc, slot, time.perf_counter(), os.getloadavg(), log)
            time.sleep(0.5)
            for name, (a, proc, slot, t0, load0, log) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                log.close()
                del running[name]
                free.append(slot)
                results[name] = _finished(a, cfg_paths[name], out, code, t0, load0)
                print(f"golf study: {name} finished (exit {code}, {results[name]['wall_seconds_total']:.0f} s)",
                      flush=True)
                if on_done is not None:
                    on_done(name, results[name])
                if code in INTERRUPTED:
                    todo.clear()
    finally:
        for _, proc, *_ in running.values():  # interrupted: no arm outlives the study
            proc.terminate()
        for _, proc, *_ in running.values():
            proc.wait()
    return {a.name: results[a.name] for a in arms if a.name in results}


def read_curve(metrics_csv: Path) -> list[dict[str, float]]:
    """[{step, seconds, val_bpb}] from a CSVLogger metrics.csv with train_seconds rows (StudyClock) and val rows."""
    if not metrics_csv.is_file():
        return []
    train, lrs, vals = [], [], []
    with metrics_csv.open() as f:
        for row in csv.DictReader(f):
            step = row.get("step")
            if not step:
                continue
            if row.get("train_seconds"):
                train.append((float(step), float(row["train_seconds"])))
            if row.get("lr_scale"):
                lrs.append((float(step), float(row["lr_scale"])))
            if row.get("val_bpb"):
                vals.append((float(step), float(row["val_bpb"])))
    if not vals:
        return []
    train.sort()
    lrs.sort()
    xs, ys = [s for s, _ in train] or [0.0], [t for _, t in train] or [0.0]
    out = []
    for s, b in vals:
        p = {"step": s, "seconds": float(np.interp(s, xs, ys)), "val_bpb": b}
        if lrs:
            p["lr_scale"] = float(np.interp(s, [a for a, _ in lrs], [v for _, v in lrs]))
        out.append(p)
    return out


# =====================================================================================================================
# Summaries, tables, plots
# =====================================================================================================================


def role_bpp(by_role: list[dict[str, Any]], comp: str = "lzma") -> dict[str, float]:
    """Compressed bytes/param per role base (ssm_in_proj sums its groups) and per in_proj group."""
    from golf.quant.roles import role_base

    acc: dict[str, list[int]] = {}
    for r in by_role or []:
        if r["role"] == "total" or f"{comp}_bytes" not in r:
            continue
        keys = {r["role"], role_base(r["role"])}
        for k in keys:
            a = acc.setdefault(k, [0, 0])
            a[0] += r[f"{comp}_bytes"]
            a[1] += r["params"]
    return {k: b / p for k, (b, p) in acc.items() if p}


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    tr, art = report["training"], report["artifact"]
    comp = (report.get("compressibility") or {}).get("by_role") or []
    q = report.get("quant", {})
    return {
        "parameters": report["parameters"],
        "layers": report["layers"],
        "steps": tr["steps"],
        "tokens_seen": tr["tokens_seen"],
        "epochs": tr["epochs"],
        "train_tokens_in_corpus": tr.get("train_tokens_in_corpus"),
        "train_seconds": tr["train_seconds"],
        "tokens_per_second": tr.get("tokens_per_second"),
        "device": tr["device"],
        "world_size": tr.get("world_size", 1),
        "pre_bpb": report["pre_quant"]["val_bpb"],
        "post_bpb": report["post_quant"]["val_bpb"],
        "quant_gap_bpb": report["quant_gap_bpb"],
        "artifact_bytes": art["model_bytes"],
        "total_bytes": art["total_bytes"],
        "compressor": art.get("compressor"),
        "quant": f"{q.get('method')}" + (f"/{q.get('bits')}b" if q.get("method") in ("intN", "gptq") else "")
                 + ("" if q.get("protect") else " no-protect"),
        "calibration": tr.get("calibration"),
        "val_tokens": report["post_quant"].get("tokens"),
        "lzma_bpp": role_bpp(comp, "lzma"),
    }


def _f(x, spec: str = ".4f", none: str = "–") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return none
    return format(x, spec)


def _row_md(label: str, s: dict[str, Any], device: str) -> str:
    bpp = s.get("lzma_bpp", {})
    return (f"| {label} | {s['parameters']:,} | {s['tokens_seen']:,} | {_f(s['epochs'], '.2f')} | "
            f"{_f(s['train_seconds'], '.0f')} | {device} | {_f(s['pre_bpb'])} | {_f(s['post_bpb'])} | "
            f"{_f(1000 * s['quant_gap_bpb'], '+.2f')} | {s['artifact_bytes']:,} | "
            + " | ".join(_f(bpp.get(r), ".3f") for r in TABLE_ROLES) + " |")


TABLE_HEAD = ("| arm | params | tokens seen | epochs | train s | device | pre-quant BPB | post-quant BPB | gap mBPB | "
              "artifact B | " + " | ".join(f"{r} B/p" for r in TABLE_ROLES) + " |\n"
              "|" + "---|" * (10 + len(TABLE_ROLES)))


def _plot_setup(figsize=(7, 4.5)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _plot_finish(fig, path: Path, ax=None, legend: bool = True, grid: str = "y") -> Path:
    """The common tail of every study plot: grid, legend, layout, save."""
    if ax is not None:
        ax.grid(axis=grid, alpha=0.3)
        if legend:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_curves(arms: list[str], results: dict[str, Any], title: str, path: Path) -> Path | None:
    fig = _plot_setup()
    ax = fig.add_subplot(1, 1, 1)
    any_line = False
    for name in arms:
        r = results.get(name) or {}
        curve, s = r.get("curve") or [], r.get("summary")
        if not s:  # training cut off or its finalization not done: the validation curve so far
            if curve:
                ax.plot([p["seconds"] for p in curve], [p["val_bpb"] for p in curve], marker="o", markersize=3,
                        ls="--", label=f"{name} (not finished)")
                any_line = True
            continue
        xs = [p["seconds"] for p in curve] + [s["train_seconds"]]
        ys = [p["val_bpb"] for p in curve] + [s["pre_bpb"]]
        line, = ax.plot(xs, ys, marker="o", markersize=3, label=f"{name} ({s['parameters']:,} p)")
        ax.plot([s["train_seconds"]], [s["post_bpb"]], marker="x", markersize=8, color=line.get_color())
        any_line = True
    if not any_line:
        return None
    ax.set_xlabel("training wall-clock (s, validation excluded)")
    ax.set_ylabel("val BPB (x: artifact, post-quant)")
    ax.set_title(title, fontsize=9)
    return _plot_finish(fig, path, ax, grid="both")


def plot_roles_by_arm(arms: list[str], results: dict[str, Any], path: Path) -> Path | None:
    rows = [(n, results[n]["summary"]["lzma_bpp"]) for n in arms if (results.get(n) or {}).get("summary")]
    if not rows:
        return None
    roles = [r for r in TABLE_ROLES if any(r in b for _, b in rows)]
    fig = _plot_setup((max(7, 1.2 * len(roles) + 2), 4.5))
    ax = fig.add_subplot(1, 1, 1)
    w = 0.8 / len(rows)
    for i, (name, bpp) in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * w for j in range(len(roles))]
        ax.bar(xs, [bpp.get(r, 0.0) for r in roles], width=w, label=name)
    ax.set_xticks(range(len(roles)))
    ax.set_xticklabels(roles, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("LZMA bytes / parameter (each tensor alone)")
    ax.set_title("Compressed bytes per parameter by tensor role (artifact quantization)", fontsize=9)
    return _plot_finish(fig, path, ax)


def plot_quant_gaps(items: list[tuple[str, float]], path: Path) -> Path | None:
    if not items:
        return None
    fig = _plot_setup((max(7, 0.55 * len(items) + 2), 4.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(range(len(items)), [1000 * g for _, g in items], color="tab:purple")
    ax.set_xticks(range(len(items)))
    ax.set_xticklabels([n for n, _ in items], rotation=35, ha="right", fontsize=7)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylabel("quantization gap (mBPB, post - pre)")
    ax.set_title("Quantization gap per arm and export variant", fontsize=9)
    return _plot_finish(fig, path, ax, legend=False)


def plot_in_proj_groups(comp: dict[str, Any], path: Path) -> Path | None:
    roles = comp["finding"]["roles"]
    keys = [k for k in roles if k.startswith("ssm_in_proj")]
    keys += [k for k in ("attn_qkv", "mlp", "embedding") if k in roles]
    if not keys:
        return None
    fig = _plot_setup((max(7, 0.8 * len(keys) + 2), 4.5))
    ax = fig.add_subplot(1, 1, 1)
    w = 0.27
    xs = np.arange(len(keys))
    ax.bar(xs - w, [roles[k]["per_tensor_bpp"] for k in keys], width=w, label="LZMA, each tensor alone")
    ax.bar(xs, [roles[k]["grouped_bpp"] for k in keys], width=w, label="LZMA, role-grouped stream")
    ax.bar(xs + w, [(roles[k]["code_entropy_bits"] or 0) / 8 for k in keys], width=w,
           label="order-0 entropy of the codes / 8")
    ax.set_xticks(xs)
    ax.set_xticklabels(keys, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("bytes / parameter")
    ax.set_title("Trained hybrid, int6: SSM in_proj row groups vs attention QKV", fontsize=9)
    return _plot_finish(fig, path, ax)


def plot_remedies(comp: dict[str, Any], path: Path) -> Path | None:
    rows = comp.get("lossy") or []
    if not rows:
        return None
    fig = _plot_setup((9, 4.5))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    names = [r["remedy"] for r in rows]
    ax1.barh(range(len(rows)), [r["in_proj_bpp"] for r in rows], color="tab:blue")
    ax1.set_yticks(range(len(rows)))
    ax1.set_yticklabels(names, fontsize=7)
    ax1.invert_yaxis()
    ax1.set_xlabel("in_proj LZMA bytes / parameter")
    ax2.barh(range(len(rows)), [1000 * r["delta_bpb"] for r in rows], color="tab:red")
    ax2.set_yticks(range(len(rows)))
    ax2.set_yticklabels([])
    ax2.invert_yaxis()
    ax2.axvline(0, color="k", lw=0.8)
    ax2.set_xlabel("post-quant BPB vs golf default (mBPB)")
    fig.suptitle("Remedies for the in_proj compression penalty (trained hybrid, artifacts read back)", fontsize=9)
    return _plot_finish(fig, path)


# =====================================================================================================================
# Report
# =====================================================================================================================


def _pairs(names: list[str]) -> list[tuple[str, str]]:
    """(first, second) of each consecutive pair: the vocab and layout studies list their arms two per vocabulary."""
    return list(zip(names[::2], names[1::2]))


def build_study(per_study: dict[str, list[str]], arms: dict[str, Arm], results: dict[str, Any], notes: dict,
                args) -> dict[str, Any]:
    studies: dict[str, Any] = {}
    hyb = next((n for s in ("protect", "calibration", "compress") for n in per_study.get(s, [])
                if n.startswith("hybrid")), None)

    def arm_rows(names: list[str]) -> list[dict[str, Any]]:
        return [{"arm": n, "desc": arms[n].desc, **(results[n].get("summary") or {}),
                 "exit_code": results[n].get("exit_code"), "pending": bool(results[n].get("pending"))}
                for n in names]

    def equal_tokens(names: list[str]) -> dict[str, Any] | None:
        """val BPB of every arm at the largest validation step all of them reached: a comparison at equal tokens,
        which CPU contention (a shared machine) cannot move, next to the equal-wall-clock one."""
        points = {n: {p["step"]: p for p in (results.get(n) or {}).get("curve") or []} for n in names}
        curves = {n: {k: p["val_bpb"] for k, p in c.items()} for n, c in points.items()}
        if not curves or not all(curves.values()) or not all(results[n].get("summary") for n in names):
            return None
        common = set.intersection(*(set(c) for c in curves.values()))
        if not common:
            return None
        step = max(common)
        per_step = {n: results[n]["summary"]["tokens_seen"] / max(results[n]["summary"]["steps"], 1) for n in names}
        return {"step": step, "tokens": {n: int(step * per_step[n]) for n in names},
                "val_bpb": {n: curves[n][step] for n in names},
                "seconds": {n: points[n][step]["seconds"] for n in names},
                "lr_scale": {n: points[n][step].get("lr_scale") for n in names}}

    replicas = notes.get("seed_replicas") or {}

    def with_seeds(names: list[str]) -> list[str]:
        """Each arm followed by its other-seed replicas."""
        return [m for n in names for m in [n, *replicas.get(n, [])]]

    def across_seeds(a: str, b: str, label: str) -> dict[str, Any]:
        """b − a in mBPB for every seed (post-quant, and the last in-training validation), with mean and spread."""
        rows = []
        for seed, na, nb in zip(notes["seeds"], [a, *replicas.get(a, [])], [b, *replicas.get(b, [])]):
            ra, rb = results.get(na) or {}, results.get(nb) or {}
            sa, sb, ca, cb = ra.get("summary"), rb.get("summary"), ra.get("curve"), rb.get("curve")
            rows.append({"seed": seed,
                         "post_mbpb": 1000 * (sb["post_bpb"] - sa["post_bpb"]) if sa and sb else None,
                         "last_val_mbpb": 1000 * (cb[-1]["val_bpb"] - ca[-1]["val_bpb"]) if ca and cb else None})
        return {"label": label, "a": a, "b": b, "per_seed": rows,
                "post_mbpb": _mean_sd([r["post_mbpb"] for r in rows]),
                "last_val_mbpb": _mean_sd([r["last_val_mbpb"] for r in rows])}

    if "arch" in per_study:
        t, h = per_study["arch"]
        studies["arch"] = {"arms": arm_rows(with_seeds([t, h])), "matching": arms[t].match,
                           "equal_tokens": equal_tokens([t, h])}
        if replicas:
            studies["arch"]["seeds"] = [across_seeds(t, h, "hybrid − transformer")]
    if "vocab" in per_study:
        names = per_study["vocab"]
        studies["vocab"] = {"arms": arm_rows(with_seeds(names)), "corpus": notes.get("vocab_stem"),
                            "equal_tokens": equal_tokens(names)}
        if replicas:  # names come in (transformer, hybrid) pairs, one pair per vocabulary
            studies["vocab"]["seeds"] = [across_seeds(t, h, f"sp{arms[t].vocab}: hybrid − transformer")
                                         for t, h in _pairs(names)]
    extra = (results.get(hyb) or {}).get("extra") or {} if hyb else {}
    var = extra.get("variants") or {}

    def variant_rows(names: list[str]) -> list[dict[str, Any]]:
        rows = []
        for n in names:
            v = var.get(n)
            if v:
                s = summarize(v["report"])
                rows.append({"arm": f"{hyb} / {n}", "variant": n, "overrides": v["overrides"], **s,
                             "calibration_seconds": v["report"]["training"].get("calibration_seconds")})
        return rows

    if "protect" in per_study:
        rows = variant_rows(["int6_protect", "int6_noprotect"])
        d = {"arms": rows, "same_weights": True}
        if len(rows) == 2:
            d["protect_minus_noprotect_mbpb"] = 1000 * (rows[0]["post_bpb"] - rows[1]["post_bpb"])
            d["protect_extra_bytes"] = rows[0]["artifact_bytes"] - rows[1]["artifact_bytes"]
        studies["protect"] = d
    if "calibration" in per_study:
        rows = variant_rows(["int6_rtn" if "int6_rtn" in var else "int6_protect", "gptq_train", "gptq_self_generated"])
        d = {"arms": rows, "same_weights": True, "calibration_tokens": notes.get("calibration_tokens")}
        byv = {r["variant"]: r for r in rows}
        if "gptq_train" in byv and "gptq_self_generated" in byv:
            d["self_generated_minus_train_mbpb"] = 1000 * (byv["gptq_self_generated"]["post_bpb"]
                                                           - byv["gptq_train"]["post_bpb"])
        studies["calibration"] = d
    if "layout" in per_study:
        names, layouts = per_study["layout"], notes["layouts"]
        by_vocab = []
        for a, b in _pairs(names):
            sa, sb = results[a].get("summary"), results[b].get("summary")
            by_vocab.append({"vocab": arms[a].vocab, "a": a, "b": b,
                             "post_mbpb": 1000 * (sb["post_bpb"] - sa["post_bpb"]) if sa and sb else None})
        studies["layout"] = {"arms": arm_rows(with_seeds(names)), "layouts": layouts, "by_vocab": by_vocab,
                             "equal_tokens": equal_tokens(names)}
        if replicas:
            studies["layout"]["seeds"] = [across_seeds(a, b, f"sp{arms[a].vocab}: {layouts[1]} − {layouts[0]}")
                                          for a, b in _pairs(names)]
    if "in_proj_optimizer" in per_study:
        muon, adam = per_study["in_proj_optimizer"]
        studies["in_proj_optimizer"] = {"arms": arm_rows(with_seeds([muon, adam])),
                                        "equal_tokens": equal_tokens([muon, adam])}
        if replicas:
            studies["in_proj_optimizer"]["seeds"] = [across_seeds(muon, adam, "in_proj on Adam − on Muon")]
    if "compress" in per_study:
        comp = extra.get("compress")
        d = {"analysis": comp, "arms": arm_rows(per_study["compress"])}
        tr = next((n for n in per_study["compress"] if n.startswith("transformer")), None)
        if comp and tr and (results.get(tr) or {}).get("summary"):
            t_qkv = results[tr]["summary"]["lzma_bpp"].get("attn_qkv")
            ip = comp["finding"]["roles"].get("ssm_in_proj")
            if t_qkv and ip:
                d["in_proj_vs_transformer_qkv_ratio"] = ip["per_tensor_bpp"] / t_qkv
        studies["compress"] = d
    return studies


def _mean_sd(values: list[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation (None below two values) and count of the values that exist."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    return {"mean": statistics.fmean(v) if v else None, "sd": statistics.stdev(v) if len(v) > 1 else None,
            "n": len(v)}


def write_markdown(study: dict[str, Any], path: Path) -> None:
    S = study["studies"]
    dev = study["device"]
    L = [f"# golf study ({study['created']})", "",
         f"`{' '.join(study['command'])}`", "",
         *([f"Tables rebuilt from the run directories with `{' '.join(study['rebuilt_with'])}`.", ""]
           if study.get("rebuilt_with") else []),
         *([] if study.get("complete", True) else
           ["**Partial: some arms, or some of their extra exports, have not finished.**", ""]),
         f"Device: {dev}. Budget: {study['budget_seconds']:g} s of training wall-clock per arm (golf's "
         f"WallClockBudget; validation and finalization not counted). Base config: `{study['base_config']}`. "
         f"BPB = val bits per byte on the full val split of each arm's data; 'post-quant' is the artifact read back "
         f"from disk. B/p = LZMA bytes per parameter of each tensor compressed alone (ssm_in_proj: all row "
         f"groups).", ""]
    load = [f"{n}: {r.get('loadavg_before', ['?'])[0]:.2f}→{r.get('loadavg_after', ['?'])[0]:.2f}"
            for n, r in study["arms"].items() if r.get("loadavg_before")]
    if load:
        L += [f"1-min load average before→after each arm (the machine is shared; tokens seen show the effect): "
              f"{'; '.join(load)}", ""]

    def table(rows, label_key="arm"):
        out = [TABLE_HEAD]
        for r in rows:
            if "parameters" in r:
                out.append(_row_md(r[label_key], r, r.get("device", "?")))
            elif r.get("pending"):
                out.append(f"| {r[label_key]} | not finished (see its validation curve) |")
            else:
                out.append(f"| {r[label_key]} | failed (exit {r.get('exit_code')}) |")
        return out

    def equal(d):
        e = d.get("equal_tokens")
        if not e:
            return []
        parts = []
        for n, b in e["val_bpb"].items():
            lr = (e.get("lr_scale") or {}).get(n)
            parts.append(f"{n} {b:.4f} ({e['tokens'][n]:,} tokens, {e['seconds'][n]:.0f} s"
                         + (f", LR ×{lr:.2f}" if lr is not None else "") + ")")
        return [f"At equal steps (validation at step {e['step']:g}, the last one every arm reached): "
                + "; ".join(parts) + ". The LR warm-down runs on wall-clock, so at equal steps the slower arm is "
                "further into its warm-down (smaller LR ×), which lowers its BPB at that point: this comparison "
                "removes throughput but not the schedule.", ""]

    def seeds(d):
        """One line per comparison: the difference at every seed, then mean ± sample standard deviation."""
        out = []
        for c in d.get("seeds") or []:
            per = "; ".join(f"seed {r['seed']}: {_f(r['post_mbpb'], '+.1f')} / {_f(r['last_val_mbpb'], '+.1f')}"
                            for r in c["per_seed"])
            post, last = c["post_mbpb"], c["last_val_mbpb"]
            out.append(f"- {c['label']}, mBPB post-quant / last in-training val: {per}; mean ± sd "
                       f"{_f(post['mean'], '+.1f')} ± {_f(post['sd'], '.1f')} (n {post['n']}) / "
                       f"{_f(last['mean'], '+.1f')} ± {_f(last['sd'], '.1f')} (n {last['n']})")
        return ["Across seeds (the arms above, one per seed):", "", *out, ""] if out else []

    if "arch" in S:
        m = S["arch"]["matching"] or {}
        L += ["## arch: transformer vs hybrid at equal parameter count", "", f"Matching: {m.get('how', '?')}.", ""]
        L += table(S["arch"]["arms"]) + [""] + equal(S["arch"]) + seeds(S["arch"])
    if "vocab" in S:
        L += ["## vocab: tokenizer size for both architectures", "",
              "Same documents and val split for every vocab (golf data prepare's fixed shuffle); seq_len is in tokens, "
              f"so larger vocabularies see more bytes per window. Corpus: `{S['vocab'].get('corpus')}`; golf's "
              "offline corpora are small (a few MB of train text), so the arms repeat data (see epochs) and at "
              "sp8192 the embedding is a large share of the parameters.", ""]
        L += table(S["vocab"]["arms"]) + [""] + equal(S["vocab"]) + seeds(S["vocab"])
    if "layout" in S:
        d = S["layout"]
        a, b = d["layouts"]
        L += [f"## layout: {b} vs {a} at each vocabulary", "",
              "The seed's decision that flipped sign between SP4096 and SP8192 was a layout change of the hybrid "
              "(2 -> 1 attention blocks). Same data, budget and settings per vocabulary; parameters differ with the "
              "layout (see the table).", ""]
        L += table(d["arms"]) + [""]
        L += [f"- sp{r['vocab']}: {b} − {a} = {_f(r['post_mbpb'], '+.1f')} mBPB post-quant" for r in d["by_vocab"]]
        L += [""] + equal(d) + seeds(d)
    if "protect" in S:
        d = S["protect"]
        L += ["## protect: int6 with dynamics protection (dd_A/dd_dt rows at int8) vs none", "",
              "Both exports are of the same trained weights (the study's hybrid arm), so the difference is the "
              "quantization alone.", ""]
        L += table(d["arms"]) + [""]
        if "protect_minus_noprotect_mbpb" in d:
            L += [f"protect − no-protect: {d['protect_minus_noprotect_mbpb']:+.3f} mBPB post-quant, "
                  f"{d['protect_extra_bytes']:+,} artifact bytes.", ""]
    if "calibration" in S:
        d = S["calibration"]
        L += ["## calibration: int6 RTN vs GPTQ with train-data Hessians vs self-generated calibration", "",
              f"Same trained weights; both GPTQ variants see {d.get('calibration_tokens') or 0:,} calibration tokens.",
              ""]
        L += table(d["arms"]) + [""]
        for r in d["arms"]:
            if r.get("calibration_seconds"):
                L.append(f"- {r['variant']}: calibration {r['calibration_seconds']:.1f} s")
        if "self_generated_minus_train_mbpb" in d:
            L += ["", f"self-generated − train-data GPTQ: {d['self_generated_minus_train_mbpb']:+.3f} mBPB "
                      f"post-quant."]
        L += [""]
    if "in_proj_optimizer" in S:
        L += ["## in_proj_optimizer: SSM in_proj under Muon vs Adam", ""]
        L += table(S["in_proj_optimizer"]["arms"]) + [""] + equal(S["in_proj_optimizer"]) \
            + seeds(S["in_proj_optimizer"])
    if "compress" in S:
        d = S["compress"]
        comp = d.get("analysis")
        L += ["## compress: SSM in_proj vs attention QKV after int6, and remedies", ""]
        if comp:
            roles = comp["finding"]["roles"]
            L += [f"Trained hybrid, int6 RTN (`{comp['scheme'].get('clip')}` clip, golf's row groups and protection); "
                  f"pre-quant BPB {comp['pre_quant_bpb']:.4f}.", "",
                  "| role | params | LZMA B/p (tensor alone) | LZMA B/p (role-grouped) | "
                  "ratio vs attn_qkv (alone / grouped) | code entropy bits | levels used | mean abs code |",
                  "|---|---|---|---|---|---|---|---|"]
            ratios = comp["finding"].get("ratio_vs_attn_qkv", {})
            for k, r in roles.items():
                if not r["code_levels_used"]:
                    continue  # float-stored roles (control vectors, SSM dynamics scalars)
                ra = ratios.get(k)
                L.append(f"| {k} | {r['params']:,} | {r['per_tensor_bpp']:.3f} | {r['grouped_bpp']:.3f} | "
                         + (f"{ra['per_tensor']:.2f} / {ra['grouped']:.2f}" if ra else "–")
                         + f" | {_f(r['code_entropy_bits'], '.2f')} | {r['code_levels_used']} | "
                         f"{_f(r['code_abs_mean'], '.2f')} |")
            if "in_proj_vs_transformer_qkv_ratio" in d:
                L += ["", f"in_proj (hybrid) vs attn_qkv of the parameter-matched transformer: "
                          f"{d['in_proj_vs_transformer_qkv_ratio']:.2f}× LZMA bytes/param."]
            w = comp["finding"].get("worst_group")
            if w:
                L += ["", f"Worst in_proj group (≥ 4,096 params): {w['role']} at {w['grouped']:.2f}× attn_qkv "
                          f"(role-grouped), {w['per_tensor']:.2f}× (each tensor alone)."]
            L += ["", "Lossless remedies (same codes; BPB unchanged):", "",
                  "| remedy | in_proj LZMA bytes | B/p | saved vs golf's per-tensor accounting |", "|---|---|---|---|"]
            for r in comp["lossless"]:
                L.append(f"| {r['remedy']} | {r['in_proj_bytes']:,} | {r['in_proj_bpp']:.3f} | "
                         f"{r['saved_bytes_vs_golf']:+,} |")
            L += ["", "Lossy remedies (each written as an artifact, read back and scored on the full val split):", "",
                  "| remedy | what | in_proj LZMA bytes | B/p | saved in_proj B | artifact B (JSON header) | "
                  "saved artifact B | post-quant BPB | Δ mBPB |", "|---|---|---|---|---|---|---|---|---|"]
            for r in comp["lossy"]:
                L.append(f"| {r['remedy']} | {r['what']} | {r['in_proj_bytes']:,} | {r['in_proj_bpp']:.3f} | "
                         f"{r['saved_in_proj_bytes']:+,} | {_f(r['artifact_bytes'], ',')} "
                         f"({_f(r.get('header_bytes'), ',')}) | "
                         f"{_f(r.get('saved_artifact_bytes'), '+,')} | {r['post_bpb']:.4f} | "
                         f"{1000 * r['delta_bpb']:+.2f} |")
        L += [""]
        L += table(d["arms"]) + [""]
    if study.get("plots"):
        L += ["## plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in study["plots"]] + [""]
    path.write_text("\n".join(L) + "\n")


# =====================================================================================================================
# main
# =====================================================================================================================


def _device_text(accelerator: str | None, devices: int | None, at_once: int = 0) -> str:
    at = f"; {at_once} arms at once, each on its own devices" if at_once > 1 else ""
    if (accelerator or "cpu") == "cpu":
        cpu = platform.processor() or "cpu"
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        return f"CPU ({cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}){at}"
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "GPU"
    return f"{devices or 1}× {name}{at}"


def collect_result(arm: Arm, run: dict[str, Any] | None, out: Path, cfg_path: Path,
                   earlier: dict[str, Any] | None) -> dict[str, Any]:
    """One arm's entry of study.json: how it ran (``pending`` if not yet), its report's summary, its validation
    curve (also while its report is missing) and its extras."""
    res = dict(run) if run is not None else {"exit_code": None, "pending": True}
    rd = run_dir(out, arm.name)
    if (rd / "report.json").is_file() and not res.get("pending"):
        res["summary"] = summarize(json.loads((rd / "report.json").read_text()))
    res["curve"] = read_curve(rd / "metrics.csv")
    extras = read_extras(arm, rd) if not res.get("pending") else None
    if extras is not None:
        res["extra"] = extras
    res.update(run_dir=str(rd), config=str(cfg_path), desc=arm.desc)
    if (res.get("reused") or res.get("from_disk")) and earlier:  # keep the load averages of the run that made it
        for k in ("wall_seconds_total", "loadavg_before", "loadavg_after"):
            if k in earlier:
                res[k] = earlier[k]
    return res


def write_plots(study: dict[str, Any], per_study: dict[str, list[str]], arms: dict[str, Arm],
                results: dict[str, Any], out: Path, budget: float) -> list[str]:
    plots: list[str] = []
    try:
        for s in ("arch", "vocab", "layout", "in_proj_optimizer"):
            if s in per_study:
                p = plot_curves(per_study[s], results, f"{s}: val BPB vs training wall-clock ({budget:g} s per arm)",
                                out / f"bpb_vs_wallclock_{s}.png")
                plots += [str(p)] if p else []
        trained = [n for n in arms if (results.get(n) or {}).get("summary")]
        p = plot_roles_by_arm(trained, results, out / "bytes_per_param_by_role.png")
        plots += [str(p)] if p else []
        gaps = [(n, results[n]["summary"]["quant_gap_bpb"]) for n in trained]
        for s in ("protect", "calibration"):
            for r in (study["studies"].get(s) or {}).get("arms", []):
                if r["arm"] not in [g[0] for g in gaps]:
                    gaps.append((r["arm"], r["quant_gap_bpb"]))
        p = plot_quant_gaps(gaps, out / "quant_gap.png")
        plots += [str(p)] if p else []
        comp = (study["studies"].get("compress") or {}).get("analysis")
        if comp:
            for fn, name in ((plot_in_proj_groups, "compress_in_proj_groups.png"),
                             (plot_remedies, "compress_remedies.png")):
                p = fn(comp, out / name)
                plots += [str(p)] if p else []
    except ImportError:
        print("golf study: matplotlib is not installed; no plots", file=sys.stderr)
    return plots


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="golf study", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="output directory (study.json, study.md, plots, runs)")
    p.add_argument("--budget-seconds", type=float, default=None,
                   help="training wall-clock per arm (default: the base config's WallClockBudget, else 180)")
    p.add_argument("--studies", nargs="+", choices=STUDIES, default=list(STUDIES))
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"base fit YAML with a hybrid backbone ({DEFAULT_CONFIG})")
    p.add_argument("--data-root", default="data", help="where the vocab study's {corpus}_sp{N} folders live")
    p.add_argument("--vocabs", type=int, nargs="+", default=list(DEFAULT_VOCABS), help="vocab and layout study sizes")
    p.add_argument("--layouts", nargs=2, default=None, metavar="LAYERS",
                   help="the layout study's two hybrid layouts (default: the base and the base with its first A as S)")
    p.add_argument("--accelerator", choices=("cpu", "gpu", "cuda", "auto"), default=None)
    p.add_argument("--devices", type=int, default=None, help="devices per arm (>1: each arm runs as a subprocess, DDP)")
    p.add_argument("--val-every", type=int, default=None, help="trainer.val_check_interval of every arm")
    p.add_argument("--sdclip-ks", type=float, nargs="*", default=list(DEFAULT_SDCLIP_KS),
                   help="SDClip k values tried for in_proj in the compress study")
    p.add_argument("--warmup-steps", type=int, default=2,
                   help="model.compile_warmup_steps of every arm: steps run and undone before the clock starts")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (in-process) / OMP_NUM_THREADS")
    p.add_argument("--subprocess", action="store_true", help="run every arm as a `python -m golf fit` subprocess")
    p.add_argument("--gpus", nargs="+", default=None, metavar="ID",
                   help="train arms at once, each alone on --devices of these GPUs (CUDA_VISIBLE_DEVICES)")
    p.add_argument("--parallel", type=int, default=None, help="train this many arms at once as CPU subprocesses")
    p.add_argument("--fresh", action="store_true", help="retrain arms even if their run directory has a report")
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="S",
                   help="train the arch/vocab/in_proj_optimizer arms once per seed (the first seed is the arms' own; "
                        "default: the base config's seed_everything only)")
    p.add_argument("--plan", action="store_true", help="write the arm configs and print the plan; train nothing")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: rebuild study.json, study.md and the plots from DIR's run directories (an "
                        "arm with a report.json counts as trained), e.g. for a study whose machine went away")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    slots = arm_slots(args)
    base_path = Path(args.config)
    if not base_path.is_file():
        raise GolfError(f"{base_path}: base config not found; pass --config BASE.yaml (e.g. {DEFAULT_CONFIG})")
    try:
        base = yaml.safe_load(base_path.read_text()) or {}
    except yaml.YAMLError as e:
        raise GolfError(f"{base_path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    budget = args.budget_seconds
    if budget is None:
        wc = _find_cb(copy.deepcopy(base), "WallClockBudget")
        budget = float((wc or {}).get("init_args", {}).get("budget_seconds", 180) or 180)
    if not budget > 0:
        raise GolfError("--budget-seconds must be > 0: every arm is stopped by the wall-clock budget")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    studies = list(dict.fromkeys(args.studies))
    arms, per_study, notes = plan_arms(base, studies, args)
    if {"vocab", "layout"} & set(studies) and not (args.plan or args.report_only):
        stem = notes["vocab_stem"]
        for a in arms.values():
            if a.name in per_study.get("vocab", []) + per_study.get("layout", []):
                prepare_data(Path(a.data_dir), a.vocab, stem)
    cfg_dir = out / "configs"
    cfg_dir.mkdir(exist_ok=True)
    cfg_paths = {}
    for a in arms.values():
        a.config = build_arm_config(base, a, out, args, budget)
        cfg_paths[a.name] = cfg_dir / f"{a.name}.yaml"
        if args.report_only and cfg_paths[a.name].is_file():
            continue  # the record of what was trained
        cfg_paths[a.name].write_text(f"# golf study arm {a.name}: {a.desc}\n"
                                     + yaml.safe_dump(a.config, sort_keys=False))
    print(f"golf study: {len(arms)} arm(s), {budget:g} s each: " + ", ".join(arms), flush=True)
    for s, names in per_study.items():
        print(f"  {s}: {', '.join(names)}", flush=True)
    if args.plan:
        for a in arms.values():
            print(f"  {a.name}: {count_parameters(a.config):,} parameters -> {cfg_paths[a.name]}")
        return 0

    runs: dict[str, dict[str, Any]] = {}
    prev = out / "study.json"
    earlier = (json.loads(prev.read_text()).get("arms") or {}) if prev.is_file() else {}

    this_command = ["golf", "study", *(argv if argv is not None else sys.argv[2:])]
    rebuilt = args.report_only and prev.is_file()
    old = json.loads(prev.read_text()) if rebuilt else {}

    def write_outputs(complete: bool) -> tuple[dict[str, Any], list[str]]:
        """study.json, study.md and plots from every arm so far; written after each arm too, so that a study cut
        off midway (a lost machine, a time limit) leaves the finished arms' tables and the others' curves."""
        results = {a.name: collect_result(a, runs.get(a.name), out, cfg_paths[a.name], earlier.get(a.name))
                   for a in arms.values()}
        study: dict[str, Any] = {
            "golf_study": 1,
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "complete": complete,
            "command": old.get("command", this_command),
            **({"rebuilt_with": this_command} if rebuilt else {}),
            "budget_seconds": budget,
            "base_config": str(base_path),
            "device": old.get("device") or _device_text("gpu" if args.gpus else args.accelerator
                                                        or _get(base, "trainer.accelerator"), args.devices, len(slots)),
            "studies_run": studies,
            "arms": results,
        }
        study["studies"] = build_study(per_study, arms, results, notes, args)
        study["plots"] = write_plots(study, per_study, arms, results, out, budget)
        (out / "study.json").write_text(json.dumps(study, indent=2, default=_json_default) + "\n")
        write_markdown(study, out / "study.md")
        return study, study["plots"]

    if args.report_only:
        runs.update({a.name: {"exit_code": 0, "from_disk": True} for a in arms.values()
                     if (run_dir(out, a.name) / "report.json").is_file()})
        done = [a for a in arms.values() if a.name in runs]
        complete = len(done) == len(arms) and all(
            (read_extras(a, run_dir(out, a.name)) or {}).get("complete", False) for a in done if a.variants or a.compress)
        study, plots = write_outputs(complete)
        print(f"golf study: rebuilt {out / 'study.json'}, {out / 'study.md'} and {len(plots)} plot(s) from "
              f"{len(done)} of {len(arms)} arm(s) on disk" + ("" if complete else " (partial)"), flush=True)
        return 0
    if slots:
        runs.update(run_arms_concurrently(list(arms.values()), cfg_paths, out, args, slots,
                                          on_done=lambda name, res: (runs.__setitem__(name, res),
                                                                     write_outputs(False))))
    else:
        for a in arms.values():
            runs[a.name] = run_arm(a, cfg_paths[a.name], out, args)
            if runs[a.name]["exit_code"] in INTERRUPTED:
                break
            write_outputs(False)
    stopped = next((r["exit_code"] for r in runs.values() if r["exit_code"] in INTERRUPTED), None)
    if stopped is not None:  # golf fit was interrupted (Ctrl-C / SIGTERM): stop the study
        print(f"golf study: an arm was interrupted (exit {stopped}); stopping the study", file=sys.stderr)
        return stopped if stopped > 0 else 128 - stopped

    study, plots = write_outputs(True)
    failed = [n for n, r in study["arms"].items() if r.get("exit_code")]
    print(f"golf study: wrote {out / 'study.json'}, {out / 'study.md'} and {len(plots)} plot(s)"
          + (f"; FAILED arms: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0
