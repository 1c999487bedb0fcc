"""Gradient reversal layer (PPL, eq. 13; Ganin & Lempitsky, 2015).

The forward pass is the identity; the backward pass multiplies the incoming gradient by ``-lambda``.
Placed between the generator and the surrogate hashing network, it lets one optimiser step move the
generator *up* the privacy loss while the surrogate moves *down* it.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GradientReversal", "grad_reverse"]


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lambda_: float) -> torch.Tensor:
        ctx.lambda_ = lambda_
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        # eq. 13: dR/dx = -lambda * I
        return -ctx.lambda_ * grad_output, None


def grad_reverse(x: torch.Tensor, lambda_: float = 1.0) -> torch.Tensor:
    """Identity in the forward pass, gradient times ``-lambda_`` in the backward pass.

    Args:
        x: any tensor, e.g. generated images [B, C, H, W].
        lambda_: reversal strength (non-negative); 0 blocks the gradient.

    Returns:
        A tensor equal to ``x``.
    """
    if lambda_ < 0:
        raise ValueError(f"lambda_ must be >= 0 (it is the strength of the reversal), got {lambda_}")
    return _GradReverse.apply(x, float(lambda_))


class GradientReversal(nn.Module):
    """Module form of :func:`grad_reverse` with a settable ``lambda_`` (e.g. scheduled during training)."""

    def __init__(self, lambda_: float = 1.0) -> None:
        super().__init__()
        self.lambda_ = lambda_

    @property
    def lambda_(self) -> float:
        return self._lambda

    @lambda_.setter
    def lambda_(self, value: float) -> None:
        if value < 0:
            raise ValueError(f"lambda_ must be >= 0 (it is the strength of the reversal), got {value}")
        self._lambda = float(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self._lambda)

    def extra_repr(self) -> str:
        return f"lambda_={self._lambda}"
