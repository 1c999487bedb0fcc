r"""DSDH: Deep Supervised Discrete Hashing (Li, Sun, He & Tan, NIPS 2017).

Objective (paper eq. 6; ``N`` train items, ``u_i = F(x_i)`` linear ``fc(bits)`` outputs,
``Theta_ij = u_i^T u_j / 2``, ``s_ij = 1`` if ``x_i, x_j`` share a class else 0, ``y_i`` one-hot)::

    min_{F, B, W}  - sum_{i,j} (s_ij Theta_ij - log(1 + e^{Theta_ij}))     (pairwise likelihood)
                   + mu  sum_i || b_i - u_i ||^2                          (quantization)
                   + nu  sum_i || y_i - W^T b_i ||^2                      (linear classification of codes)
                   + eta || W ||_F^2
    s.t. B = [b_1 .. b_N]^T in {-1, +1}^{N x c},  W in R^{c x K}.

Alternating optimisation, one round per Lightning epoch:

1. ``F``: mini-batch back-propagation with ``B`` and ``W`` fixed, on
   ``mean_{i in batch, j} [log(1 + e^{Theta_ij}) - s_ij Theta_ij] + mu mean_{i in batch, k} (b_ik - u_ik)^2``
   where ``u_j`` of the other items comes from the buffer ``U`` (their latest outputs) -- means instead
   of sums, as in the public PyTorch reproductions, so ``lr`` and ``mu`` do not depend on ``N``;
2. ``W`` in closed form (ridge regression of ``Y`` on ``B``, paper eq. 9):
   ``W = (B^T B + (eta / nu) I)^{-1} B^T Y``;
3. ``B`` by discrete cyclic coordinate descent (paper eq. 10-12): with ``P = Y W^T + (mu / nu) U``,
   ``nu ||Y - B W||^2 + mu ||B - U||^2 = nu (||B W||^2 - 2 tr(B^T P)) + const``; bit by bit
   ``B_{*k} = sign(P_{*k} - B'_k W'_k w_k)`` (``'``: without bit ``k``, ``w_k`` = row ``k`` of ``W``),
   each an exact minimisation over that bit, so the objective never increases.

Hyper-parameters: the PPL paper does not restate the victims' values. Defaults ``nu = 1``, ``eta = 1e-2``
(common DSDH reproductions) and ``mu = 0.1``: with ``mu = 1e-2`` a from-scratch ``small_cnn`` often
collapsed to ``u = 0`` (the pairwise loss stuck at ``log 2``) on the test fixture, ``mu = 0.1`` learned on
every seed tried; the quantization pull towards ``B`` (label-driven codes, ``mu / nu`` small in the ``B``
step) gets the net out of that saddle. All are init args.

DDP: each rank writes ``U`` for its own samples during the epoch; at the epoch end the rows are
all-gathered (``self.all_gather``), and every rank runs the same ``W`` / ``B`` updates on the same inputs;
rank 0's ``B`` and ``W`` are broadcast as a guard, so they are identical on all ranks (during an epoch a
rank sees the other ranks' ``U`` rows as of the last epoch end). The initial random ``B`` is broadcast too.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from models.hashing.base import HashingModule, label_similarity, sign_codes
from models.precision import float32

__all__ = ["DSDH", "dsdh_b_objective", "dsdh_dcc_update", "dsdh_w_update"]


def dsdh_w_update(B: torch.Tensor, Y: torch.Tensor, nu: float, eta: float) -> torch.Tensor:
    """Closed-form ``W`` (paper eq. 9): ``argmin_W nu ||Y - B W||^2 + eta ||W||^2``.

    Args:
        B: ``[N, c]`` codes.
        Y: ``[N, K]`` one-hot / multi-hot labels.
        nu: classification weight.
        eta: ``||W||^2`` weight.

    Returns:
        ``W`` ``[c, K]``.
    """
    c = B.shape[1]
    eye = torch.eye(c, dtype=B.dtype, device=B.device)
    return torch.linalg.solve(B.T @ B + (eta / nu) * eye, B.T @ Y)


def dsdh_b_objective(
    B: torch.Tensor, U: torch.Tensor, Y: torch.Tensor, W: torch.Tensor, mu: float, nu: float
) -> torch.Tensor:
    """``nu ||Y - B W||^2 + mu ||B - U||^2``: the ``B``-dependent part of DSDH's objective.

    Args:
        B: ``[N, c]``; U: ``[N, c]``; Y: ``[N, K]``; W: ``[c, K]``.
        mu: quantization weight.
        nu: classification weight.

    Returns:
        Scalar tensor.
    """
    return nu * ((Y - B @ W) ** 2).sum() + mu * ((B - U) ** 2).sum()


@torch.no_grad()
def dsdh_dcc_update(
    B: torch.Tensor, U: torch.Tensor, Y: torch.Tensor, W: torch.Tensor, mu: float, nu: float, sweeps: int = 1
) -> torch.Tensor:
    """Bit-wise closed-form ``B`` update of DSDH (discrete cyclic coordinate descent, paper eq. 12).

    ``B_{*k} = sign(P_{*k} - B'_k W'_k w_k)``, ``P = Y W^T + (mu / nu) U`` (0 -> +1), ``sweeps`` passes.

    Args:
        B: ``[N, c]`` current codes in ``{-1, +1}`` (not modified).
        U: ``[N, c]`` net outputs.
        Y: ``[N, K]`` labels (one-hot / multi-hot).
        W: ``[c, K]`` classifier.
        mu: quantization weight.
        nu: classification weight.
        sweeps: passes over the ``c`` bits.

    Returns:
        New ``[N, c]`` codes in ``{-1, +1}``.
    """
    B = B.clone()
    P = Y @ W.T + (mu / nu) * U  # [N, c]
    gram = W @ W.T  # [c, c]
    for _ in range(sweeps):
        for k in range(B.shape[1]):
            # B'_k W'_k w_k = B gram[:, k] - B_{*k} gram[k, k]
            B[:, k] = sign_codes(P[:, k] - (B @ gram[:, k] - B[:, k] * gram[k, k]))
    return B


class DSDH(HashingModule):
    """Deep Supervised Discrete Hashing as a LightningModule (objective and updates: module docstring).

    Train with a retrieval datamodule (``split="retrieval"``); ``B`` / ``U`` cover the train subset
    (``"index"`` = position in the train set). Codes for retrieval: ``hash(x) = sign(F(x))``.

    Args:
        in_chans: image channels C.
        bits: code length c.
        num_classes: number of classes K (multi-hot labels: number of labels).
        backbone: ``"small_cnn"`` (PPL paper's grayscale net) or a timm name.
        pretrained: pretrained timm backbone.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        mu: quantization weight.
        nu: classification weight.
        eta: ``||W||_F^2`` weight.
        dcc_sweeps: passes of the bit-wise ``B`` update per epoch.
        seed: seed of the initial ``B``.
    """

    card_method = (
        "DSDH (deep supervised discrete hashing): a victim retrieval model of the PPL evaluation; "
        "codes sign(F(x))."
    )

    _lazy_buffers = ("B", "U", "U_seen")

    def __init__(
        self,
        in_chans: int = 1,
        bits: int = 16,
        num_classes: int = 10,
        backbone: str = "small_cnn",
        pretrained: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        mu: float = 0.1,
        nu: float = 1.0,
        eta: float = 1e-2,
        dcc_sweeps: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__(in_chans, bits, num_classes, backbone, pretrained, lr, weight_decay, use_tanh=False)
        self.save_hyperparameters()
        if mu < 0 or nu <= 0 or eta <= 0:
            raise ValueError(f"need mu >= 0, nu > 0, eta > 0; got {mu=}, {nu=}, {eta=}")
        if dcc_sweeps < 1:
            raise ValueError(f"dcc_sweeps must be >= 1, got {dcc_sweeps}")
        self.register_buffer("B", torch.zeros(0, bits))  # [N, c] codes; all 0 = not initialised
        self.register_buffer("U", torch.zeros(0, bits))  # [N, c] latest net outputs
        self.register_buffer("U_seen", torch.zeros(0, dtype=torch.bool))  # [N] rows written this epoch
        self.register_buffer("W", torch.zeros(bits, num_classes))  # [c, K] linear classifier of codes
        self.register_buffer("train_labels", torch.zeros(0, dtype=torch.long), persistent=False)

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        dm = self._datamodule()
        self.train_labels = self._dataset_labels(dm.train_set).to(self.device)
        self._check_labels(self.train_labels)
        n = self.train_labels.shape[0]
        self._resize_lazy("B", (n, self.bits), torch.float32)
        self._resize_lazy("U", (n, self.bits), torch.float32)
        self._resize_lazy("U_seen", (n,), torch.bool)

    def on_train_start(self) -> None:
        if bool((self.B == 0).all()):  # fresh run (a restored checkpoint keeps its B)
            g = torch.Generator().manual_seed(self.hparams.seed)
            b = torch.randint(0, 2, tuple(self.B.shape), generator=g).float() * 2 - 1
            self.B.copy_(b.to(self.B.device))
            self._broadcast_(self.B)

    def on_train_epoch_start(self) -> None:
        self.U_seen.fill_(False)

    def dsdh_loss(
        self, u: torch.Tensor, labels: torch.Tensor, index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mini-batch net loss of DSDH (paper eq. 6 with ``B``, ``W`` fixed; means, see module docstring).

        Args:
            u: ``[b, c]`` net outputs of the batch.
            labels: ``[b]`` (or ``[b, L]``) their labels.
            index: ``[b]`` their positions in the train set.

        Returns:
            ``(pairwise_loss, quantization_loss)``, the latter already multiplied by ``mu``.
        """
        U = self.U.clone()
        U[index] = u.detach().float()
        theta = u @ U.T / 2  # [b, N]
        S = label_similarity(labels, self.train_labels)  # [b, N] in {0, 1}
        pairwise = (F.softplus(theta) - S * theta).mean()  # eq. 6, negative log-likelihood
        quant = self.hparams.mu * ((self.B[index] - u) ** 2).mean()  # eq. 6, quantization
        return pairwise, quant

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        labels = self._labels(batch)
        index = batch["index"]
        u = self(batch["image"])
        with float32():  # the pairwise likelihood of inner products, too coarse in bf16
            pairwise, quant = self.dsdh_loss(u.float(), labels, index)
        self.U[index] = u.detach().float()
        self.U_seen[index] = True
        loss = pairwise + quant
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/pairwise_loss", pairwise)
        self.log("train/quant_loss", quant)
        return loss

    @torch.no_grad()
    def update_codes(self) -> torch.Tensor:
        """``W`` step then ``B`` step (paper eq. 9 and 12) from the all-ranks ``U``.

        Returns:
            The ``B``-objective ``nu ||Y - B W||^2 + mu ||B - U||^2`` after the update (scalar).
        """
        merged, seen = self._gather_rows(self.U, self.U_seen)
        self.U.copy_(torch.where(seen[:, None], merged, self.U))
        Y = self._one_hot(self.train_labels)
        mu, nu, eta = self.hparams.mu, self.hparams.nu, self.hparams.eta
        W = dsdh_w_update(self.B, Y, nu, eta)
        B = dsdh_dcc_update(self.B, self.U, Y, W, mu, nu, sweeps=self.hparams.dcc_sweeps)
        self._broadcast_(W)
        self._broadcast_(B)
        self.W.copy_(W)
        self.B.copy_(B)
        return dsdh_b_objective(B, self.U, Y, W, mu, nu)

    def on_train_epoch_end(self) -> None:
        objective = self.update_codes()
        self.log("train/b_objective", objective / self.B.shape[0])
