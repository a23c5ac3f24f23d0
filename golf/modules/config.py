"""Typed configuration of the backbone. LightningCLI reads these dataclasses, so every field is a YAML knob."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SSMConfig:
    """Mamba-3 SISO mixer settings (ssm.md §3.3). Defaults are the best Parameter Golf SSM entry's."""

    d_state: int = 64
    """State size N per head (also the size of B and C)."""
    expand: int = 2
    """d_inner = expand * model_dim."""
    headdim: int = 64
    """P: channels per SSM head; heads = d_inner / headdim."""
    rope_fraction: float = 0.5
    """Share of the state dims rotated by the data-dependent angles (pairs), 0 disables the rotation."""
    chunk_size: int = 64
    """Chunk length of the SSD-style scan."""
    A_floor: float = 1e-4
    """A = -softplus(dd_A) is clamped to at most -A_floor."""
    dt_min: float = 0.001
    dt_max: float = 0.1
    """dt_bias is initialised so that softplus(dt_bias) is log-uniform in [dt_min, dt_max]."""
    backend: str = "auto"
    """Scan implementation: auto (Triton on CUDA, chunked PyTorch otherwise), triton, reference, recurrent."""


@dataclass
class BackboneConfig:
    """The layer stack: embedding, blocks (mixer + MLP) with U-Net skips, tied head, logit softcap (parameter-golf.md §3.1)."""

    model_dim: int = 512
    layers: str = "AAAAAAAAA"
    """One letter per block, first to last: A = GQA attention, S = Mamba-3 SISO; more letters via `mixers`."""
    mixers: dict[str, str] = field(default_factory=dict)
    """Extra mixer letters -> import paths of nn.Module classes taking (dim, config, layer_idx)."""
    num_heads: int = 8
    num_kv_heads: int = 4
    mlp_mult: float = 2.0
    mlp_activation: str = "relu2"
    """relu2 (baseline) or leaky_relu2 (LeakyReLU(0.5) squared, later records and the SSM entry)."""
    fused_mlp: bool = False
    """The MLP through golf's Triton matmuls with the activation (and its gradient) in their epilogues, on CUDA; false:
    cuBLAS matmuls and Inductor's activation kernels. Same math; off until its speed is measured (benchmarks/RESULTS.md)."""
    tie_embeddings: bool = True
    tied_embed_init_std: float = 0.005
    logit_softcap: float = 30.0
    rope_base: float = 10000.0
    qk_gain_init: float = 1.5
    unet_skips: bool = True
    residual_dtype: str = "float32"
    """The residual stream's dtype under autocast: float32 (the embedding's fp32 output carried through), or autocast
    (cast to the autocast dtype after the embedding's RMSNorm, as the challenge's scripts run: their bf16 embedding
    makes x, x0 and every residual add bf16). Without autocast (CPU runs) the stream is float32 either way."""
    ssm: SSMConfig = field(default_factory=SSMConfig)
