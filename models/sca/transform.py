"""Sparsifying transform of SCA: the encoder psi_lambda(W x) (eq. 2), the transform learner (eq. 1) and the
closed-form decoder R (eq. 3).

Shapes follow the paper with data points as COLUMNS where it says so: ``W`` is ``[L, N]``, ``R`` is
``[N, L]``, the data ``X`` is ``[N, M]`` and the codebook ``A`` is ``[L, M]``. The batched helpers take
row-major batches ``[B, N]`` (one data point per row) and say so.

Normalisation (not in the paper, which writes the raw Frobenius sums): the data terms are divided by the
number of points ``M`` so that the regulariser weights do not depend on the size of the training set.

* eq. (1): ``J(W, A) = ||W X - A||_F^2 / M + b_fro ||W||_F^2 + b_orth ||W W^T - I||_F^2
  - b_logdet log|det W^T W|`` with ``A`` ``Sx``-sparse per column (``b_* = beta_1 / beta_1,k``).
* eq. (3): ``J(R) = ||R A - X||_F^2 / M + beta_R ||R - C||_F^2``, ``R^T R = I``,
  ``C = (W^T W + beta I)^-1 W^T``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "closed_form_decoder",
    "decoder_objective",
    "fit_transform",
    "random_orthonormal",
    "sparsify",
    "transform_objective",
]


def sparsify(values: Tensor, sx: int) -> Tensor:
    """Keeps the ``sx`` largest magnitudes of every row, zeros elsewhere: ``psi_lambda`` of eq. (2).

    ``lambda`` is per row the ``sx``-th largest magnitude, so every row has exactly ``sx`` non-zeros
    (ties broken by ``torch.topk``). Gradients flow to the kept entries.

    Args:
        values: ``[..., L]`` transform coefficients ``W x``.
        sx: sparsity, ``0 <= sx <= L``.

    Returns:
        ``[..., L]`` the ``sx``-sparse codes.
    """
    length = values.shape[-1]
    if not 0 <= sx <= length:
        raise ValueError(f"sx must be in [0, L={length}], got {sx}; pick sx <= L (the code length per map)")
    if sx == length:
        return values
    keep = values.detach().abs().topk(sx, dim=-1).indices
    mask = torch.zeros_like(values, dtype=torch.bool).scatter_(-1, keep, True)
    return values * mask  # eq. (2): a = psi_lambda(W x)


def transform_objective(
    w: Tensor,
    gram: Tensor,
    cross: Tensor,
    code_energy: Tensor,
    count: int,
    b_fro: float,
    b_orth: float,
    b_logdet: float,
) -> Tensor:
    """eq. (1) for fixed ``A``, from sufficient statistics (so it sums across DDP ranks).

    Args:
        w: ``[L, N]`` transform (``L >= N`` for a finite log-det term).
        gram: ``[N, N]`` ``X X^T``.
        cross: ``[L, N]`` ``A X^T``.
        code_energy: ``[]`` ``||A||_F^2``.
        count: ``M``, number of columns of ``X``.
        b_fro, b_orth, b_logdet: weights of the three Omega_1 terms.

    Returns:
        ``[]`` the objective value.
    """
    eye = torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
    # ||WX - A||^2 = tr(W XX^T W^T) - 2 tr(W X A^T) + ||A||^2
    fit = ((w @ gram) * w).sum() - 2 * (w * cross).sum() + code_energy
    omega = b_fro * w.pow(2).sum() + b_orth * (w @ w.T - eye).pow(2).sum()
    if b_logdet:
        omega = omega - b_logdet * torch.linalg.slogdet(w.T @ w)[1]
    return fit / count + omega  # eq. (1)


def _reduce_sum(tensor: Tensor, strategy) -> Tensor:
    return tensor if strategy is None else strategy.reduce(tensor, reduce_op="sum")


def fit_transform(
    features: Tensor,
    sx: int,
    w_init: Tensor,
    iterations: int = 10,
    b_fro: float = 0.0,
    b_orth: float = 1.0,
    b_logdet: float = 1.0,
    inner_steps: int = 20,
    strategy=None,
) -> tuple[Tensor, list[float]]:
    """Learns ``W`` for eq. (1) by alternating l0 sparse coding and a transform update.

    * sparse coding: ``A = psi_lambda(W X)`` (the exact minimiser of eq. 1 over ``Sx``-sparse ``A``);
    * transform update: the non-convex problem in ``W`` with ``A`` fixed, solved by L-BFGS (strong Wolfe
      line search, ``inner_steps`` iterations) from the current ``W``, in float64.

    Only ``X X^T``, ``A X^T``, ``||A||^2`` and ``M`` enter the update; they are summed over DDP ranks when
    ``strategy`` is given, so every rank computes the same ``W``.

    Args:
        features: ``[M, N]`` training points as rows (this rank's share).
        sx: sparsity of the codebook.
        w_init: ``[L, N]`` start.
        iterations: alternations.
        b_fro, b_orth, b_logdet: Omega_1 weights.
        inner_steps: L-BFGS iterations per transform update.
        strategy: a Lightning strategy (for ``reduce``) or ``None``.

    Returns:
        ``(W [L, N] in the dtype of w_init, objective after each alternation)``.
    """
    x = features.detach().to(torch.float64)
    gram = _reduce_sum(x.T @ x, strategy)
    count = int(_reduce_sum(torch.tensor(float(x.shape[0]), dtype=torch.float64, device=x.device), strategy))
    w = w_init.detach().to(torch.float64).clone()
    history: list[float] = []
    for _ in range(iterations):
        codes = sparsify(x @ w.T, sx)  # l0 sparse-coding step, [M, L]
        cross = _reduce_sum(codes.T @ x, strategy)
        energy = _reduce_sum(codes.pow(2).sum(), strategy)
        w = w.clone().requires_grad_(True)
        optimizer = torch.optim.LBFGS([w], max_iter=inner_steps, line_search_fn="strong_wolfe")

        def closure(w=w, cross=cross, energy=energy, optimizer=optimizer):
            optimizer.zero_grad()
            value = transform_objective(w, gram, cross, energy, count, b_fro, b_orth, b_logdet)
            value.backward()
            return value

        with torch.enable_grad():
            optimizer.step(closure)
        w = w.detach()
        codes = sparsify(x @ w.T, sx)
        cross = _reduce_sum(codes.T @ x, strategy)
        energy = _reduce_sum(codes.pow(2).sum(), strategy)
        value = transform_objective(w, gram, cross, energy, count, b_fro, b_orth, b_logdet)
        history.append(float(value))
    return w.to(w_init.dtype), history


def decoder_objective(
    r: Tensor, w: Tensor, codes: Tensor, features: Tensor, beta_r: float, beta: float
) -> Tensor:
    """eq. (3): ``||R A - X||_F^2 / M + beta_R ||R - C||_F^2``.

    Args:
        r: ``[N, L]`` decoder.
        w: ``[L, N]`` transform.
        codes: ``[M, L]`` sparse codes (rows).
        features: ``[M, N]`` data (rows).
        beta_r: weight of the prior term.
        beta: ridge of ``C``.

    Returns:
        ``[]`` the objective.
    """
    c = _pseudo_inverse(w, beta)
    return (codes @ r.T - features).pow(2).sum() / features.shape[0] + beta_r * (r - c).pow(2).sum()


def _pseudo_inverse(w: Tensor, beta: float) -> Tensor:
    n = w.shape[1]
    eye = torch.eye(n, dtype=w.dtype, device=w.device)
    return torch.linalg.solve(w.T @ w + beta * eye, w.T)  # C = (W^T W + beta I)^-1 W^T, [N, L]


def closed_form_decoder(
    w: Tensor, codes: Tensor, features: Tensor, beta_r: float, beta: float, strategy=None
) -> Tensor:
    """The minimiser of eq. (3) over ``R`` with orthonormal columns: ``R = U V^T`` (paper's notation).

    With ``M_ = A X^T / M + beta_R C^T = U S V^T`` (``[L, N]``), ``tr(R M_)`` is maximal for
    ``R = V U^T`` (``[N, L]``; the paper writes the same matrix with the transposed convention).

    Args:
        w: ``[L, N]`` transform, ``N >= L``.
        codes: ``[M, L]`` sparse codes (rows).
        features: ``[M, N]`` data (rows).
        beta_r, beta: as in eq. (3).
        strategy: a Lightning strategy to sum ``A X^T`` and ``M`` over DDP ranks, or ``None``.

    Returns:
        ``[N, L]`` decoder with orthonormal columns, dtype of ``w``.
    """
    if w.shape[1] < w.shape[0]:
        raise ValueError(f"R [N, L] with orthonormal columns needs N >= L, got W of shape {tuple(w.shape)}")
    a, x = codes.detach().to(torch.float64), features.detach().to(torch.float64)
    cross = _reduce_sum(a.T @ x, strategy)
    count = _reduce_sum(torch.tensor(float(x.shape[0]), dtype=torch.float64, device=x.device), strategy)
    target = cross / count + beta_r * _pseudo_inverse(w.detach().to(torch.float64), beta).T  # [L, N]
    u, _, vh = torch.linalg.svd(target, full_matrices=False)
    return (vh.T @ u.T).to(w.dtype)  # eq. (3): closed form


def random_orthonormal(n: int, l: int, generator: torch.Generator | None = None) -> Tensor:  # noqa: E741
    """A random ``[n, l]`` matrix with orthonormal columns (QR of a Gaussian matrix, sign-fixed)."""
    q, r = torch.linalg.qr(torch.randn(n, l, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))
