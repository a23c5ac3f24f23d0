"""Mamba-3 SISO scan: chunked Triton kernels behind ``torch.library`` custom ops, with PyTorch references.

``mamba3_siso`` is the public op; ``reference.py`` holds the definition (step-by-step) and the chunked PyTorch form,
``triton_chunk.py`` the Triton kernels of the gated-linear-attention core, ``op.py`` the custom ops.
"""

from golf.kernels.ssm_scan.op import mamba3_siso
from golf.kernels.ssm_scan.reference import Mamba3State

__all__ = ["Mamba3State", "mamba3_siso"]
