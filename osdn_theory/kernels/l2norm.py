"""L2 normalisation of ``q`` and ``k`` over the head dimension, as fla's ``use_qk_l2norm_in_kernel`` does it.

``y = x / sqrt(Σ x² + eps)`` with ``eps = 1e-6``, computed in fp32 (fp64 for fp64 input) and returned in the
input dtype, so a key of zeros stays zero. It runs in torch before the chunk kernel (one extra pass over
``q`` and ``k``, not fused into the kernel's loads), and autograd differentiates it: the gradient is
``(g − y (yᵀ g)) / sqrt(Σ x² + eps)`` up to the ``eps`` term.
"""

from __future__ import annotations

import torch

__all__ = ["L2NORM_EPS", "l2norm"]

#: fla's default ``eps`` of its L2 norm.
L2NORM_EPS = 1e-6


def l2norm(x: torch.Tensor, eps: float = L2NORM_EPS) -> torch.Tensor:
    """``x / sqrt(Σ_last x² + eps)`` in the wide dtype, returned in ``x``'s dtype (differentiable)."""
    wide = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(wide)
    return (xf * torch.rsqrt(xf.square().sum(-1, keepdim=True) + eps)).to(x.dtype)
