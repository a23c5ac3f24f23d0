"""Per-tensor compressibility report: how many compressed bytes each parameter costs, by tensor and by role.

Each stored entry of a :class:`golf.quant.QuantizedState` (row-group pieces such as
``blocks.0.mixer.in_proj.weight::dd_A`` count as their own entries) is compressed *alone* with every compressor;
its bytes are the codes followed by the scales (or the stored float values). This is the measurement behind the
question "do SSM weights compress worse than attention weights?" (ssm.md §1.8).

    python -m golf.report_compress model.golf --png roles.png
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from golf.compress import compress, tensor_bytes
from golf.errors import GolfError
from golf.quant import QuantizedState
from golf.quant.roles import ROLES, role_base

COMPRESSORS = ("zlib", "lzma", "brotli", "zstd")


def tensor_report(qs: QuantizedState, compressors: tuple[str, ...] = COMPRESSORS) -> list[dict[str, Any]]:
    """One row per stored entry: ``name, role, kind, bits, params, quant_bytes, quant_bpp`` and, for each
    compressor ``c``, ``c_bytes`` (compressed size of this entry alone) and ``c_bpp`` (bytes per parameter)."""
    rows = []
    for name, m, keys in qs.storage_entries():
        data = b"".join(tensor_bytes(qs.tensors[k]) for k in keys)
        params = math.prod(m["shape"]) if m["shape"] else 1
        row: dict[str, Any] = {
            "name": name,
            "role": m.get("role", "other"),
            "kind": m["kind"],
            "bits": m.get("bits"),
            "store_dtype": m.get("store_dtype", "int8" if m["kind"].startswith("int") else None),
            "params": params,
            "quant_bytes": len(data),
            "quant_bpp": len(data) / max(params, 1),
        }
        for c in compressors:
            n = len(compress(data, c))
            row[f"{c}_bytes"] = n
            row[f"{c}_bpp"] = n / max(params, 1)
        rows.append(row)
    return rows


def _compressors_of(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    return [k[: -len("_bytes")] for k in rows[0] if k.endswith("_bytes") and k != "quant_bytes"]


def _role_order(role: str) -> tuple[int, str]:
    base = role_base(role)
    return (ROLES.index(base) if base in ROLES else len(ROLES), role)


def role_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of :func:`tensor_report` summed by role (``ssm_in_proj:dd_A`` etc. stay separate), plus a ``total``."""
    comps = _compressors_of(rows)
    acc: dict[str, dict[str, Any]] = {}
    for r in rows:
        a = acc.setdefault(r["role"], {"role": r["role"], "tensors": 0, "params": 0, "quant_bytes": 0,
                                       **{f"{c}_bytes": 0 for c in comps}})
        a["tensors"] += 1
        a["params"] += r["params"]
        a["quant_bytes"] += r["quant_bytes"]
        for c in comps:
            a[f"{c}_bytes"] += r[f"{c}_bytes"]
    out = [acc[k] for k in sorted(acc, key=_role_order)]
    if out:
        total = {"role": "total", **{k: sum(a[k] for a in out) for k in out[0] if k != "role"}}
        out.append(total)
    for a in out:
        a["quant_bpp"] = a["quant_bytes"] / max(a["params"], 1)
        for c in comps:
            a[f"{c}_bpp"] = a[f"{c}_bytes"] / max(a["params"], 1)
    return out


def format_table(rows: list[dict[str, Any]], key: str = "role") -> str:
    """A fixed-width text table of :func:`role_summary` (``key="role"``) or :func:`tensor_report` (``"name"``)."""
    comps = _compressors_of(rows)
    width = max([len(key)] + [len(str(r[key])) for r in rows]) if rows else len(key)
    head = f"{key:<{width}} {'params':>12} {'raw B/p':>8} " + " ".join(f"{c + ' B/p':>11}" for c in comps)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{str(r[key]):<{width}} {r['params']:>12,} {r['quant_bpp']:>8.4f} "
            + " ".join(f"{r[f'{c}_bpp']:>11.4f}" for c in comps)
        )
    return "\n".join(lines)


def plot_roles(
    rows: list[dict[str, Any]], png_path: str | Path, title: str | None = None, min_params: int = 1024
) -> Path:
    """Bar chart of compressed bytes per parameter by role, one bar per compressor (Agg, no display needed).

    ``rows`` may be :func:`tensor_report` rows (summarised here) or :func:`role_summary` rows. Roles with fewer
    than ``min_params`` parameters are left out of the chart (their bytes/param is dominated by the compressors'
    fixed container overhead); the tables keep them.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    summary = rows if rows and "tensors" in rows[0] else role_summary(rows)
    summary = [r for r in summary if r["role"] != "total"]
    omitted = [r["role"] for r in summary if r["params"] < min_params]
    summary = [r for r in summary if r["params"] >= min_params]
    comps = _compressors_of(summary)
    roles = [r["role"] for r in summary]
    fig = Figure(figsize=(max(6.0, 0.9 * len(roles) + 2), 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    n = max(len(comps), 1)
    width = 0.8 / n
    for i, c in enumerate(comps):
        xs = [j + (i - (n - 1) / 2) * width for j in range(len(roles))]
        ax.bar(xs, [r[f"{c}_bpp"] for r in summary], width=width, label=c)
    ax.plot(range(len(roles)), [r["quant_bpp"] for r in summary], "k_", markersize=14, label="uncompressed")
    ax.set_xticks(range(len(roles)))
    ax.set_xticklabels(roles, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("compressed bytes / parameter")
    ax.set_title(title or "Compressed bytes per parameter by role", fontsize=10)
    if omitted:
        ax.text(0.99, 0.98, f"omitted (< {min_params:,} params): {', '.join(omitted)}", transform=ax.transAxes,
                ha="right", va="top", fontsize=6, color="0.4")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path)
    return png_path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m golf.report_compress", description=__doc__.split("\n")[0])
    p.add_argument("artifact", help="a golf artifact written by golf fit")
    p.add_argument("--png", help="write the per-role bar chart here")
    p.add_argument("--compressors", default=",".join(COMPRESSORS), help="comma-separated subset of " +
                   ",".join(COMPRESSORS))
    p.add_argument("--tensors", action="store_true", help="also print the per-tensor table")
    args = p.parse_args(argv)
    from golf.artifact import read_artifact

    try:
        comps = tuple(c for c in args.compressors.split(",") if c)
        bad = [c for c in comps if c not in COMPRESSORS]
        if bad:
            raise GolfError(f"--compressors: unknown {bad}; use a subset of {','.join(COMPRESSORS)}")
        qs, _ = read_artifact(args.artifact)
        rows = tensor_report(qs, comps)
        if args.tensors:
            print(format_table(rows, key="name"))
            print()
        print(format_table(role_summary(rows)))
        if args.png:
            print(f"wrote {plot_roles(rows, args.png)}")
    except GolfError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
