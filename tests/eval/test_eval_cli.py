"""The eval config wired into `golf fit` (Finalize's eval: section) and `golf validate --artifact ... --eval.*`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from golf.cli import main
from golf.data.datamodule import GolfData
from golf.eval import EvalConfig, TTTConfig, evaluate
from golf.export import export_backbone, load_backbone
from golf.modules.backbone import Backbone
from golf.modules.config import BackboneConfig, SSMConfig
from golf.quant import QuantScheme

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = {"vocab_size": 512, "seq_len": 64, "train_batch_tokens": 512, "micro_batch_tokens": 256,
        "val_batch_tokens": 1024, "val_max_tokens": 4096}
BACKBONE = {"model_dim": 32, "layers": "SA", "num_heads": 2, "num_kv_heads": 1,
            "ssm": {"d_state": 16, "headdim": 16, "chunk_size": 16}}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, tiny_data):
    """A random-weight artifact for the tiny corpus (scoring does not care how the weights were found)."""
    torch.manual_seed(0)
    model = Backbone(BackboneConfig(**{**BACKBONE, "ssm": SSMConfig(**BACKBONE["ssm"])}), 512)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                torch.nn.init.normal_(p, std=p.shape[1] ** -0.5)
    dm = GolfData(data_dir=str(tiny_data), **DATA)
    dm.setup("validate")
    path = tmp_path_factory.mktemp("art") / "model.golf"
    export_backbone(model, path, QuantScheme(method="int8"), compressor="zlib",
                    metadata={"tokenizer_sha256": dm.tokenizer_sha256, "seq_len": 64})
    return path, dm


def _validate(args: list[str], out: Path) -> dict:
    assert main(["validate", *args, "--report", str(out)]) == 0
    return json.loads(out.read_text())


def test_validate_accepts_eval_flags_and_matches_the_library(artifact, tiny_data, tmp_path):
    path, dm = artifact
    data = [f"--data.{k}={v}" for k, v in DATA.items()]
    base = ["--artifact", str(path), f"--data.data_dir={tiny_data}", *data, "--device", "cpu"]
    windows = _validate(base, tmp_path / "w.json")
    sliding = _validate([*base, "--eval.mode", "sliding", "--eval.stride", "16"], tmp_path / "s.json")
    ttt = _validate([*base, "--eval.mode", "stateful", "--eval.ttt.kind", "chunk", "--eval.ttt.chunk_tokens", "1024",
                     "--eval.ttt.lr", "0.01"], tmp_path / "t.json")
    assert (windows["mode"], sliding["mode"], ttt["mode"], ttt["ttt"]) == ("windows", "sliding", "stateful", "chunk")
    assert sliding["eval"]["stride"] == 16 and ttt["ttt_steps"] > 0 and ttt["seconds"] > 0
    assert windows["tokens"] == sliding["tokens"] == ttt["tokens"] == 4096
    model, _ = load_backbone(path, "cpu")
    ref = evaluate(model, dm.load_val(), 64, dm.byte_luts, "cpu", EvalConfig(mode="sliding", stride=16),
                   batch_tokens=dm.val_forward_tokens)
    assert sliding["val_bpb"] == ref.val_bpb


def test_validate_reads_the_eval_section_of_the_fit_yaml(artifact, tiny_data, tmp_path):
    path, _ = artifact
    cfg = {
        "trainer": {"callbacks": [{"class_path": "golf.callbacks.Finalize",
                                   "init_args": {"eval": {"mode": "doc_isolated", "stride": 32,
                                                          "ttt": {"kind": "lora", "chunk_tokens": 32}}}}]},
        "data": {"data_dir": str(tiny_data), **DATA},
    }
    yml = tmp_path / "fit.yaml"
    yml.write_text(yaml.safe_dump(cfg))
    got = _validate(["--artifact", str(path), "--config", str(yml), "--device", "cpu"], tmp_path / "a.json")
    assert (got["mode"], got["ttt"], got["eval"]["stride"]) == ("doc_isolated", "lora", 32)
    over = _validate(["--artifact", str(path), "--config", str(yml), "--device", "cpu", "--eval.ttt.kind", "none"],
                     tmp_path / "b.json")
    assert (over["mode"], over["ttt"]) == ("doc_isolated", "none")


def test_fit_scores_the_artifact_with_the_finalize_eval_config(tmp_path, tiny_data):
    ev = {"mode": "sliding", "stride": 32, "ttt": {"kind": "chunk", "chunk_tokens": 1024, "lr": 0.01}}
    cfg = {
        "seed_everything": 7,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": 2, "val_check_interval": 2,
            "check_val_every_n_epoch": None, "num_sanity_val_steps": 0, "enable_progress_bar": False,
            "enable_model_summary": False, "default_root_dir": str(tmp_path / "run"),
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(tmp_path / "run"), "name": "t"}},
            "callbacks": [
                {"class_path": "golf.callbacks.Finalize",
                 "init_args": {"quant": {"method": "int8"}, "compressor": "zlib", "compressibility_report": False,
                               "eval": ev}},
                {"class_path": "golf.callbacks.EvalTimeBudget", "init_args": {"max_seconds": 600}},
            ],
        },
        "model": {"backbone": BACKBONE},
        "data": {"data_dir": str(tiny_data), **DATA},
    }
    yml = tmp_path / "cfg.yaml"
    yml.write_text(yaml.safe_dump(cfg))
    assert main(["fit", "--config", str(yml)]) == 0
    (report_path,) = (tmp_path / "run" / "t").glob("version_*/report.json")
    report = json.loads(report_path.read_text())
    post, pre = report["post_quant"], report["pre_quant"]
    assert (post["mode"], post["ttt"], pre["mode"], pre["ttt"]) == ("sliding", "chunk", "sliding", "none")
    assert post["ttt_steps"] > 0 and post["seconds"] >= post["ttt_seconds"] > 0
    assert report["eval"]["stride"] == 32 and report["passed"]
    # golf validate with the same YAML reproduces the reported score (same mode, same TTT, same bytes on disk)
    art = report["artifact"]["path"]
    again = _validate(["--artifact", art, "--config", str(yml), "--device", "cpu"], tmp_path / "v.json")
    assert again["val_bpb"] == post["val_bpb"]


def test_finalize_rejects_a_bad_eval_config():
    from golf.callbacks import Finalize
    from golf.errors import GolfError

    with pytest.raises(GolfError, match="eval.ttt.kind=lora"):
        Finalize(eval=EvalConfig(mode="windows", ttt=TTTConfig(kind="lora")))
