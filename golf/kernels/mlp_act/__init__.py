"""The MLP's LeakyReLU²/ReLU² fused into its matmuls: Triton kernels behind ``torch.library`` custom ops, with the
PyTorch reference beside them (``reference.py``, ``triton_mlp.py``, ``op.py``)."""

from golf.kernels.mlp_act.op import mlp_act

__all__ = ["mlp_act"]
