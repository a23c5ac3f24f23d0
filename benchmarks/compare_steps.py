"""Compare training-step results across runs: the JSON files ``train_step.py`` writes, side by side.

    python benchmarks/compare_steps.py benchmarks/results/train_step_h200_residual_hybrid_ac.json \
        benchmarks/results/train_step_h200_eleventh_hybrid.json

One table: per (config, row), ms/step and tokens/s in each file and each file's ms/step over the first file's. Then,
for the rows profiled in more than one file, their GPU kernel time per family. Files from different devices, torch
versions or step counts are flagged: step times move by up to 5% between device machines, so a ratio across calls is
weaker evidence than one within a call (RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROW_KEYS = ("config", "row")


def load(path: Path) -> dict:
    """A ``train_step.py`` result file, or a one-line SystemExit naming the file and what is wrong."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SystemExit(f"{path}: cannot read it as JSON ({e}); pass a file written by benchmarks/train_step.py") from None
    rows = data.get("rows") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and all(k in r for k in ROW_KEYS) for r in rows):
        raise SystemExit(f"{path}: no 'rows' of (config, row) results; pass a file written by benchmarks/train_step.py")
    return data


def row_key(row: dict) -> tuple[str, str]:
    return row["config"], row["row"]


def differences(runs: list[dict]) -> list[str]:
    """What differs between the runs' set-ups, one line each (empty when device, torch and steps agree)."""
    notes = []
    for key in ("device", "torch", "steps", "warmup"):
        values = [str(r.get(key)) for r in runs]
        if len(set(values)) > 1:
            notes.append(f"{key} differs: {' | '.join(values)}")
    return notes


def table(keys: list[tuple[str, str]], by_run: list[dict[tuple[str, str], dict]]) -> list[str]:
    """ms/step, tokens/s and the ratio to the first run's ms/step, per (config, row) and run."""
    width = max([16] + [len(c) + 2 for c, _ in keys])
    lines = [f"{'':<{width + 6}}" + "".join(f"{f'[{i}]':>30}" for i in range(len(by_run)))]
    lines.append(f"{'config':<{width}}{'row':<6}" + "".join(f"{'ms/step':>10}{'tok/s':>12}{'x [0]':>8}" for _ in by_run))
    for key in keys:
        cells, first = [], by_run[0].get(key, {}).get("ms_per_step")
        for rows in by_run:
            r = rows.get(key, {})
            ms = r.get("ms_per_step")
            if ms is None:
                cells.append(f"{r.get('error', '-')[:28]:>30}")
                continue
            ratio = f"{ms / first:.3f}" if first else "-"
            cells.append(f"{ms:>10.1f}{r.get('tokens_per_s', 0):>12,.0f}{ratio:>8}")
        lines.append(f"{key[0]:<{width}}{key[1]:<6}" + "".join(cells))
    return lines


def family_tables(keys: list[tuple[str, str]], by_run: list[dict[tuple[str, str], dict]]) -> list[str]:
    """Per row profiled in two or more runs: GPU kernel ms per family in each run, and the last minus the first."""
    lines = []
    for key in keys:
        profiles = [(i, rows[key]["profile"]) for i, rows in enumerate(by_run) if "profile" in rows.get(key, {})]
        if len(profiles) < 2:
            continue
        families = list(dict.fromkeys(f for _, p in profiles for f in p.get("families", {})))
        lines.append(f"\nGPU kernel ms per family, one profiled step of {key[0]} ({key[1]})")
        lines.append(f"{'family':<18}" + "".join(f"{f'[{i}]':>10}" for i, _ in profiles) + f"{'last - first':>14}")
        for fam in ["kernels in all", *families]:
            values = [p["total_ms"] if fam == "kernels in all" else p.get("families", {}).get(fam, {}).get("ms", 0.0)
                      for _, p in profiles]
            lines.append(f"{fam:<18}" + "".join(f"{v:>10.1f}" for v in values) + f"{values[-1] - values[0]:>+14.1f}")
    return lines


def report(paths: list[Path]) -> str:
    runs = [load(p) for p in paths]
    lines = [f"[{i}] {p}: {run.get('device', '?')}, {run.get('date', '?')}, commit {run.get('commit', '?')}, "
             f"torch {run.get('torch', '?')}, {run.get('steps', '?')} steps after {run.get('warmup', '?')} warm-up"
             for i, (p, run) in enumerate(zip(paths, runs))]
    notes = differences(runs)
    if len(runs) > 1:
        lines += [f"note: {n}" for n in notes] or ["note: same device, torch and step counts; still separate calls"]
    keys = list(dict.fromkeys(row_key(r) for run in runs for r in run["rows"]))
    by_run = [{row_key(r): r for r in run["rows"]} for run in runs]
    lines += ["", *table(keys, by_run), *family_tables(keys, by_run)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path, help="train_step.py result files; the first is the base of ratios")
    print(report(ap.parse_args(argv).files))


if __name__ == "__main__":
    main()
