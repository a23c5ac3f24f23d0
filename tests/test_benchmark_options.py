"""Options of the benchmark scripts that can be checked without a GPU."""

from __future__ import annotations

import sys

import pytest
from conftest import REPO

from golf.kernels.ssm_scan import triton_chunk, triton_prologue


@pytest.fixture
def ssm_kernel(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    monkeypatch.setattr(triton_prologue, "LAUNCH_CONFIG", dict(triton_prologue.LAUNCH_CONFIG))
    monkeypatch.setattr(triton_chunk, "LAUNCH_CONFIG", {k: dict(v) for k, v in triton_chunk.LAUNCH_CONFIG.items()})
    import ssm_kernel

    yield ssm_kernel
    sys.modules.pop("ssm_kernel", None)


def test_launch_overrides_set_the_kernels_settings_and_are_returned(ssm_kernel):
    applied = ssm_kernel.apply_launch_overrides(["prologue.bt=64", "fwd_states.num_warps=2"])
    assert applied == {"prologue.bt": 64, "fwd_states.num_warps": 2}
    assert triton_prologue.LAUNCH_CONFIG["bt"] == 64 and triton_chunk.LAUNCH_CONFIG["fwd_states"]["num_warps"] == 2


@pytest.mark.parametrize("item", ["prologue.nope=1", "fwd_nothing.num_warps=2", "prologue.bt="])
def test_a_bad_launch_override_is_a_one_line_error_naming_it(ssm_kernel, item):
    with pytest.raises(SystemExit, match=rf"^--launch {item}: expected prologue\.KEY=VALUE or KERNEL\.KEY=VALUE"):
        ssm_kernel.apply_launch_overrides([item])
