"""`golf study` on CPU at a tiny scale: the command end to end (two studies, seconds per arm), the arch matching, and
the compress analysis on an untrained hybrid (its helpers, and every remedy read back from disk and scored)."""

from __future__ import annotations

import json
import lzma
import math
import os
import types
from pathlib import Path

import torch
import yaml
from conftest import tiny_config

from golf.cli import main
from golf.study import (
    _arm_env,
    _lzma_len,
    _lzma_lens,
    _with_in_proj_from,
    compress_analysis,
    count_parameters,
    match_transformer,
    read_curve,
    role_streams,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _study_config(tmp_path: Path, data: Path) -> Path:
    # int6 with a passthrough threshold scaled to d 32, so attention and MLP matrices are quantized as well
    cfg = tiny_config(tmp_path, data, **{"trainer.val_check_interval": 3})
    d = yaml.safe_load(cfg.read_text())
    d["trainer"]["callbacks"][0]["init_args"] = {"quant": {"method": "int6", "passthrough_max_numel": 256},
                                                 "compressor": "lzma"}
    cfg.write_text(yaml.safe_dump(d))
    return cfg


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_study_arch_and_protect_end_to_end(tmp_path, tiny_data):
    cfg = _study_config(tmp_path, tiny_data)
    out = tmp_path / "study"
    code = main(["study", "--out", str(out), "--config", str(cfg), "--budget-seconds", "2", "--warmup-steps", "1",
                 "--studies", "arch", "protect"])
    assert code == 0
    study = json.loads((out / "study.json").read_text())
    md = (out / "study.md").read_text()
    assert "## arch" in md and "## protect" in md and "GPU" not in study["device"]

    arch = study["studies"]["arch"]
    assert abs(arch["matching"]["relative_difference"]) <= 0.02
    t, h = arch["arms"]
    assert t["layers"] == "AA" and h["layers"] == "SA"
    for row in arch["arms"] + study["studies"]["protect"]["arms"]:
        for key in ("parameters", "tokens_seen", "epochs", "train_seconds", "pre_bpb", "post_bpb", "quant_gap_bpb",
                    "artifact_bytes"):
            assert _finite(row[key]), (row["arm"], key, row[key])
        assert row["tokens_seen"] > 0 and row["train_seconds"] >= 2.0 and row["device"] == "cpu"
        assert _finite(row["lzma_bpp"]["attn_qkv"]) and row["lzma_bpp"]["attn_qkv"] > 0
    assert _finite(h["lzma_bpp"]["ssm_in_proj"]) and "ssm_in_proj" not in t["lzma_bpp"]

    prot = study["studies"]["protect"]
    names = [r["variant"] for r in prot["arms"]]
    assert names == ["int6_protect", "int6_noprotect"]
    assert prot["arms"][0]["pre_bpb"] == prot["arms"][1]["pre_bpb"]  # same trained weights
    assert prot["protect_extra_bytes"] > 0  # dd_A/dd_dt rows at int8 cost bytes
    assert _finite(prot["protect_minus_noprotect_mbpb"])

    curve = study["arms"][h["arm"]]["curve"]
    assert curve and all(_finite(p["seconds"]) and _finite(p["val_bpb"]) for p in curve)
    for png in ("bpb_vs_wallclock_arch.png", "bytes_per_param_by_role.png", "quant_gap.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC, png
        assert png in md

    # a second call reuses both arms (same configs) instead of training them again
    assert main(["study", "--out", str(out), "--config", str(cfg), "--budget-seconds", "2", "--warmup-steps", "1",
                 "--studies", "arch", "protect"]) == 0
    again = json.loads((out / "study.json").read_text())
    assert all(a["reused"] for a in again["arms"].values())

    # a study cut off while the hybrid's extra exports ran: --report-only rebuilds the tables from the run
    # directories (variant reports on disk, no training, arm configs untouched) and marks the study partial
    extra_path = Path(study["arms"][h["arm"]]["run_dir"]) / "study_extra.json"
    assert json.loads(extra_path.read_text())["complete"] is True
    extra_path.unlink()
    configs = {p.name: p.read_text() for p in (out / "configs").iterdir()}
    report_only = ["study", "--out", str(out), "--config", str(cfg), "--budget-seconds", "2", "--studies", "arch",
                   "protect", "--report-only"]
    assert main(report_only) == 0
    rebuilt = json.loads((out / "study.json").read_text())
    assert rebuilt["complete"] is False and rebuilt["rebuilt_with"][-1] == "--report-only"
    assert rebuilt["command"] == again["command"]
    assert [r["post_bpb"] for r in rebuilt["studies"]["protect"]["arms"]] == [r["post_bpb"] for r in prot["arms"]]
    assert [r["post_bpb"] for r in rebuilt["studies"]["arch"]["arms"]] == [t["post_bpb"], h["post_bpb"]]
    assert {p.name: p.read_text() for p in (out / "configs").iterdir()} == configs
    assert "Partial" in (out / "study.md").read_text()


def test_parallel_arms_train_as_subprocesses_with_their_own_logs(tmp_path, tiny_data, monkeypatch):
    import golf.study

    written = []  # every study.md written: after each finished arm (partial), then the final one
    real = golf.study.write_markdown
    monkeypatch.setattr(golf.study, "write_markdown", lambda study, path: (
        written.append((study["complete"], sorted(n for n, r in study["arms"].items() if r.get("pending")))),
        real(study, path)))
    cfg = _study_config(tmp_path, tiny_data)
    out = tmp_path / "study"
    code = main(["study", "--out", str(out), "--config", str(cfg), "--budget-seconds", "2", "--warmup-steps", "1",
                 "--studies", "arch", "--parallel", "2"])
    assert code == 0
    study = json.loads((out / "study.json").read_text())
    assert study["complete"] and written[-1] == (True, [])
    assert written[0][0] is False and len(written[0][1]) == 1  # the first arm done, the other still pending
    written.clear()  # a second call reuses both arms, and no write shows a reused arm as pending
    assert main(["study", "--out", str(out), "--config", str(cfg), "--budget-seconds", "2", "--warmup-steps", "1",
                 "--studies", "arch", "--parallel", "2"]) == 0
    assert written[-1] == (True, []) and len(written[-2][1]) <= 1
    assert all(r["reused"] for r in json.loads((out / "study.json").read_text())["arms"].values())
    assert "2 arms at once" in study["device"]
    t, h = study["studies"]["arch"]["arms"]
    for row in (t, h):
        assert row["tokens_seen"] > 0 and row["train_seconds"] >= 2.0 and _finite(row["post_bpb"])
        log = (out / "logs" / f"{row['arm']}.log").read_text()
        assert "golf: scoring the artifact" in log, log[-2000:]  # the subprocess wrote its own output there
        assert not study["arms"][row["arm"]]["reused"]
    # arms at once split the host's cores instead of each taking all of them
    args = types.SimpleNamespace(threads=None)
    assert _arm_env(args, ["1"], 2)["OMP_NUM_THREADS"] == str(max(1, os.cpu_count() // 2))
    assert _arm_env(args, ["1"], 2)["CUDA_VISIBLE_DEVICES"] == "1"


def test_seeds_repeat_the_training_comparisons_and_report_each_difference(tmp_path, tiny_data):
    cfg = _study_config(tmp_path, tiny_data)
    out = tmp_path / "study"
    assert main(["study", "--out", str(out), "--config", str(cfg), "--budget-seconds", "1", "--warmup-steps", "1",
                 "--studies", "arch", "protect", "--seeds", "3", "4"]) == 0
    study = json.loads((out / "study.json").read_text())
    t, h = sorted((n for n in study["arms"] if not n.endswith("_seed4")), key=lambda n: not n.startswith("trans"))
    assert set(study["arms"]) == {t, h, f"{t}_seed4", f"{h}_seed4"}
    for name, seed in ((t, 3), (h, 3), (f"{t}_seed4", 4), (f"{h}_seed4", 4)):
        assert yaml.safe_load((out / "configs" / f"{name}.yaml").read_text())["seed_everything"] == seed
    arch = study["studies"]["arch"]
    assert [r["arm"] for r in arch["arms"]] == [t, f"{t}_seed4", h, f"{h}_seed4"]
    (diff,) = arch["seeds"]
    post = {n: study["arms"][n]["summary"]["post_bpb"] for n in study["arms"]}
    assert [r["seed"] for r in diff["per_seed"]] == [3, 4]
    assert math.isclose(diff["per_seed"][0]["post_mbpb"], 1000 * (post[h] - post[t]))
    assert math.isclose(diff["per_seed"][1]["post_mbpb"], 1000 * (post[f"{h}_seed4"] - post[f"{t}_seed4"]))
    assert math.isclose(diff["post_mbpb"]["mean"], sum(r["post_mbpb"] for r in diff["per_seed"]) / 2)
    assert diff["post_mbpb"]["n"] == 2 and diff["post_mbpb"]["sd"] is not None
    assert post[h] != post[f"{h}_seed4"]  # another seed, another training
    # export comparisons are exact for given weights: only the first seed's hybrid is exported twice
    assert [r["arm"] for r in study["studies"]["protect"]["arms"]] == [f"{h} / int6_protect", f"{h} / int6_noprotect"]
    assert "Across seeds" in (out / "study.md").read_text()


def test_layout_study_compares_two_hybrid_layouts_per_vocabulary(tmp_path, tiny_data):
    data = tmp_path / "tiny_sp512"  # the layout study finds each vocabulary's data as {data-root}/{corpus}_sp{N}
    data.symlink_to(tiny_data, target_is_directory=True)
    cfg = _study_config(tmp_path, data)
    out = tmp_path / "study"
    common = ["study", "--out", str(out), "--config", str(cfg), "--budget-seconds", "1", "--warmup-steps", "1",
              "--studies", "layout", "--data-root", str(tmp_path), "--vocabs", "512"]
    assert main(common) == 0
    study = json.loads((out / "study.json").read_text())
    layout = study["studies"]["layout"]
    assert layout["layouts"] == ["SA", "SS"]  # default: the base, and its first attention block as an SSM block
    base, alt = (r["arm"] for r in layout["arms"])
    assert (base, alt) == ("hybrid_tiny_sp512", "hybrid_tiny_sp512_SS")
    rows = {r["arm"]: r for r in layout["arms"]}
    assert rows[base]["layers"] == "SA" and rows[alt]["layers"] == "SS"
    (by_vocab,) = layout["by_vocab"]
    assert by_vocab["vocab"] == 512
    assert math.isclose(by_vocab["post_mbpb"], 1000 * (rows[alt]["post_bpb"] - rows[base]["post_bpb"]))
    assert "## layout: SS vs SA" in (out / "study.md").read_text()
    assert main(common + ["--layouts", "SA", "SX", "--plan"]) == 2  # a layout must be made of A and S blocks


def test_arch_matching_and_plan_of_the_cpu_config(tmp_path, capsys):
    base = yaml.safe_load(Path("configs/study_cpu.yaml").read_text())
    twin, info = match_transformer(base)
    assert twin["model"]["backbone"]["layers"] == "AAAA"
    assert info["hybrid_parameters"] == count_parameters(base)
    assert info["transformer_parameters"] == count_parameters(twin)
    assert abs(info["relative_difference"]) <= 0.02
    assert main(["study", "--out", str(tmp_path), "--plan", "--studies", "arch", "in_proj_optimizer"]) == 0
    arm = yaml.safe_load((tmp_path / "configs" / "hybrid_austen_sp1024_inproj_adam.yaml").read_text())
    assert arm["model"]["optimizer"]["ssm_in_proj"] == "adam"
    classes = [c["class_path"] for c in arm["trainer"]["callbacks"]]
    assert "golf.study.StudyClock" in classes and "golf.callbacks.Finalize" in classes
    assert "transformer_austen_sp1024" in capsys.readouterr().out


def test_lzma_len_matches_golfs_compressor():
    from golf.compress import compress

    g = torch.Generator().manual_seed(0)
    for n in (10, 5000, 70000):
        data = torch.randint(-31, 32, (n,), generator=g, dtype=torch.int8).numpy().tobytes()
        assert _lzma_len(data) == len(compress(data, "lzma"))
        assert lzma.decompress(compress(data, "lzma")) == data
    chunks = [torch.randint(-31, 32, (n,), generator=g, dtype=torch.int8).numpy().tobytes() for n in (1, 900, 40000)]
    assert _lzma_lens(chunks) == [_lzma_len(c) for c in chunks]  # the thread pool changes nothing but the time


def test_read_curve_interpolates_the_clock(tmp_path):
    p = tmp_path / "metrics.csv"
    p.write_text("epoch,step,train_loss,train_seconds,val_bpb\n0,4,5.0,1.0,\n0,9,4.0,2.0,\n0,9,,,3.5\n0,14,3.0,3.0,\n")
    (pt,) = read_curve(p)
    assert pt == {"step": 9.0, "seconds": 2.0, "val_bpb": 3.5}
    assert read_curve(tmp_path / "missing.csv") == []


def _tiny_hybrid():
    from golf.modules.backbone import Backbone
    from golf.modules.config import BackboneConfig, SSMConfig

    torch.manual_seed(0)
    cfg = BackboneConfig(model_dim=32, layers="SA", num_heads=2, num_kv_heads=1,
                         ssm=SSMConfig(d_state=16, headdim=16, chunk_size=16))
    model = Backbone(cfg, 512)
    with torch.no_grad():  # zero-initialised projections would quantize to all-zero codes
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.05)
    return model


def test_role_streams_and_in_proj_merge():
    from golf.quant import QuantScheme, dequantize_state_dict, quantize_state_dict

    model = _tiny_hybrid()
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    a = quantize_state_dict(sd, QuantScheme(method="int6", passthrough_max_numel=256), row_groups=model.row_groups())
    b = quantize_state_dict(sd, QuantScheme(method="int6", clip="sdclip", sdclip_k=3.0, passthrough_max_numel=256),
                            row_groups=model.row_groups())
    roles = role_streams(a)
    ip = roles["ssm_in_proj"]
    pieces = [r for k, r in roles.items() if k.startswith("ssm_in_proj:")]
    assert ip["params"] == sum(r["params"] for r in pieces) == sd["blocks.0.mixer.in_proj.weight"].numel()
    assert ip["per_tensor_bytes"] == sum(r["per_tensor_bytes"] for r in pieces)
    assert 0 < ip["code_entropy_bits"] <= 6 and ip["code_levels_used"] <= 2 * 127 + 1
    assert roles["attn_qkv"]["code_levels_used"] > 0 and "control" in roles
    assert role_streams(a, only_in_proj=True) == {k: r for k, r in roles.items() if k.startswith("ssm_in_proj")}

    merged = _with_in_proj_from(a, b)
    m, da, db = dequantize_state_dict(merged), dequantize_state_dict(a), dequantize_state_dict(b)
    for k in m:
        ref = db if k.endswith("in_proj.weight") else da
        assert torch.equal(m[k], ref[k]), k
    assert not torch.equal(da["blocks.0.mixer.in_proj.weight"], db["blocks.0.mixer.in_proj.weight"])


def test_compress_analysis_reads_every_remedy_back(tmp_path, tiny_data):
    from golf.callbacks.finalize import Finalize
    from golf.data.datamodule import GolfData
    from golf.quant import QuantScheme

    dm = GolfData(data_dir=str(tiny_data), vocab_size=512, seq_len=64, val_batch_tokens=4096, val_max_tokens=4096)
    dm.setup("validate")
    base = Finalize(quant=QuantScheme(method="int6", passthrough_max_numel=256), compressor="lzma")
    base.out_dir = tmp_path
    trainer = types.SimpleNamespace(datamodule=dm, is_global_zero=True)
    module = types.SimpleNamespace(model=_tiny_hybrid(), device=torch.device("cpu"))
    res = compress_analysis(trainer, module, base, [4.0])
    lossy = {r["remedy"]: r for r in res["lossy"]}
    assert set(lossy) == {"golf_default", "golf_default_byte_shuffle", "no_protect", "whole_in_proj", "in_proj_int5",
                          "in_proj_sdclip_k4"}
    for r in lossy.values():
        assert _finite(r["post_bpb"]) and r["artifact_bytes"] > 0
        assert (tmp_path / "compress" / f"{r['remedy']}.golf").is_file()
    assert lossy["golf_default"]["delta_bpb"] == 0.0
    assert lossy["golf_default_byte_shuffle"]["post_bpb"] == lossy["golf_default"]["post_bpb"]  # lossless
    assert lossy["no_protect"]["artifact_bytes"] < lossy["golf_default"]["artifact_bytes"]  # int8 rows cost bytes
    assert lossy["in_proj_int5"]["in_proj_bytes"] < lossy["golf_default"]["in_proj_bytes"]
    ratios = res["finding"]["ratio_vs_attn_qkv"]
    assert _finite(ratios["ssm_in_proj"]["per_tensor"]) and _finite(ratios["ssm_in_proj"]["grouped"])
    assert all(r["delta_bpb"] == 0.0 for r in res["lossless"])
