"""Model <-> artifact: quantize a Backbone into a golf artifact, and rebuild a Backbone from one (strict load)."""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from golf.artifact import ArtifactInfo, read_artifact, write_artifact
from golf.errors import GolfError
from golf.modules.backbone import Backbone
from golf.modules.config import BackboneConfig, SSMConfig
from golf.quant import QuantizedState, QuantScheme, dequantize_state_dict, quantize_state_dict


def model_config(backbone: Backbone) -> dict[str, Any]:
    return {"vocab_size": backbone.vocab_size, "backbone": asdict(backbone.config)}


def backbone_config_from_dict(d: dict[str, Any]) -> BackboneConfig:
    known = {f.name for f in fields(BackboneConfig)}
    unknown = set(d) - known
    if unknown:
        raise GolfError(f"artifact model_config has unknown backbone keys {sorted(unknown)}; it was written by a newer golf")
    d = dict(d)
    d["ssm"] = SSMConfig(**d.get("ssm", {}))
    return BackboneConfig(**d)


def quantize_backbone(
    backbone: Backbone, scheme: QuantScheme, hessians: dict[str, torch.Tensor] | None = None
) -> QuantizedState:
    state = {k: v.detach() for k, v in backbone.state_dict().items()}
    return quantize_state_dict(state, scheme, row_groups=backbone.row_groups(), hessians=hessians)


def export_backbone(
    backbone: Backbone,
    path: str | Path,
    scheme: QuantScheme,
    *,
    compressor: str = "lzma",
    byte_shuffle: bool = False,
    cap: int = 16_000_000,
    hessians: dict[str, torch.Tensor] | None = None,
    metadata: dict[str, Any] | None = None,
) -> tuple[ArtifactInfo, QuantizedState]:
    qs = quantize_backbone(backbone, scheme, hessians)
    meta = {"model_config": model_config(backbone), **(metadata or {})}
    info = write_artifact(path, qs, meta, compressor=compressor, byte_shuffle=byte_shuffle, cap=cap)
    return info, qs


def load_backbone(path: str | Path, device: torch.device | str = "cpu") -> tuple[Backbone, dict[str, Any]]:
    """Read an artifact from disk, dequantize, and load it strictly into a fresh Backbone built from its config."""
    qs, header = read_artifact(path)
    cfg = header["metadata"].get("model_config") or {}
    if "backbone" not in cfg or "vocab_size" not in cfg:
        raise GolfError(f"{path}: artifact has no model_config; it was not written by golf fit")
    model = Backbone(backbone_config_from_dict(cfg["backbone"]), int(cfg["vocab_size"]))
    state = dequantize_state_dict(qs)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise GolfError(f"{path}: tensors do not match the model config ({first}); regenerate the artifact") from None
    return model.to(device), header
