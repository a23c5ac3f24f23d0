"""Every Triton kernel of golf compiles for an H100 (sm_90) on a machine without a GPU.

The interpreter (``TRITON_INTERPRET=1``) runs kernels as NumPy and skips the compiler's type checks, so a kernel can
pass every CPU test and still fail to compile on the GPU (a loop-carried variable whose type changes inside a loop
did exactly that). Triton's compiler needs no GPU for a given target: ``benchmarks/kernel_registers.py`` compiles
every kernel (the SSM scan's and the MLP's matmuls) to PTX and runs ptxas for sm_90a with the realistic constexprs
and dtypes of the training shape, the shipped launch settings and the other paths' and sweeps' variants. Runs in a
subprocess because the kernels must be imported without ``TRITON_INTERPRET``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

triton = pytest.importorskip("triton")

KERNELS = {"_theta_block_sums", "_block_scan", "_prologue_fwd", "_prologue_bwd", "_prologue_bwd_fix", "_fwd_states",
           "_fwd_output", "_bwd_output_stage", "_bwd_states", "_bwd_dqkvg", "_fc_act_fwd", "_dgrad_act_bwd"}  # fmt: skip


def test_every_triton_kernel_compiles_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "kernel_registers.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "kernel_registers.py"), "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600, cwd=REPO)  # fmt: skip
    errors = [line for line in proc.stderr.splitlines() if "Error" in line or "error" in line]
    assert proc.returncode == 0, "\n".join(errors[-5:]) or proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert {row["kernel"] for row in rows} == KERNELS
    assert all(row["registers"] > 0 and row["programs_per_sm"] >= 1 for row in rows), rows


def test_kernel_registers_refuses_the_interpreter_in_one_line(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = tmp_path / "kernel_registers.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "kernel_registers.py"), "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=300, cwd=REPO)  # fmt: skip
    assert proc.returncode != 0 and not out.exists()
    assert proc.stderr.strip() == "kernel_registers.py compiles the kernels: run it with TRITON_INTERPRET unset"
