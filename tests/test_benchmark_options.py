"""Options of the benchmark scripts that can be checked without a GPU."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
import torch
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


def test_the_mixer_layout_row_reads_v_and_z_as_in_proj_column_slices(ssm_kernel):
    """The kernel benchmark's mixer-layout row: v, z column slices of one [B, T, 2 H P + extra] buffer with the
    inputs' values, angles a stride-0 expand over heads, every leaf a fresh tensor that receives a gradient."""
    inp = ssm_kernel.make_inputs(1, 8, device="cpu")
    mixer, leaves = ssm_kernel.mixer_layout(inp)
    h, p = inp["v"].shape[2:]
    assert mixer["v"].stride(1) == mixer["z"].stride(1) == 2 * h * p + 2 * ssm_kernel.D_STATE + 3 * h + ssm_kernel.N_ANGLES
    assert mixer["v"].data_ptr() - mixer["z"].data_ptr() == h * p * inp["v"].element_size()
    assert torch.equal(mixer["v"], inp["v"]) and torch.equal(mixer["z"], inp["z"])
    assert mixer["angles"].stride(2) == 0 and torch.equal(mixer["angles"][:, :, 0], inp["angles"][:, :, 0])
    assert all(x.is_leaf and x.requires_grad for x in leaves) and len(leaves) == len(inp)
    sum((x.float() * 1).sum() for x in mixer.values()).backward()
    assert all(x.grad is not None for x in leaves)


TOY_TRAINING_SCRIPT = '''
import torch

w = torch.nn.Parameter(torch.ones(4))
first, second = torch.optim.SGD([w], lr=0.1), torch.optim.Adam([w], lr=0.1)
initial = first.state_dict()

def train_step(step):
    loss = w.sum()
    for _ in range(step):  # step k runs k cumsums: the profile says which step it saw
        loss = loss + torch.cumsum(w.detach(), 0).sum()
    loss.backward()
    for opt in (first, second):
        opt.step()
    first.zero_grad()

for step in range(1, 4):  # warm-up, then the optimizer is restored and the timed loop starts at step 1
    train_step(step)
first.load_state_dict(initial)
for step in range(1, 6):
    train_step(step)
print("done")
'''


def test_profile_script_profiles_the_requested_step_of_the_timed_loop(tmp_path):
    import json
    import subprocess

    script = tmp_path / "train_toy.py"
    script.write_text(TOY_TRAINING_SCRIPT)
    out = tmp_path / "profile.json"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "profile_script.py"), "--step", "4", "--top", "100",
                          "--out", str(out), str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith("done")
    summary = json.loads(out.read_text())
    calls = {k["name"]: k["calls"] for k in summary["top"]}
    assert calls["aten::cumsum"] == 4 and summary["clock"] == "cpu ops" and summary["wall_ms"] > 0
    assert len(calls) > 25  # --top 100: every op of the step (~30), not the default 25


def test_profile_script_refuses_a_top_below_one_before_running_the_script(tmp_path):
    script = tmp_path / "train_toy.py"
    script.write_text("open('ran', 'w').write('yes')\n")
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "profile_script.py"), "--step", "4", "--top", "0",
                          "--out", str(tmp_path / "p.json"), str(script)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)  # fmt: skip
    assert run.returncode != 0 and run.stderr.strip() == "--top 0: give the number of kernels to list, 1 or more"
    assert not (tmp_path / "ran").exists() and not (tmp_path / "p.json").exists()


def test_profile_summaries_leave_out_annotated_ranges(monkeypatch):
    """An optimizer's ``Optimizer.step#...`` range spans kernels that are counted on their own: not summed twice."""
    import torch

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from profiling import profile_step

    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(8))], lr=0.1)
    opt.param_groups[0]["params"][0].grad = torch.ones(8)
    summary = profile_step(opt.step)
    assert summary["top"] and not any("Optimizer.step" in k["name"] for k in summary["top"])


def test_results_name_the_commit_given_by_golf_commit_before_git_head(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import provenance

    monkeypatch.delenv("GOLF_COMMIT", raising=False)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout
    assert provenance.code_commit() == (head.strip() or "unknown")
    monkeypatch.setenv("GOLF_COMMIT", "abc1234")  # a tree copied to a GPU machine, whose .git may be stale
    assert provenance.code_commit() == "abc1234"


def test_profile_families_sort_kernels_by_name_and_sum_every_kernel(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from profiling import families

    timed = [("_bwd_dqkvg", 4.0, 1), ("mamba3_siso_fwd_kernel", 1.0, 1), ("nvjet_sm90_tst_256x128", 3.0, 2),
             ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop", 2.0, 1), ("triton_red_fused__log_softmax_3", 5.0, 1),
             ("ncclDevKernel_AllReduce_Sum_f32", 1.0, 1), ("Memset (Device)", 0.5, 1),
             ("void at::native::reduce_kernel", 3.5, 1),
             ("void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits<64, 128, "
              "128, 8, 4, 4, 4, false, false, cutlass::bfloat16_t", 1.5, 1),
             ("triton_tem_fused__fused_rms_norm__to_copy_add_mm_mul_select_view_2", 2.5, 1)]
    got = families(timed, total=24.0)
    assert list(got) == ["matmul", "ssm scan", "inductor", "attention", "other", "collectives", "copies and fills"]
    assert got["attention"]["ms"] == 3.5 / 1e3  # FlashAttention-2's kernel names CUTLASS types: still attention
    assert got["matmul"]["ms"] == 5.5 / 1e3  # an Inductor matmul template (max-autotune) is a matmul
    assert got["ssm scan"]["ms"] == 5.0 / 1e3 and got["other"]["share"] == 3.5 / 24.0
    assert abs(sum(f["ms"] for f in got.values()) - sum(t for _, t, _ in timed) / 1e3) < 1e-12


def test_gpu_gaps_charges_idle_time_to_the_host_range_open_when_the_gpu_ran_dry(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from gpu_gaps import analyse, load_events

    def ev(cat, name, ts, dur, tid=1, corr=None):
        return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 0 if cat != "kernel" else 9,
                "tid": tid, **({"args": {"correlation": corr}} if corr is not None else {})}

    events = [
        ev("user_annotation", "Optimizer.step#GolfOptimizer.step", 100, 300),
        ev("cpu_op", "aten::add_", 150, 200),
        ev("cuda_runtime", "cudaLaunchKernel", 10, 5, corr=1), ev("kernel", "k1", 20, 100, corr=1),  # busy 20-120
        ev("cuda_runtime", "cudaLaunchKernel", 30, 5, corr=2), ev("kernel", "k2", 110, 40, corr=2),  # overlaps: 150
        ev("cuda_runtime", "cudaLaunchKernel", 300, 5, corr=3), ev("kernel", "k3", 310, 10, corr=3),  # host late: 160
        ev("cuda_runtime", "cudaLaunchKernel", 305, 5, corr=4), ev("kernel", "k4", 340, 10, corr=4),  # queued: 20
        ev("cuda_runtime", "cudaStreamSynchronize", 360, 50),
    ]
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"traceEvents": events}))
    r = analyse(load_events(path), min_us=10)
    assert (r["span_ms"], r["busy_ms"], r["idle_ms"]) == pytest.approx((0.33, 0.15, 0.18))
    assert r["gaps"] == [("Optimizer.step#GolfOptimizer.step > aten::add_", 0.16, 1),
                         ("queued: GPU-side wait", 0.02, 1)]
    assert r["blocking"] == [("cudaStreamSynchronize in Optimizer.step#GolfOptimizer.step", 0.05, 1)]
    assert r["host_lead_ms"] == pytest.approx({"min": 0.01, "median": 0.035, "max": 0.08, "last": 0.035})


@pytest.mark.parametrize("content", ["not json", '{"traceEvents": [{"ph": "X", "cat": "cpu_op", "name": "aten::add", '
                                     '"ts": 0, "dur": 5, "pid": 0, "tid": 1}]}'])
def test_gpu_gaps_refuses_a_file_that_is_no_gpu_trace_in_one_line_naming_it(tmp_path, content):
    path = tmp_path / "trace.json"
    path.write_text(content)
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_gaps.py"), str(path)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode != 0
    message = run.stderr.strip()
    assert len(message.splitlines()) == 1 and message.startswith(f"{path}: ") and "--trace-dir" in message


def test_train_step_refuses_trace_dir_without_profile_before_any_work(tmp_path):
    cmd = [sys.executable, str(REPO / "benchmarks" / "train_step.py"), "--trace-dir", str(tmp_path / "t"),
           "--out", str(tmp_path / "out" / "x.json")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and run.stderr.strip().splitlines()[-1] == (
        "--trace-dir writes the profiled step's trace: pass --profile too")
    assert not (tmp_path / "t").exists() and not (tmp_path / "out").exists()


def test_train_step_refuses_a_negative_profile_count_before_any_work(tmp_path):
    cmd = [sys.executable, str(REPO / "benchmarks" / "train_step.py"), "--profile", "-3",
           "--out", str(tmp_path / "out" / "x.json")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and run.stderr.strip().splitlines()[-1] == (
        "--profile -3: give the number of kernels to list (1 or more), or leave it out")
    assert not (tmp_path / "out").exists()


def test_train_step_compares_each_golf_row_with_its_bare_row_peer_and_the_reference_config(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import train_step

    rows = [dict(config="baseline_sp1024", row="golf", ms_per_step=280.0, tokens_per_s=1_872_457.0),
            dict(config="baseline_sp1024", row="peer", ms_per_step=310.0),
            dict(config="hybrid_sp1024", row="golf", ms_per_step=600.0, tokens_per_s=1_747_626.0),
            dict(config="hybrid_sp1024", row="bare", ms_per_step=597.0, tokens_per_s=1_756_408.0),
            dict(config="hybrid_sp8192", row="golf", error="exit 1")]
    train_step.compare(rows, ["baseline_sp1024", "hybrid_sp1024", "hybrid_sp8192"], "baseline_sp1024")
    base, _, hybrid, bare, failed = rows
    assert base["speedup_vs_peer"] == pytest.approx(310 / 280) and "tokens_per_s_vs_reference" not in base
    assert hybrid["lightning_overhead_pct"] == pytest.approx(100 * (600 / 597 - 1))
    assert hybrid["tokens_per_s_vs_reference"] == {"config": "baseline_sp1024", "ratio": pytest.approx(0.9333, abs=1e-4)}
    assert "tokens_per_s_vs_reference" not in bare and "tokens_per_s_vs_reference" not in failed
    alone = [dict(config="hybrid_sp1024", row="golf", ms_per_step=600.0, tokens_per_s=1_747_626.0)]
    train_step.compare(alone, ["hybrid_sp1024"], "baseline_sp1024")  # the reference did not run: no ratio
    assert "tokens_per_s_vs_reference" not in alone[0]


def test_train_step_profile_top_adds_one_profiled_step_to_golf_and_peer_rows(monkeypatch, tmp_path):
    """``--profile 200`` lists 200 kernels of one more step: the golf run's max_steps and the peer's ITERATIONS are
    warmup + steps + 1, not + 200."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import train_step

    seen = {}

    def build(config, data_dir, extra):
        seen["golf"] = extra
        raise RuntimeError("stop after the arguments")

    monkeypatch.setattr(train_step, "build", build)
    with pytest.raises(RuntimeError, match="stop after"):
        train_step.row_golf("baseline_sp1024", "unused", steps=10, warmup=3, profile=200)
    assert "--trainer.max_steps=14" in seen["golf"]
    peers, data = tmp_path / "peers", tmp_path / "data"
    peers.mkdir(), data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"tokenizer": "tok.model"}))
    (peers / "train_gpt.py").write_text(
        "import os\nn = int(os.environ['ITERATIONS'])\nopen('iterations.txt', 'w').write(str(n))\n"
        "for s in range(n + 1):\n    print(f'step:{s}/{n} train_loss:1.0 train_time:{100 * s}ms')\n"
    )
    row = train_step.row_peer("baseline_sp1024", str(data), peers, steps=10, warmup=3, vocab=1024, log_dir=tmp_path,
                              peer_timeout=120, profile=200)
    assert (peers / "iterations.txt").read_text() == "14"
    assert row["ms_per_step"] == pytest.approx(100.0) and row["exit"] == 0
    script = (peers / "train_gpt.py").read_bytes()
    assert (row["script"], row["script_sha256"]) == ("train_gpt.py", hashlib.sha256(script).hexdigest())
    assert row["settings"]["ITERATIONS"] == "14" and row["settings"]["VOCAB_SIZE"] == "1024"


def _step_result(path, device, rows):
    path.write_text(json.dumps({"device": device, "torch": "2.11.0+cu130", "date": "2026-11-29", "commit": "abc1234",
                                "steps": 8, "warmup": 3, "rows": rows}))
    return path


def test_compare_steps_puts_runs_side_by_side_with_ratios_flags_other_devices_and_diffs_families(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from compare_steps import report

    prof = lambda total, scan: {"total_ms": total, "families": {"ssm scan": {"ms": scan}, "matmul": {"ms": 100.0}}}  # noqa: E731
    old = _step_result(tmp_path / "old.json", "NVIDIA H200", [
        {"config": "hybrid_sp1024", "row": "golf", "ms_per_step": 560.0, "tokens_per_s": 1.87e6,
         "profile": prof(540.0, 130.0)},
        {"config": "hybrid_sp1024", "row": "peer", "ms_per_step": 640.0, "tokens_per_s": 1.64e6}])
    new = _step_result(tmp_path / "new.json", "NVIDIA H100 80GB HBM3", [
        {"config": "hybrid_sp1024", "row": "golf", "ms_per_step": 532.0, "tokens_per_s": 1.97e6,
         "profile": prof(515.0, 105.0)},
        {"config": "baseline_sp1024", "row": "all", "error": "exit 124, see x.log"}])
    lines = report([old, new]).splitlines()
    assert lines[0].startswith(f"[0] {old}: NVIDIA H200") and lines[1].startswith(f"[1] {new}: NVIDIA H100")
    assert "note: device differs: NVIDIA H200 | NVIDIA H100 80GB HBM3" in lines
    golf = next(line for line in lines if line.startswith("hybrid_sp1024") and " golf " in line).split()
    assert golf[2:] == ["560.0", "1,870,000", "1.000", "532.0", "1,970,000", "0.950"]
    peer = next(line for line in lines if line.startswith("hybrid_sp1024") and " peer " in line).split()
    assert peer[2:] == ["640.0", "1,640,000", "1.000", "-"]  # a row missing from a run is a dash, not a zero
    assert any(line.startswith("baseline_sp1024") and "exit 124" in line for line in lines)
    assert lines[lines.index("GPU kernel ms per family, one profiled step of hybrid_sp1024 (golf)") + 2:][:3] == [
        f"{'kernels in all':<18}{540.0:>10.1f}{515.0:>10.1f}{-25.0:>+14.1f}",
        f"{'ssm scan':<18}{130.0:>10.1f}{105.0:>10.1f}{-25.0:>+14.1f}",
        f"{'matmul':<18}{100.0:>10.1f}{100.0:>10.1f}{0.0:>+14.1f}"]


@pytest.mark.parametrize("content", ["not json", '{"rows": [{"ms_per_step": 1.0}]}', "[1, 2]"])
def test_compare_steps_refuses_a_file_that_is_no_step_result_in_one_line_naming_it(tmp_path, content):
    path = tmp_path / "kernel.json"
    path.write_text(content)
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "compare_steps.py"), str(path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    message = run.stderr.strip()
    assert len(message.splitlines()) == 1 and message.startswith(f"{path}: ") and "train_step.py" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_mlp_kernel_benchmark_refuses_a_machine_without_a_gpu_in_one_line():
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "mlp_kernel.py"), "--shapes", "hybrid"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert run.stderr.strip() == "mlp_kernel.py times GPU kernels: run it on a machine with a CUDA GPU"
