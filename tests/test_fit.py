"""End-to-end CLI runs on a tiny corpus: fit -> artifact -> report, validate (checkpoint and artifact), config errors,
constraint plug-ins, and the 2-process (gloo) checks of the budget and of distributed equivalence."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import REPO, only_version_dir, run_golf, tiny_config
from golf.cli import main


def test_fit_writes_artifact_and_report_then_validate_agrees(tmp_path, tiny_data, capsys):
    cfg = tiny_config(tmp_path, tiny_data)
    assert main(["fit", "--config", str(cfg)]) == 0
    run = only_version_dir(tmp_path)
    report = json.loads((run / "report.json").read_text())
    assert report["training"]["steps"] == 4 and report["passed"] is True
    assert report["training"]["tokens_seen"] == 4 * 512
    assert report["training"]["late_qat_from_step"] == 3  # warm-down over the last 2 of 4 steps: scale 0.5 at step 3
    assert math.isfinite(report["post_quant"]["val_bpb"]) and report["post_quant"]["tokens"] == 8192
    art = report["artifact"]
    assert art["total_bytes"] == art["model_bytes"] + art["code_bytes_compressed"] and art["fits"]
    assert Path(art["path"]).stat().st_size == art["model_bytes"]
    roles = {r["role"] for r in report["compressibility"]["by_role"]}
    assert {"embedding", "attn_qkv", "mlp", "ssm_dynamics"} <= roles and any(r.startswith("ssm_in_proj") for r in roles)
    out = capsys.readouterr().err + capsys.readouterr().out

    capsys.readouterr()
    assert main(["validate", "--artifact", art["path"], "--config", str(cfg), "--report", str(tmp_path / "v.json")]) == 0
    again = json.loads((tmp_path / "v.json").read_text())
    assert again["val_bpb"] == report["post_quant"]["val_bpb"]  # same code path, same bytes on disk

    (ckpt,) = (run / "checkpoints").glob("*.ckpt")
    assert main(["validate", "--config", str(cfg), "--ckpt_path", str(ckpt)]) == 0
    del out


def test_unknown_config_key_is_a_clear_error(tmp_path, tiny_data, capsys):
    cfg = tiny_config(tmp_path, tiny_data)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(cfg), "--model.backbone.modle_dim", "64"])
    assert exit_.value.code == 2
    assert "modle_dim" in capsys.readouterr().err


def test_over_the_cap_exits_3_with_the_breakdown(tmp_path, tiny_data, capsys):
    cfg = tiny_config(tmp_path, tiny_data, **{"trainer.max_steps": 1, "trainer.val_check_interval": 1})
    code = main(["fit", "--config", str(cfg), "--trainer.callbacks+=golf.callbacks.ArtifactSizeCap",
                 "--trainer.callbacks.cap_bytes=1000"])
    err = capsys.readouterr().err
    assert code == 3 and "ArtifactSizeCap" in err and "> cap 1,000" in err
    report = json.loads((only_version_dir(tmp_path) / "report.json").read_text())
    assert report["passed"] is False


def test_constraint_plugins_load_from_yaml_and_fire(tmp_path, tiny_data, capsys):
    cfg = tiny_config(tmp_path, tiny_data)
    code = main(["fit", "--config", str(cfg), "--trainer.callbacks+=plugins.MaxLayers", "--trainer.callbacks.max_layers=1"])
    assert code == 3 and "MaxLayers failed before training: 2 layers > max_layers 1" in capsys.readouterr().err
    code = main(["fit", "--config", str(cfg), "--trainer.max_steps=1", "--trainer.callbacks+=plugins.MinValTokens",
                 "--trainer.callbacks.min_tokens=100000"])
    assert code == 3 and "MinValTokens: scored 8192 val tokens < 100000" in capsys.readouterr().err


def run_on_two_ranks(cfg: Path, *args: str, timeout: float = 300):
    """``golf fit`` on 2 gloo ranks in a subprocess, with the test plug-ins (tests/plugins.py) importable."""
    return run_golf(["fit", "--config", str(cfg), "--trainer.devices=2", "--trainer.strategy=ddp", *args], cwd=REPO,
                    env={"PYTHONPATH": str(REPO / "tests")}, timeout=timeout)


def stop_steps(out_dir: Path) -> list[int]:
    """The last step each rank trained, as the plug-ins record it (stop_rank{0,1}.json)."""
    return [json.loads((out_dir / f"stop_rank{rank}.json").read_text())["step"] for rank in (0, 1)]


@pytest.mark.parametrize("fail_at", [2, 4], ids=["mid-run", "last-step"])
def test_a_per_step_constraint_stops_the_run_and_fails_it(tmp_path, tiny_data, capsys, fail_at):
    """check_step failing at step 2 of 12 stops training one step later (the agreed verdict is read at the next
    step); failing at the last step, whose verdict no later step reads, still fails the run."""
    cfg = tiny_config(tmp_path, tiny_data, **{"trainer.max_steps": 12 if fail_at == 2 else 4,
                                              "trainer.val_check_interval": 1000})
    code = main(["fit", "--config", str(cfg), "--trainer.callbacks+=plugins.FailFromStep",
                 f"--trainer.callbacks.step={fail_at}", f"--trainer.callbacks.out_dir={tmp_path}"])
    assert code == 3 and f"FailFromStep: step {fail_at} >= {fail_at} on rank 0" in capsys.readouterr().err
    assert json.loads((tmp_path / "stop_rank0.json").read_text())["step"] == (3 if fail_at == 2 else 4)


@pytest.mark.slow
def test_a_per_step_constraint_failing_on_one_rank_stops_both_on_the_same_step(tmp_path, tiny_data):
    cfg = tiny_config(tmp_path, tiny_data, **{"trainer.max_steps": 12, "trainer.val_check_interval": 1000})
    r = run_on_two_ranks(cfg, "--trainer.callbacks+=plugins.FailFromStep", "--trainer.callbacks.step=2",
                         "--trainer.callbacks.rank=1", f"--trainer.callbacks.out_dir={tmp_path}")
    assert r.returncode == 3 and "FailFromStep: violated on another rank" in r.stderr, r.stderr[-3000:]
    assert stop_steps(tmp_path) == [3, 3]


@pytest.mark.slow
def test_two_ranks_stop_on_the_same_step_when_one_is_slow(tmp_path, tiny_data):
    cfg = tiny_config(tmp_path, tiny_data, **{"trainer.max_steps": 1000, "trainer.val_check_interval": 1000})
    r = run_on_two_ranks(cfg, "--trainer.callbacks+=golf.callbacks.WallClockBudget",
                         "--trainer.callbacks.budget_seconds=6", "--trainer.callbacks+=plugins.SlowRank",
                         f"--trainer.callbacks.out_dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-3000:]
    steps = stop_steps(tmp_path)
    assert steps[0] == steps[1] and 0 < steps[0] < 1000


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["ctrl-c", "nan"])
def test_a_fault_on_one_rank_stops_both_ranks_on_the_same_step(tmp_path, tiny_data, fault):
    """A Ctrl-C or a non-finite loss seen by rank 1 only: the decision is agreed (one step late, without stalling the
    step), so both ranks stop together -- no rank is left waiting in a collective (the subprocess would time out)."""
    cfg = tiny_config(tmp_path, tiny_data, **{"trainer.max_steps": 12, "trainer.val_check_interval": 1000})
    if fault == "ctrl-c":
        args = ["--trainer.callbacks+=golf.callbacks.SaveOnInterrupt", "--trainer.callbacks+=plugins.SignalSelf",
                "--trainer.callbacks.step=2", "--trainer.callbacks.signal_name=SIGINT", "--trainer.callbacks.rank=1"]
    else:
        args = ["--model.max_bad_steps=2", "--trainer.callbacks+=plugins.PoisonWeights", "--trainer.callbacks.step=2",
                "--trainer.callbacks.rank=1"]
    r = run_on_two_ranks(cfg, *args)
    assert r.returncode != 0, r.stderr[-3000:]
    if fault == "ctrl-c":
        (ckpt,) = only_version_dir(tmp_path).glob("checkpoints/interrupted.ckpt")
        assert torch.load(ckpt, weights_only=True)["global_step"] in (3, 4)  # requested after step 2, agreed a step late
    else:
        assert "NaN/Inf for 2 consecutive steps" in r.stderr


@pytest.mark.slow
def test_two_processes_give_the_same_bpb_as_one_for_the_same_global_batch(tmp_path, tiny_data):
    results = {}
    for devices in (1, 2):
        out = tmp_path / f"d{devices}"
        out.mkdir()
        cfg = tiny_config(out, tiny_data, **{"trainer.max_steps": 3, "trainer.val_check_interval": 3})
        r = run_golf(["fit", "--config", str(cfg), f"--trainer.devices={devices}", "--trainer.strategy=ddp"],
                     cwd=REPO, env={"PYTHONPATH": str(REPO / "tests")})
        assert r.returncode == 0, r.stderr[-3000:]
        results[devices] = json.loads((only_version_dir(out) / "report.json").read_text())
    one, two = results[1], results[2]
    assert one["training"]["tokens_seen"] == two["training"]["tokens_seen"]
    # Same data, same init; only the float summation order of gradients differs (all-reduce vs accumulation).
    assert two["pre_quant"]["val_bpb"] == pytest.approx(one["pre_quant"]["val_bpb"], rel=1e-4)
    assert two["post_quant"]["tokens"] == one["post_quant"]["tokens"]


def test_cuda_graph_safe_gradient_buffers_train_exactly_as_the_default(tmp_path, tiny_data):
    """With ``triton.cudagraphs`` every ``.grad`` stays a buffer that each micro-batch's backward adds into (a stolen
    CUDA-graph output would be overwritten by the next replay); the arithmetic is the default's. On CPU Inductor runs
    no CUDA graphs, so this checks the gradient handling, with 2 micro-batches a step."""
    import yaml

    reports, kept = {}, {}
    for name, options in (("default", None), ("cudagraphs", {"triton.cudagraphs": True})):
        out = tmp_path / name
        out.mkdir()
        cfg = tiny_config(out, tiny_data, **{"trainer.max_steps": 3, "trainer.val_check_interval": 3,
                                             "model.compile_options": options})
        data = yaml.safe_load(cfg.read_text())
        data["trainer"]["callbacks"].append({"class_path": "plugins.GradBufferProbe", "init_args": {"out_dir": str(out)}})
        cfg.write_text(yaml.safe_dump(data))
        assert main(["fit", "--config", str(cfg)]) == 0
        reports[name] = json.loads((only_version_dir(out) / "report.json").read_text())
        kept[name] = json.loads((out / "grad_buffers.json").read_text())
    assert kept == {"default": [False] * 3, "cudagraphs": [True] * 3}
    assert reports["cudagraphs"]["pre_quant"]["val_bpb"] == reports["default"]["pre_quant"]["val_bpb"]
    assert reports["cudagraphs"]["post_quant"]["val_bpb"] == reports["default"]["post_quant"]["val_bpb"]
