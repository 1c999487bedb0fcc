r"""ADSH: Asymmetric Deep Supervised Hashing (Jiang & Li, AAAI 2018).

Objective (paper eq. 2-3), database ``Gamma`` of ``n`` items with codes ``V`` learned directly, query
points ``Omega`` (``m`` items sampled from the database) hashed by the network ``F``::

    min_{Theta, V}  J = sum_{i in Omega} sum_{j in Gamma} (tanh(F(x_i))^T v_j - c S_ij)^2
                        + gamma * sum_{i in Omega} || v_{idx(i)} - tanh(F(x_i)) ||^2
    s.t. V in {-1, +1}^{n x c},  S_ij = +1 if x_i, x_j share a class else -1.

``soft_similarity=True`` (the ADSH authors' public code, "soft constraint"): dissimilar pairs get
``S_ij = -r`` with ``r = #similar / #dissimilar`` pairs of ``Omega x Gamma`` instead of ``-1``. With 10
balanced classes ~90% of the pairs are dissimilar, and the hard ``-1`` target (``u^T v = -c`` for all of
them, impossible for more than two classes) drives every code to the same saturated corner on
Fashion-MNIST (measured: chance-level mAP); the balanced target keeps the classes apart.

Alternating optimisation (paper Algorithm 1), ``T_out`` outer iterations, each:

1. sample ``Omega`` (``num_samples = m`` points of the train subset, itself drawn from the database);
2. ``T_in`` epochs of mini-batch back-propagation on ``J`` w.r.t. ``Theta`` with ``V`` fixed (only the
   batch items in ``Omega`` are used); the outputs ``u_i = tanh(F(x_i))`` are kept in the buffer ``U``;
3. ``V`` update with ``Theta`` fixed, by discrete cyclic coordinate descent (paper eq. 5-8): with
   ``Ubar in R^{n x c}`` = ``U`` on the rows of ``Omega`` and 0 elsewhere and
   ``Q = -2c S^T U - 2 gamma Ubar``, ``J(V) = ||V U^T||_F^2 + tr(V^T Q) + const``; column by column
   ``V_{*k} = -sign(2 Vhat_k Uhat_k^T U_{*k} + Q_{*k})`` (``hat``: all columns but ``k``), each step an
   exact minimisation over that column, so ``J`` never increases.

Lightning mapping: one Lightning epoch = one inner epoch over the train loader; the ``V`` update runs in
``on_train_epoch_end`` every ``inner_epochs`` epochs; after ``outer_iterations`` outer iterations the
module stops the trainer. ``V`` (``[num_database, c]``), ``U`` (``[num_train, c]``) and ``Omega`` are
registered buffers (in checkpoints). Their size is taken from the datamodule in ``setup("fit")`` and
from the checkpoint on load (lazy buffers, see ``models.hashing.base``).

DDP: ``Omega`` is drawn with a generator seeded by ``(seed, outer iteration)``, the same on every rank;
each rank writes ``U`` for its own samples; at the ``V`` update the ``U`` rows are all-gathered
(``self.all_gather``) and every rank runs the same closed-form update on the same inputs; rank 0's ``V``
is then broadcast as a guard against non-deterministic kernels, so ``V`` is identical on all ranks.
The initial random ``V`` is broadcast from rank 0 as well.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from models.hashing.base import HashingModule, label_similarity, sign_codes
from models.precision import float32

__all__ = ["ADSH", "adsh_dcc_update", "adsh_similarity", "adsh_v_objective", "similar_ratio"]


def adsh_similarity(a: torch.Tensor, b: torch.Tensor, ratio: float | None) -> torch.Tensor:
    """ADSH's pairwise target ``S`` (paper eq. 2): ``+1`` similar, ``-1`` (or ``-ratio``, soft) dissimilar.

    Args:
        a: ``[P]`` class ids or ``[P, L]`` multi-hot.
        b: ``[Q]`` or ``[Q, L]``.
        ratio: ``None`` = hard ``-1``; else the soft constraint's ``r`` (dissimilar pairs get ``-r``).

    Returns:
        ``float32`` ``[P, Q]``.
    """
    s = label_similarity(a, b)
    return s * 2 - 1 if ratio is None else s * (1 + ratio) - ratio


def similar_ratio(a: torch.Tensor, b: torch.Tensor, chunk: int = 8192) -> float:
    """``r = #similar / #dissimilar`` pairs of ``a x b`` (the soft constraint of ADSH's public code).

    Args:
        a: ``[P]`` class ids or ``[P, L]`` multi-hot.
        b: ``[Q]`` or ``[Q, L]``.
        chunk: rows of ``b`` per block (memory bound).

    Returns:
        The ratio (``inf`` when no pair is dissimilar).
    """
    similar = 0.0
    for start in range(0, b.shape[0], chunk):
        similar += float(label_similarity(a, b[start : start + chunk]).sum())
    dissimilar = a.shape[0] * b.shape[0] - similar
    return similar / dissimilar if dissimilar > 0 else float("inf")


def adsh_v_objective(V: torch.Tensor, U: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """``||V U^T||_F^2 + tr(V^T Q)``: the ``V``-dependent part of ADSH's ``J`` (paper eq. 5).

    Args:
        V: ``[n, c]`` database codes.
        U: ``[m, c]`` query outputs ``tanh(F(x_i))``, ``i in Omega``.
        Q: ``[n, c]`` ``-2c S^T U - 2 gamma Ubar``.

    Returns:
        Scalar tensor.
    """
    return ((V.T @ V) * (U.T @ U)).sum() + (V * Q).sum()


@torch.no_grad()
def adsh_dcc_update(V: torch.Tensor, U: torch.Tensor, Q: torch.Tensor, sweeps: int = 1) -> torch.Tensor:
    """Bit-wise closed-form ``V`` update of ADSH (discrete cyclic coordinate descent, paper eq. 8).

    ``V_{*k} = -sign(2 Vhat_k Uhat_k^T U_{*k} + Q_{*k})`` for ``k = 1..c`` (0 -> +1), ``sweeps`` times.

    Args:
        V: ``[n, c]`` current codes in ``{-1, +1}`` (not modified).
        U: ``[m, c]`` query outputs.
        Q: ``[n, c]`` linear term.
        sweeps: passes over the ``c`` columns.

    Returns:
        New ``[n, c]`` codes in ``{-1, +1}``.
    """
    V = V.clone()
    gram = U.T @ U  # [c, c]
    for _ in range(sweeps):
        for k in range(V.shape[1]):
            # Vhat_k Uhat_k^T U_{*k} = V gram[:, k] - V_{*k} gram[k, k]
            arg = 2 * (V @ gram[:, k] - V[:, k] * gram[k, k]) + Q[:, k]
            V[:, k] = sign_codes(-arg)  # -sign(arg); arg == 0 (a tie, same J) -> +1
    return V


class ADSH(HashingModule):
    """Asymmetric Deep Supervised Hashing as a LightningModule (objective and updates: module docstring).

    Train with a retrieval datamodule (``split="retrieval"``): the train loader gives the query points
    (``"index"`` = position in the train set, ``datamodule.train_in_database`` maps it into the
    database), the database set gives ``n`` and its labels. Under the ADSH paper's settings
    ``max_epochs = outer_iterations * inner_epochs``.

    Args:
        in_chans: image channels C.
        bits: code length c.
        num_classes: number of classes K (multi-hot labels: number of labels).
        backbone: ``"small_cnn"`` (PPL paper's grayscale net) or a timm name.
        pretrained: pretrained timm backbone.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        gamma: weight of the quantization term (paper: 200).
        num_samples: ``m``, query points sampled per outer iteration from the train subset (paper: 2000);
            ``None`` or ``>= num_train``: the whole train subset. Batch items outside ``Omega`` are skipped,
            so the effective batch is about ``batch_size * m / num_train``.
        inner_epochs: ``T_in``, epochs of net updates per outer iteration (paper: 3).
        outer_iterations: ``T_out`` (paper: 50); training stops after it (``None``: Trainer decides).
        dcc_sweeps: passes of the column-wise ``V`` update per outer iteration (paper: 1).
        eval_database_codes: codes of the database items at val/test: ``"learned"`` = ``V`` (the paper's
            asymmetric retrieval; falls back to ``"hash"`` when ``V`` does not cover the database set) or
            ``"hash"`` = ``sign(F(x))`` of the database images (needed when the database images change,
            e.g. the PPL protocol's protected domain).
        seed: seed of the initial ``V`` and of the ``Omega`` sampling.
        soft_similarity: dissimilar pairs target ``-r`` (``r = #similar / #dissimilar``, the ADSH
            authors' code) instead of ``-1`` (module docstring).
    """

    card_method = (
        "ADSH (asymmetric deep supervised hashing): a victim retrieval model of the PPL evaluation; "
        "query codes sign(F(x)), database codes learned directly."
    )

    _lazy_buffers = ("V", "U", "U_seen", "omega")

    def __init__(
        self,
        in_chans: int = 1,
        bits: int = 16,
        num_classes: int = 10,
        backbone: str = "small_cnn",
        pretrained: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        gamma: float = 200.0,
        num_samples: int | None = 2000,
        inner_epochs: int = 3,
        outer_iterations: int | None = 50,
        dcc_sweeps: int = 1,
        eval_database_codes: Literal["learned", "hash"] = "learned",
        seed: int = 0,
        soft_similarity: bool = True,
    ) -> None:
        super().__init__(in_chans, bits, num_classes, backbone, pretrained, lr, weight_decay, use_tanh=True)
        self.save_hyperparameters()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        if num_samples is not None and num_samples < 1:
            raise ValueError(f"num_samples must be >= 1 or None, got {num_samples}")
        if inner_epochs < 1 or dcc_sweeps < 1 or (outer_iterations is not None and outer_iterations < 1):
            raise ValueError("inner_epochs, outer_iterations and dcc_sweeps must be >= 1")
        if eval_database_codes not in ("learned", "hash"):
            raise ValueError(f"eval_database_codes must be 'learned' or 'hash', got {eval_database_codes!r}")
        self.register_buffer("V", torch.zeros(0, bits))  # [n, c] database codes; all 0 = not initialised
        self.register_buffer("U", torch.zeros(0, bits))  # [num_train, c] latest tanh(F(x_i))
        self.register_buffer("U_seen", torch.zeros(0, dtype=torch.bool))  # [num_train] U row written
        self.register_buffer("omega", torch.zeros(0, dtype=torch.bool))  # [num_train] current Omega
        self.register_buffer("outer_iteration", torch.zeros((), dtype=torch.long))  # finished V updates
        self.register_buffer("sim_ratio", torch.ones(()))  # soft constraint r of the current Omega
        # from the datamodule at setup("fit"), not saved
        self.register_buffer("database_labels", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("train_labels", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("train_in_database", torch.zeros(0, dtype=torch.long), persistent=False)

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        dm = self._datamodule()
        if dm.train_in_database is None or dm.database_set is None:
            raise RuntimeError("ADSH needs datamodule.train_in_database and database_set (split='retrieval')")
        self.database_labels = self._dataset_labels(dm.database_set).to(self.device)
        self.train_labels = self._dataset_labels(dm.train_set).to(self.device)
        self.train_in_database = dm.train_in_database.to(self.device, torch.long)
        self._check_labels(self.database_labels)
        n, num_train = self.database_labels.shape[0], self.train_labels.shape[0]
        self._resize_lazy("V", (n, self.bits), torch.float32)
        self._resize_lazy("U", (num_train, self.bits), torch.float32)
        self._resize_lazy("U_seen", (num_train,), torch.bool)
        self._resize_lazy("omega", (num_train,), torch.bool)

    def on_train_start(self) -> None:
        if bool((self.V == 0).all()):  # fresh run (a restored checkpoint keeps its V)
            g = torch.Generator().manual_seed(self.hparams.seed)
            v = torch.randint(0, 2, tuple(self.V.shape), generator=g).float() * 2 - 1
            self.V.copy_(v.to(self.V.device))
            self._broadcast_(self.V)

    def _sample_omega(self) -> None:
        num_train, m = self.omega.shape[0], self.hparams.num_samples
        if m is None or m >= num_train:
            self.omega.fill_(True)
            return
        # same generator on every rank -> same Omega everywhere
        g = torch.Generator().manual_seed(self.hparams.seed * 1_000_003 + int(self.outer_iteration) + 1)
        chosen = torch.randperm(num_train, generator=g)[:m].to(self.omega.device)
        self.omega.fill_(False)
        self.omega[chosen] = True

    def _update_ratio(self) -> None:
        if self.hparams.soft_similarity:
            self.sim_ratio.fill_(similar_ratio(self.train_labels[self.omega], self.database_labels))

    def _target(self, labels: torch.Tensor, database_labels: torch.Tensor) -> torch.Tensor:
        ratio = float(self.sim_ratio) if self.hparams.soft_similarity else None
        return adsh_similarity(labels, database_labels, ratio)

    def on_train_epoch_start(self) -> None:
        if self.current_epoch % self.hparams.inner_epochs == 0 or not bool(self.omega.any()):
            self._sample_omega()
            self._update_ratio()
            self.U_seen.fill_(False)

    # ------------------------------------------------------------------ net step
    def adsh_loss(
        self, u: torch.Tensor, labels: torch.Tensor, db_positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mini-batch ADSH loss (paper eq. 3), normalised by ``n * batch`` as in the official code.

        Args:
            u: ``[b, c]`` ``tanh(F(x_i))`` of the batch's query points.
            labels: ``[b]`` (or ``[b, L]``) their labels.
            db_positions: ``[b]`` their rows in ``V``.

        Returns:
            ``(square_loss, quantization_loss)``, both already divided by ``n * b``.
        """
        n, c = self.V.shape
        S = self._target(labels, self.database_labels)  # [b, n]: +1 similar, -1 (or -r) dissimilar
        norm = n * max(u.shape[0], 1)
        square = ((u @ self.V.T - c * S) ** 2).sum() / norm  # eq. 3, first term
        quant = self.hparams.gamma * ((self.V[db_positions] - u) ** 2).sum() / norm  # eq. 3, second term
        return square, quant

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        labels = self._labels(batch)
        index = batch["index"]
        keep = self.omega[index]
        weight = 1.0
        if not bool(keep.any()):  # no Omega item in this batch: a zero-weight step keeps DDP ranks in step
            keep = torch.zeros_like(keep)
            keep[0] = True
            weight = 0.0
        index, labels = index[keep], labels[keep]
        u = self(batch["image"][keep])
        with float32():  # eq. 2: inner products against +-c targets, too coarse in bf16
            square, quant = self.adsh_loss(u.float(), labels, self.train_in_database[index])
        if weight:
            self.U[index] = u.detach().float()
            self.U_seen[index] = True
        loss = weight * (square + quant)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/square_loss", weight * square)
        self.log("train/quant_loss", weight * quant)
        return loss

    # ------------------------------------------------------------------ V step
    @torch.no_grad()
    def update_codes(self) -> torch.Tensor:
        """One closed-form ``V`` update (paper eq. 8) from the ``U`` rows of ``Omega`` (all ranks).

        Returns:
            The ``V``-objective ``||V U^T||^2 + tr(V^T Q)`` after the update (scalar).
        """
        U, seen = self._gather_rows(self.U, self.U_seen)
        rows = seen & self.omega
        n, c = self.V.shape
        U_omega = U[rows]  # [m, c]
        labels_omega = self.train_labels[rows]
        Ubar = torch.zeros_like(self.V)
        Ubar[self.train_in_database[rows]] = U_omega
        Q = -2 * self.hparams.gamma * Ubar  # [n, c]
        for start in range(0, n, 8192):  # -2c S^T U in chunks of database rows
            S = self._target(labels_omega, self.database_labels[start : start + 8192])
            Q[start : start + 8192] -= 2 * c * (S.T @ U_omega)
        V = adsh_dcc_update(self.V, U_omega, Q, sweeps=self.hparams.dcc_sweeps)
        self._broadcast_(V)
        self.V.copy_(V)
        return adsh_v_objective(V, U_omega, Q)

    def on_train_epoch_end(self) -> None:
        if (self.current_epoch + 1) % self.hparams.inner_epochs != 0:
            return
        objective = self.update_codes()
        self.outer_iteration += 1
        self.log("train/v_objective", objective / self.V.shape[0])
        self.log("train/outer_iteration", self.outer_iteration.float())
        if self.hparams.outer_iterations is not None and int(self.outer_iteration) >= (
            self.hparams.outer_iterations
        ):
            self.trainer.should_stop = True

    # ------------------------------------------------------------------ evaluation
    def _database_codes(self, batch: dict[str, Any]) -> torch.Tensor:
        if self.hparams.eval_database_codes == "learned" and self._v_covers_database():
            return self.V[batch["index"]]
        return self.hash(batch["image"])

    def _v_covers_database(self) -> bool:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        database = getattr(dm, "database_set", None)
        return (
            database is not None
            and self.V.shape[0] == len(database)
            and self.V.numel() > 0
            and not bool((self.V == 0).any())
        )
