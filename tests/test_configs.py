"""Every shipped YAML parses against the real signatures (LightningCLI with run=False), like litgpt's config-hub test."""

from pathlib import Path

import pytest

from conftest import REPO

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_parses(path: Path):
    from lightning.pytorch.cli import LightningCLI

    from golf.data.datamodule import GolfData
    from golf.model import GolfLM

    class Parse(LightningCLI):
        def add_arguments_to_parser(self, parser):
            parser.link_arguments("data.vocab_size", "model.vocab_size")
            parser.link_arguments("data.seq_len", "model.seq_len")

    cli = Parse(GolfLM, GolfData, run=False, args=["--config", str(path), "--trainer.accelerator", "cpu",
                                                   "--trainer.devices", "1", "--trainer.strategy", "auto",
                                                   "--trainer.precision", "32-true"],
                save_config_callback=None)
    assert cli.model.vocab_size == cli.datamodule.vocab_size
    assert cli.model.seq_len == cli.datamodule.seq_len


def test_hybrid_configs_match_the_entry():
    import yaml

    cfg = yaml.safe_load((REPO / "configs" / "hybrid_sp8192.yaml").read_text())
    from golf.modules.backbone import Backbone
    from golf.modules.config import BackboneConfig, SSMConfig

    bb = dict(cfg["model"]["backbone"])
    bb["ssm"] = SSMConfig(**bb["ssm"])
    model = Backbone(BackboneConfig(**bb), cfg["data"]["vocab_size"])
    assert sum(p.numel() for p in model.parameters()) == 25_159_984
