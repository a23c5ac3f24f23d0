"""Bad input gets one clear line and a non-zero exit; faults lose nothing (issue: reliability).

Subprocess runs go through the real `golf` entry point, so each check sees exactly what a user sees: the exit code,
a one-line `golf: error: ...` naming the file or key and the fix, and no traceback."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, only_version_dir, run_golf, tiny_config
from golf.data.shards import write_shard

PLUGINS = {"PYTHONPATH": str(REPO / "tests")}


def assert_one_line_error(result, *fragments: str, code: int = 2) -> str:
    err = result.stderr
    assert result.returncode == code, (result.returncode, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("golf: error:")]
    assert len(lines) == 1, err[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def data_copy(tiny_data, tmp_path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(tiny_data, copy)
    return copy


def fit(tmp_path, data_dir, *extra, **over):
    return run_golf(["fit", "--config", str(tiny_config(tmp_path, data_dir, **over)), *extra], cwd=tmp_path, env=PLUGINS)


# -- data ------------------------------------------------------------------------------------------------------------
def test_missing_data_dir(tmp_path):
    assert_one_line_error(fit(tmp_path, tmp_path / "nope"), "nope: data directory not found", "golf data prepare")


@pytest.mark.parametrize("damage", ["truncated", "empty", "wrong-magic"])
def test_damaged_train_shard(tmp_path, data_copy, damage):
    shard = data_copy / "fineweb_train_000000.bin"
    raw = shard.read_bytes()
    shard.write_bytes({"truncated": raw[:-7], "empty": b"", "wrong-magic": b"\0\0\0\0" + raw[4:]}[damage])
    assert_one_line_error(fit(tmp_path, data_copy), str(shard), "golf data prepare")


def test_token_ids_beyond_vocab(tmp_path, data_copy):
    write_shard(data_copy / "fineweb_train_000001.bin", np.full(1000, 600, dtype=np.uint16))
    assert_one_line_error(fit(tmp_path, data_copy), "fineweb_train_000001.bin: token id 600 >= vocab_size 512")


def test_tokenizer_that_does_not_match_the_shards(tmp_path, data_copy, austen_docs):
    from golf.data.tokenizer import train_tokenizer

    other = train_tokenizer(austen_docs[200:220], 512, tmp_path / "other.model")
    line = assert_one_line_error(fit(tmp_path, data_copy, f"--data.tokenizer={other}"), "other.model", "sha256")
    assert "manifest" in line


def test_vocab_that_does_not_match_the_manifest(tmp_path, data_copy):
    assert_one_line_error(fit(tmp_path, data_copy, "--data.vocab_size=1024", "--model.backbone.layers=A"),
                          "set data.vocab_size: 512")


def test_no_val_shards(tmp_path, data_copy):
    for p in data_copy.glob("fineweb_val_*.bin"):
        p.unlink()
    assert_one_line_error(fit(tmp_path, data_copy), "no fineweb_val_*.bin shards")


def test_seq_len_longer_than_the_val_split(tmp_path, data_copy):
    assert_one_line_error(fit(tmp_path, data_copy, "--data.seq_len=100000", "--data.val_max_tokens=null",
                              "--data.micro_batch_tokens=100000", "--data.train_batch_tokens=100000"),
                          "fewer than data.seq_len + 1", "lower data.seq_len")


# -- config ----------------------------------------------------------------------------------------------------------
def test_mistyped_key_and_wrong_type(tmp_path, tiny_data):
    r = fit(tmp_path, tiny_data, "--model.backbone.modle_dim=64")
    assert r.returncode == 2 and "modle_dim" in r.stderr and "Traceback" not in r.stderr
    r = fit(tmp_path, tiny_data, "--model.backbone.model_dim=wide")
    assert r.returncode == 2 and "model_dim" in r.stderr and "Traceback" not in r.stderr


def test_unknown_mixer_letter(tmp_path, tiny_data):
    assert_one_line_error(fit(tmp_path, tiny_data, "--model.backbone.layers=SXA"), "unknown mixer(s) X")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_devices_that_are_not_there(tmp_path, tiny_data):
    assert_one_line_error(fit(tmp_path, tiny_data, "--trainer.accelerator=gpu"), "trainer:", "--trainer.accelerator")


def test_output_directory_not_writable(tmp_path, tiny_data):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    r = fit(tmp_path, tiny_data, "--trainer.callbacks+=golf.callbacks.Finalize",
            f"--trainer.callbacks.output_dir={blocker / 'run'}")
    assert_one_line_error(r, str(blocker / "run"), "not writable")


# -- faults ----------------------------------------------------------------------------------------------------------
def test_nan_loss_stops_with_a_clear_message_and_keeps_good_checkpoints(tmp_path, tiny_data):
    r = fit(tmp_path, tiny_data, "--model.max_bad_steps=2", "--trainer.callbacks+=plugins.PoisonWeights",
            "--trainer.callbacks.step=3", "--trainer.callbacks+=ModelCheckpoint",
            "--trainer.callbacks.every_n_train_steps=2", "--trainer.callbacks.save_top_k=-1",
            **{"trainer.max_steps": 10})
    assert_one_line_error(r, "NaN/Inf for 2 consecutive steps", "--ckpt_path")
    ckpts = sorted((only_version_dir(tmp_path) / "checkpoints").glob("*.ckpt"))
    good = torch.load(ckpts[0], weights_only=True)["state_dict"]
    assert "step=2" in ckpts[0].name and all(torch.isfinite(v).all() for v in good.values())


def test_missing_checkpoint(tmp_path, tiny_data):
    assert_one_line_error(fit(tmp_path, tiny_data, f"--ckpt_path={tmp_path / 'gone.ckpt'}"), "gone.ckpt")


@pytest.mark.parametrize("signal_name, code", [("SIGTERM", 143), ("SIGINT", 1)], ids=["sigterm", "ctrl-c"])
def test_signal_saves_a_resumable_checkpoint(tmp_path, tiny_data, signal_name, code):
    over = {"trainer.max_steps": 6, "trainer.val_check_interval": 100}
    r = fit(tmp_path, tiny_data, "--trainer.callbacks+=golf.callbacks.SaveOnInterrupt",
            "--trainer.callbacks+=plugins.SignalSelf", "--trainer.callbacks.step=2",
            f"--trainer.callbacks.signal_name={signal_name}", **over)
    assert r.returncode == code, r.stderr[-2000:]
    (ckpt,) = only_version_dir(tmp_path).glob("checkpoints/interrupted.ckpt")
    state = torch.load(ckpt, weights_only=True)
    assert state["global_step"] in (2, 3)  # a step boundary: the signal's step, or the next if it arrived late in it
    kept = shutil.copy(ckpt, tmp_path / "kept.ckpt")
    shutil.rmtree(tmp_path / "run")
    r = fit(tmp_path, tiny_data, f"--ckpt_path={kept}", **over)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((only_version_dir(tmp_path) / "report.json").read_text())["training"]["steps"] == 6


def test_kill_9_loses_at_most_one_interval_and_resume_is_exact(tmp_path, tiny_data):
    """Resuming restores model, optimizer, data position and budget: the final model equals an uninterrupted run's."""
    over = {"trainer.max_steps": 6, "trainer.val_check_interval": 100}
    ckpt_args = ["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.every_n_train_steps=2",
                 "--trainer.callbacks.save_last=true", "--trainer.callbacks+=golf.callbacks.WallClockBudget",
                 "--trainer.callbacks.budget_seconds=0"]
    straight = tmp_path / "straight"
    straight.mkdir()
    assert fit(straight, tiny_data, *ckpt_args, **over).returncode == 0
    expected = json.loads((only_version_dir(straight) / "report.json").read_text())

    killed = tmp_path / "killed"
    killed.mkdir()
    r = fit(killed, tiny_data, *ckpt_args, "--trainer.callbacks+=plugins.SignalSelf", "--trainer.callbacks.step=5",
            "--trainer.callbacks.signal_name=SIGKILL", **over)
    assert r.returncode == -9
    last = only_version_dir(killed) / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == 4  # the step-5 checkpoint never happened: one interval lost at most
    budget = next(v for k, v in state["callbacks"].items() if "WallClockBudget" in k)
    assert budget["spent"] > 0 and budget["steps_timed"] == 4

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    assert fit(resumed, tiny_data, *ckpt_args, f"--ckpt_path={last}", **over).returncode == 0
    got = json.loads((only_version_dir(resumed) / "report.json").read_text())
    assert got["training"]["steps"] == 6
    assert got["pre_quant"]["val_bpb"] == expected["pre_quant"]["val_bpb"]
    assert got["post_quant"]["val_bpb"] == expected["post_quant"]["val_bpb"]


def test_one_rank_raising_makes_every_rank_exit(tmp_path, tiny_data):
    t0 = time.time()
    r = fit(tmp_path, tiny_data, "--trainer.devices=2", "--trainer.strategy=ddp",
            "--trainer.callbacks+=plugins.RaiseOnRank", "--trainer.callbacks.rank=1", "--trainer.callbacks.step=2",
            **{"trainer.max_steps": 1000, "trainer.val_check_interval": 1000})
    assert r.returncode != 0
    assert time.time() - t0 < 120
    assert "planted failure on rank 1" in r.stderr


def test_study_gpus_not_a_multiple_of_devices(tmp_path):
    result = run_golf(["study", "--out", str(tmp_path / "study"), "--plan", "--gpus", "0", "1", "2", "--devices", "2"],
                      cwd=REPO)
    assert_one_line_error(result, "--gpus lists 3 GPU(s), not a multiple of --devices 2", "list 2 GPU ids per arm")
