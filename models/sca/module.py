"""SCA: sparse coding with ambiguation on the latent space of a convolutional autoencoder.

Pipeline (per image; ``maps`` code maps of length ``L``)::

    f = E(x)                [maps, N=L]   conv encoder, standardised features
    a = psi_lambda(W f)     [maps, L]     eq. (2): Sx largest magnitudes per map (ternary option: sign)
    p = a (+) n_p           [maps, L]     eq. (4): Sp noise entries off the support (public code)
    a = p * 1[supp a]                     purification by the authorized user
    x_hat = D(R a)          [C, H, W]     eq. (3) decoder R, then the conv decoder

Design: two kinds of parameters, fitted in alternation at the granularity of an epoch.

* ``E`` and ``D`` are trained by Lightning (Adam on the reconstruction MSE) with ``W`` and ``R`` held
  fixed; the gradient reaches ``E`` through the kept entries of the top-k. ``train_sx`` lists the
  sparsities the loss is averaged over (one encoder pass, one decoder pass per sparsity), so one model
  serves every ``Sx`` in that list: the top-k is applied at encode time (``encode(x, sx=...)``).
* ``W`` (eq. 1) and ``R`` (eq. 3) are NOT trained by gradient: they live in buffers and are refitted in
  their own stage at the end of each of the first ``transform_epochs`` training epochs (before the
  epoch's validation, or at the epoch end when it has none), on the features
  the encoder produced during that epoch (the last ``transform_samples`` of them): alternating l0 sparse
  coding / L-BFGS transform update for eq. (1) starting from the current ``W``
  (:func:`models.sca.transform.fit_transform`), then the closed form ``R = U V^T`` of eq. (3). Later
  epochs keep ``W`` and ``R`` fixed so that ``E`` and ``D`` finish on the final transform.
* At the end of EVERY training epoch the ambiguation statistics are refreshed from the same features:
  per-position quantile tables of ``W f``, the gap-ratio tables, the mean threshold and the ternary
  scales (see :mod:`models.sca.ambiguation`).
* Beyond the paper, ``trainable="decoder"`` (with ``init_from``) fine-tunes the decoder's weights of a
  trained model and nothing else: no transform stage, no refreshed statistics, BatchNorm statistics as
  loaded, so the codes and public codes stay exactly those of the loaded model.

All fitted quantities are registered buffers whose shapes follow from the init args, so they are in the
``state_dict`` (and in safetensors exports). Sufficient statistics are summed over DDP ranks, so all ranks
fit the same ``W`` and ``R``; quantile tables are averaged over ranks.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MetricCollection
from torchmetrics.image import StructuralSimilarityIndexMeasure

from models.attacks.inversion import mlp_inverter
from models.grl import grad_reverse
from models.hub import PrivzooHubMixin
from models.precision import float32
from models.sca.ambiguation import (
    ambiguate_codes,
    check_finite,
    decoy_ambiguate,
    gap_ratios,
    purify,
    quantile_grid,
    value_quantiles,
)
from models.sca.index import SupportIntersectionIndex
from models.sca.metrics import NMSE
from models.sca.networks import ConvDecoder, ConvEncoder
from models.sca.transform import closed_form_decoder, fit_transform, sparsify

__all__ = ["MECHANISMS", "SCA", "SERVER_ATTACKS", "coefficient_correlation", "ssim_separable"]

SERVER_ATTACKS = ("as_is", "top_sx", "posterior_mean")
#: ambiguation mechanisms: the paper's noise (eq. 4) and privzoo's decoys (entries of other real codes)
MECHANISMS = ("paper", "decoy")
TRAINABLE = ("all", "decoder")


def ssim_separable(x: torch.Tensor, y: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM (data range 1) with a separable Gaussian window and no padding: a cheap training loss.

    Same constants and window as torchmetrics' SSIM (the evaluation metric); two 1-D convolutions per
    statistic instead of one 11 x 11 convolution make its backward pass fast on CPU.

    Args:
        x, y: ``[B, C, H, W]`` images in [0, 1], ``H, W >= size``.

    Returns:
        ``[]`` mean SSIM.
    """
    c = x.shape[1]
    t = torch.arange(size, dtype=x.dtype, device=x.device) - (size - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    gh, gv = g.view(1, 1, 1, size).repeat(c, 1, 1, 1), g.view(1, 1, size, 1).repeat(c, 1, 1, 1)

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(z, gh, groups=c), gv, groups=c)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    ssim = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return ssim.mean()


def coefficient_correlation(coeff: torch.Tensor) -> torch.Tensor:
    """Mean squared off-diagonal correlation of the ``L`` coefficients ``[B, maps, L]`` over the batch (no
    equation of the paper: privzoo's decorrelation option)."""
    with float32():
        z = coeff.float()
        z = z - z.mean(0)
        z = z / z.pow(2).mean(0).sqrt().clamp(min=1e-6)
        corr = torch.einsum("bml,bmk->mlk", z, z) / z.shape[0]  # [maps, L, L]
        off = corr - torch.diag_embed(torch.diagonal(corr, dim1=-2, dim2=-1))
        length = coeff.shape[-1]
        return off.pow(2).sum((-2, -1)).mean() / (length * (length - 1))


class SCA(PrivzooHubMixin, L.LightningModule):
    """Sparse-code convolutional autoencoder with ambiguation (eqs. 1-5).

    Batches: ``{"image": float [B, C, H, W] in [0, 1], ...}``.

    Args:
        in_chans: image channels C.
        image_size: ``H = W`` or ``[H, W]``, divisible by ``2 ** len(channels)``.
        channels: conv stage widths of the encoder (mirrored in the decoder).
        extra_convs: 3x3 convs after each strided conv (capacity).
        code_maps: number of code maps (1 for MNIST / Fashion-MNIST, 4 for CIFAR-10).
        code_length: ``L`` per code map (also the feature size ``N`` per map: ``W`` is square).
        sx: sparsity ``Sx`` per code map of :meth:`encode` (and of the eq. 1 fit).
        train_sx: sparsities the training loss averages over; ``None`` = ``[sx]``. A repeated value
            weighs more (``[1, 16, 16, 16]``: ``(loss_1 + 3 loss_16) / 4``) at the cost of one decoder pass.
        train_sx_samples: average over this many of ``train_sx`` drawn at random per step (``None`` = all).
        ssim_weight: weight of ``1 - SSIM`` added to the reconstruction MSE (0 = plain MSE).
        sp: ambiguation ``Sp`` per code map of the public codes (validation, predict).
        sq: ambiguation ``Sq <= Sp`` per code map of query codes.
        ternary: sparse ternary codes ``{-1, 0, +1}`` (decoded with per-position scales).
        lr: Adam learning rate of the encoder / decoder.
        weight_decay: Adam weight decay.
        transform_epochs: refit ``W`` / ``R`` at the end of the first this many epochs.
        transform_iterations: alternations of the eq. (1) learner per refit.
        transform_inner_steps: L-BFGS iterations per transform update.
        transform_samples: at most this many features per rank enter a refit.
        b_fro: Omega_1 weight of ``||W||_F^2`` (``beta_1 / beta_1,1``).
        b_orth: Omega_1 weight of ``||W W^T - I||_F^2`` (``beta_1 / beta_1,2``).
        b_logdet: Omega_1 weight of ``-log|det W^T W|`` (``beta_1 / beta_1,3``).
        beta_r: ``beta_R`` of eq. (3).
        beta: ridge ``beta`` of ``C = (W^T W + beta I)^-1 W^T``.
        num_quantiles: size of the per-position quantile tables of the ambiguation noise.
        seed: seed of the ambiguation noise drawn in validation / test / predict.
        ambiguation: ``"paper"`` (eq. 4: noise drawn from the informative entries' law) or ``"decoy"``
            (the entries added are informative entries of other real images' codes, from the decoy pool;
            see :func:`models.sca.ambiguation.decoy_ambiguate`).
        decoy_pool_size: rows of the ``decoy_pool`` buffer (0: no pool); fill it with
            :meth:`set_decoy_pool`.
        init_from: start the fit from this earlier run's weights (a Lightning checkpoint or a Hub folder,
            e.g. a zoo checkpoint), loaded strictly on fit start; ``None``: from scratch (the paper).
        trainable: ``"all"`` (the paper) trains ``E`` and ``D``; ``"decoder"`` fine-tunes ``D``'s weights
            alone: ``E`` (its BatchNorm statistics too), ``W``, ``R`` and the ambiguation statistics stay as
            loaded, so the codes and the public codes do not change; ``D``'s BatchNorm statistics stay as
            loaded too, so ``D`` is trained exactly as it is evaluated.
        adversary_weight: ``lambda`` of an adversarial inverter (0 = the paper: none). An MLP learns
            public codes (Sp = ``adversary_sp``) -> image; through the gradient reversal layer the encoder
            is pushed to raise its error while the authorized loss keeps ``D``'s low. Beyond the paper.
        adversary_sp: ambiguation ``Sp`` per map of the adversary's public codes.
        adversary_hidden: width of the adversary's two hidden layers (the harness's ``inversion_mlp``).
        decorrelation_weight: weight of a penalty on the correlations between the transform coefficients
            ``W f`` of a batch (mean squared off-diagonal correlation per map), so that informative entries
            predict each other less (0 = the paper). Beyond the paper.

    Raises:
        ValueError: ``sx > L``, ``sp > L - sx``, ``sq > sp``, bad sizes.
    """

    card_method = (
        "SCA: sparse coding with ambiguation -- sparse codes of a convolutional autoencoder's latent "
        "space, made public with Sp noise entries off their support (privacy-preserving image "
        "reconstruction and near-neighbour search)"
    )
    card_paper = (
        'B. Razeghi, S. Ferdowsi, D. Kostadinov, F. P. Calmon, S. Voloshynovskiy, "Privacy-Preserving '
        'Near Neighbor Search via Sparse Coding with Ambiguation" (ICASSP 2021); numbers compared with '
        "its Table I"
    )
    card_task = "image-to-image"
    card_tags = ("sparse-coding", "ambiguation", "image-reconstruction", "nearest-neighbour-search")
    card_usage = (
        "codes = model.encode(x); public = model.ambiguate(codes, sp=32)  # x: float [B, 1, 28, 28] in "
        "[0, 1]; authorized: model.decode(model.purify(public, codes != 0))"
    )
    card_threat_model = (
        "Threat: a curious server stores the public codes (the sparse code plus Sp noise entries per map, "
        "drawn to look like informative ones) and knows the whole model (encoder, W, R, decoder, Sx, Sp "
        "and the ambiguation mechanism) but not the support, which only the data owner / authorized user "
        "holds. It sees the public codes of the evaluated images only; it trains its own attackers on "
        "public images of its own (the training split, encoded and ambiguated by itself with the public "
        "mechanism), disjoint from the evaluated test images. Its goals: reconstruct the images, infer "
        "their class, tell noise entries from informative ones. The headline privacy numbers are the "
        "WORST CASE of the 'Privacy under attack' table (scripts/attack.py: the paper's decode-as-is / "
        "top-Sx attacks, privzoo's posterior mean, learned MLP and conv inversions, linear / MLP / k-NN "
        "class probes, a KS test and a learned noise classifier); the server_nmse_* values in the Metrics "
        "table are the paper's attacks, kept to compare with its Table I, and they understate what a "
        "server can do. Limits: the privacy is empirical, measured against these attacks on the "
        "Fashion-MNIST test set at the stated Sx / Sp, not a formal bound (no differential privacy, "
        "no proof); stronger or better-trained attackers, side information, or several public codes of "
        "the same image may recover more. The support (or the private codes) must be kept secret: whoever "
        "holds it reconstructs the image like the authorized user."
    )

    # threat model of the attack harness (models.attacks, scripts/attack.py): what a curious server sees
    attack_surface = ("reconstruction", "attribute_inference", "distinguishability")
    attack_settings = {"sx": (16,), "sp": (8, 16, 24, 32)}

    def release(self, x: torch.Tensor, sp: int = 32, sx: int | None = None, generator=None) -> torch.Tensor:
        """What is released: public codes ``[B, maps * L]`` of images ``x`` (encode at ``sx``, ambiguate)."""
        return self.ambiguate(self.encode(x, sx=sx), sp, generator)

    def __init__(
        self,
        in_chans: int = 1,
        image_size: int | list[int] = 28,
        channels: list[int] = [16, 32],  # noqa: B006 (read-only, shown by the CLI)
        extra_convs: int = 0,
        code_maps: int = 1,
        code_length: int = 128,
        sx: int = 16,
        train_sx: list[int] | None = None,
        train_sx_samples: int | None = None,
        ssim_weight: float = 0.0,
        sp: int = 0,
        sq: int = 0,
        ternary: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        transform_epochs: int = 1,
        transform_iterations: int = 5,
        transform_inner_steps: int = 20,
        transform_samples: int = 20000,
        b_fro: float = 0.0,
        b_orth: float = 1.0,
        b_logdet: float = 1.0,
        beta_r: float = 0.1,
        beta: float = 1e-3,
        num_quantiles: int = 129,
        seed: int = 0,
        ambiguation: str = "paper",
        decoy_pool_size: int = 0,
        init_from: str | None = None,
        trainable: str = "all",
        adversary_weight: float = 0.0,
        adversary_sp: int = 32,
        adversary_hidden: int = 512,
        decorrelation_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if isinstance(image_size, int):
            image_size = [image_size, image_size]
        if len(image_size) != 2 or min(image_size) < 1:
            raise ValueError(f"image_size must be a positive int or [H, W], got {image_size!r}")
        scale = 2 ** len(channels)
        if image_size[0] % scale or image_size[1] % scale or not channels:
            raise ValueError(
                f"image_size {image_size} must be divisible by 2 ** len(channels) = {scale} (one halving per "
                "stage); change channels or image_size"
            )
        if code_maps < 1 or code_length < 1:
            raise ValueError(f"code_maps and code_length must be >= 1, got {code_maps}, {code_length}")
        self._check_sx(sx)
        for s in train_sx or []:
            self._check_sx(s)
        self._check_sp(sp, sx)
        self._check_sq(sq, sp)
        if num_quantiles < 2:
            raise ValueError(f"num_quantiles must be >= 2, got {num_quantiles}")
        if ambiguation not in MECHANISMS:
            raise ValueError(f"unknown ambiguation {ambiguation!r}; valid: {MECHANISMS}")
        if decoy_pool_size < 0:
            raise ValueError(f"decoy_pool_size must be >= 0, got {decoy_pool_size}")
        if trainable not in TRAINABLE:
            raise ValueError(f"unknown trainable {trainable!r}; valid: {TRAINABLE}")
        if trainable == "decoder" and not init_from:
            raise ValueError(
                "trainable='decoder' fine-tunes the decoder of a trained model: set init_from to its "
                "checkpoint or zoo folder (a fresh encoder and transform would stay untrained)"
            )
        for name, weight in (
            ("adversary_weight", adversary_weight),
            ("decorrelation_weight", decorrelation_weight),
        ):
            if weight < 0:
                raise ValueError(f"{name} must be >= 0 (0: the paper, off), got {weight}")
            if weight and trainable != "all":
                raise ValueError(
                    f"{name} > 0 trains the encoder: it needs trainable='all' (a decoder fine-tune keeps the "
                    "codes fixed)"
                )
        if adversary_weight:
            self._check_sp(adversary_sp, sx)
        self._image_hw = (int(image_size[0]), int(image_size[1]))
        maps, length = code_maps, code_length
        self.encoder = ConvEncoder(in_chans, self._image_hw, channels, maps, length, extra_convs)
        self.decoder = ConvDecoder(in_chans, self._image_hw, channels, maps, length, extra_convs)
        if trainable == "decoder":
            self.encoder.requires_grad_(False)
        # the adversarial inverter (no module, no state-dict key, at the paper's adversary_weight = 0)
        self.adversary = None
        if adversary_weight:
            pixels = in_chans * self._image_hw[0] * self._image_hw[1]
            self.adversary = mlp_inverter(maps * length, pixels, adversary_hidden)
        eye = torch.eye(length).expand(maps, length, length).clone()
        self.register_buffer("transform", eye.clone())  # W per map, [maps, L, N]
        self.register_buffer("reconstruct", eye.clone())  # R per map, [maps, N, L]
        normal = torch.special.ndtri(quantile_grid(num_quantiles).clamp(1e-5, 1 - 1e-5)).float()
        self.register_buffer("quantiles", normal.expand(maps, length, num_quantiles).clone())
        self.register_buffer("ratios", torch.full((maps, length, num_quantiles), 0.9))  # gap ratios
        self.register_buffer("threshold", torch.zeros(maps))
        self.register_buffer("ternary_scale", torch.ones(maps, length))
        self.register_buffer("refits", torch.zeros((), dtype=torch.long))
        # real codes of the decoy mechanism; no buffer (and no state-dict key) without a pool
        pool = torch.zeros(decoy_pool_size, maps, length) if decoy_pool_size else None
        self.register_buffer("decoy_pool", pool)
        self._epoch_features: list[torch.Tensor] = []
        self._initialised = False  # init_from applied (or weights restored from a checkpoint)
        self.transform_history: list[float] = []
        # one collection per stage (torchmetrics syncs them across DDP ranks), logged as "<stage>/<name>"
        metrics = {"nmse": NMSE(), "ssim": StructuralSimilarityIndexMeasure(data_range=1.0)}
        metrics |= {f"server_nmse_{attack}": NMSE() for attack in SERVER_ATTACKS}
        self.val_metrics = MetricCollection(metrics, prefix="val/", compute_groups=False)
        self.test_metrics = self.val_metrics.clone(prefix="test/")

    # ------------------------------------------------------------------------------------------------
    # checks
    # ------------------------------------------------------------------------------------------------
    def _check_sx(self, sx: int) -> None:
        length = self.hparams.code_length
        if not 1 <= sx <= length:
            raise ValueError(
                f"Sx={sx} must be in [1, L={length}] (Sx > L is impossible); use sx <= code_length"
            )

    def _check_sp(self, sp: int, sx: int) -> None:
        length = self.hparams.code_length
        if not 0 <= sp <= length - sx:
            raise ValueError(
                f"Sp={sp} must be in [0, L - Sx = {length - sx}]: the noise goes on the complement of the "
                "support; lower sp (full ambiguation is sp = L - sx)"
            )

    @staticmethod
    def _check_sq(sq: int, sp: int) -> None:
        if not 0 <= sq <= sp:
            raise ValueError(f"Sq={sq} must be in [0, Sp={sp}] (eq. 5: queries get at most Sp noise entries)")

    def check_images(self, x: torch.Tensor) -> None:
        """Raises ``ValueError`` unless ``x`` is float ``[B, C, H, W]`` with this model's C, H, W."""
        c, (h, w) = self.hparams.in_chans, self._image_hw
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 4:
            raise ValueError(
                f"images must be float [B, C, H, W] in [0, 1], got {getattr(x, 'dtype', type(x))} "
                f"{tuple(getattr(x, 'shape', ()))}"
            )
        if tuple(x.shape[1:]) != (c, h, w):
            raise ValueError(
                f"this SCA model was built for images [B, {c}, {h}, {w}], got {tuple(x.shape)}; "
                "resize / convert the images or use the model trained for that size"
            )
        check_finite(x, "images")

    def _check_codes(self, codes: torch.Tensor, name: str = "codes") -> torch.Tensor:
        d = self.code_dim
        if not isinstance(codes, torch.Tensor) or codes.dim() != 2 or codes.shape[1] != d:
            raise ValueError(
                f"{name} must be [B, maps * L = {d}] for this model, "
                f"got {tuple(getattr(codes, 'shape', ()))} "
                "(codes from a different model?)"
            )
        check_finite(codes, name)
        return codes.view(codes.shape[0], self.hparams.code_maps, self.hparams.code_length)

    # ------------------------------------------------------------------------------------------------
    # public API
    # ------------------------------------------------------------------------------------------------
    @property
    def code_dim(self) -> int:
        """``maps * L``."""
        return self.hparams.code_maps * self.hparams.code_length

    @property
    def sx(self) -> int:
        return int(self.hparams.sx)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder features ``[B, maps, N]`` of images ``[B, C, H, W]``."""
        self.check_images(x)
        return self.encoder(x)

    def coefficients(self, f: torch.Tensor) -> torch.Tensor:
        """Transform coefficients ``W f`` ``[B, maps, L]`` of features ``[B, maps, N]``.

        Float32 under autocast: the support of eq. (2) and the ambiguation statistics are read off them.
        """
        with float32():
            return torch.einsum("mln,bmn->bml", self.transform, f.float())

    def _quantize(self, a: torch.Tensor) -> torch.Tensor:
        if not self.hparams.ternary:
            return a
        ternary = torch.sign(a) * self.ternary_scale
        return a + (ternary - a).detach()  # straight-through: forward = sign * scale

    def encode(self, x: torch.Tensor, sx: int | None = None) -> torch.Tensor:
        """Sparse codes ``[B, maps * L]`` (zeros off the support) of images ``[B, C, H, W]`` (eq. 2).

        Args:
            x: images in [0, 1].
            sx: sparsity per map; ``None`` = the model's ``sx``.

        Returns:
            ``[B, maps * L]``; ternary models return ``{-1, 0, +1}``.
        """
        sx = self.sx if sx is None else int(sx)
        self._check_sx(sx)
        a = sparsify(self.coefficients(self.features(x)), sx)  # eq. (2)
        if self.hparams.ternary:
            a = torch.sign(a)
        return a.flatten(1)

    def ambiguate(
        self,
        codes: torch.Tensor,
        sp: int,
        generator: torch.Generator | None = None,
        mechanism: str | None = None,
        pool: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Public codes ``[B, maps * L]``: ``sp`` noise entries per map off the support (eq. 4).

        Args:
            codes: ``[B, maps * L]`` sparse codes from :meth:`encode`.
            sp: noise entries per map, ``<= L - Sx``.
            generator: random source (on the codes' device).
            mechanism: ``"paper"`` or ``"decoy"`` (see :data:`MECHANISMS`); ``None`` = the model's
                ``ambiguation``.
            pool: decoy codes ``[N, maps * L]`` for ``"decoy"``; ``None`` = the model's ``decoy_pool``.
        """
        c = self._check_codes(codes)
        sx = int((c != 0).sum(-1).max()) if c.numel() else 0
        self._check_sp(sp, sx)
        mechanism = self.hparams.ambiguation if mechanism is None else mechanism
        if mechanism not in MECHANISMS:
            raise ValueError(f"unknown ambiguation mechanism {mechanism!r}; valid: {MECHANISMS}")
        if mechanism == "decoy":
            pool = self.decoy_pool if pool is None else self._check_pool(pool)
            return decoy_ambiguate(c, sp, pool, generator).flatten(1)
        public = ambiguate_codes(
            c, sp, self.quantiles, self.ratios, generator, bool(self.hparams.ternary), self.threshold
        )
        return public.flatten(1)

    def _check_pool(self, pool: torch.Tensor) -> torch.Tensor:
        if not isinstance(pool, torch.Tensor) or pool.dim() != 2 or pool.shape[1] != self.code_dim:
            raise ValueError(
                f"the decoy pool must be codes [N, maps * L = {self.code_dim}] of this model, got "
                f"{tuple(getattr(pool, 'shape', ()))} (a pool from another model?); build it with "
                "model.encode(training_images)"
            )
        check_finite(pool, "decoy pool codes")
        return pool.view(pool.shape[0], self.hparams.code_maps, self.hparams.code_length)

    @torch.no_grad()
    def set_decoy_pool(self, codes: torch.Tensor) -> None:
        """Stores ``decoy_pool_size`` real codes ``[N, maps * L]`` (N >= the pool size; the first rows).

        The pool is the data owner's secret (a server holding it removes the decoys by exact matching):
        build it from images of its own that it never releases.
        """
        pool = self._check_pool(codes)
        size = 0 if self.decoy_pool is None else self.decoy_pool.shape[0]
        if size == 0 or pool.shape[0] < size:
            raise ValueError(
                f"this model holds a decoy pool of {size} codes (decoy_pool_size), got {pool.shape[0]}; "
                "build the model with decoy_pool_size > 0 and give at least that many codes"
            )
        self.decoy_pool.copy_(pool[:size])

    def query(
        self,
        x: torch.Tensor,
        sq: int | None = None,
        sp: int | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Query codes ``q = phi(y) (+) n_q`` (eq. 5) and their support mask, both ``[B, maps * L]``.

        Args:
            x: query images.
            sq: query noise per map, ``<= sp``; ``None`` = the model's ``sq``.
            sp: the database's ambiguation level; ``None`` = the model's ``sp``.
            generator: random source.
        """
        sq = self.hparams.sq if sq is None else sq
        sp = self.hparams.sp if sp is None else sp
        self._check_sq(sq, sp)
        codes = self.encode(x)
        return self.ambiguate(codes, sq, generator), codes != 0

    def purify(self, public: torch.Tensor, support_mask: torch.Tensor) -> torch.Tensor:
        """The authorized user's codes ``[B, maps * L]``: the public code restricted to the true support."""
        self._check_codes(public, "public codes")
        return purify(public, support_mask)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` in [0, 1] from codes ``[B, maps * L]`` (``R a``, then the conv decoder)."""
        a = self._check_codes(codes)
        if self.hparams.ternary:
            a = a * self.ternary_scale
        return self.decoder(torch.einsum("mnl,bml->bmn", self.reconstruct, a))

    def server_attacks(
        self, public: torch.Tensor, sx: int | None = None, sp: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Reconstructions ``[B, C, H, W]`` of a curious server (knows E, W, R, D, Sx, Sp; not the support).

        * ``as_is``: decode the public code unchanged;
        * ``top_sx``: keep the ``Sx`` largest magnitudes per map, decode;
        * ``posterior_mean``: every non-zero is informative with probability ``Sx / (Sx + Sp)``: decode
          the public code times that probability (its mean given the public code, entry-wise).
        """
        p = self._check_codes(public, "public codes")
        sx = self.sx if sx is None else sx
        nnz = (p != 0).sum(-1).clamp(min=1).to(p.dtype)  # Sx + Sp per map
        shrink = (sx / nnz)[..., None]
        return {
            "as_is": self.decode(public),
            "top_sx": self.decode(sparsify(p, sx).flatten(1)),
            "posterior_mean": self.decode((p * shrink).flatten(1)),
        }

    def build_index(self, public_codes: torch.Tensor, **kwargs) -> SupportIntersectionIndex:
        """A :class:`SupportIntersectionIndex` holding ``public_codes`` ``[M, maps * L]``."""
        index = SupportIntersectionIndex(self.code_dim, **kwargs)
        index.add(public_codes)
        return index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Authorized reconstruction ``decode(encode(x))`` ``[B, C, H, W]``."""
        return self.decode(self.encode(x))

    def visualize(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Image batches for :class:`callbacks.ImageGridLogger` (authorized and curious-server views)."""
        x = batch["image"]
        codes = self.encode(x)
        out = {"authorized": self.decode(codes)}
        sp = self.hparams.sp or (self.hparams.code_length - self.sx) // 2
        g = torch.Generator(device=x.device).manual_seed(self.hparams.seed)
        public = self.ambiguate(codes, sp, g)
        for name, images in self.server_attacks(public).items():
            out[f"server_{name}_sp{sp}"] = images
        return out

    # ------------------------------------------------------------------------------------------------
    # the transform stage (eqs. 1 and 3) and the ambiguation statistics
    # ------------------------------------------------------------------------------------------------
    def _strategy(self):
        trainer = self._trainer
        return trainer.strategy if trainer is not None and trainer.world_size > 1 else None

    @torch.no_grad()
    def refit(self, features: torch.Tensor, refit_transform: bool = True) -> None:
        """The transform stage: refit ``W`` (eq. 1) and ``R`` (eq. 3), then the ambiguation statistics.

        Args:
            features: ``[M, maps, N]`` encoder features (this rank's share).
            refit_transform: ``False`` refreshes only the statistics (``W``, ``R`` kept).
        """
        hp = self.hparams
        strategy = self._strategy()
        features = features.to(self.transform.device, self.transform.dtype)
        if refit_transform:
            for m in range(hp.code_maps):
                x = features[:, m]
                w, history = fit_transform(
                    x,
                    hp.sx,
                    self.transform[m],
                    hp.transform_iterations,
                    hp.b_fro,
                    hp.b_orth,
                    hp.b_logdet,
                    hp.transform_inner_steps,
                    strategy,
                )
                self.transform[m] = w
                codes = sparsify(x @ w.T, hp.sx)
                self.reconstruct[m] = closed_form_decoder(w, codes, x, hp.beta_r, hp.beta, strategy)
                self.transform_history = history
            self.refits += 1
        coeff = self.coefficients(features)  # [M, maps, L]
        a = sparsify(coeff, hp.sx)
        support = a != 0
        world = 1 if strategy is None else self._trainer.world_size

        def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
            return t if strategy is None else strategy.reduce(t, reduce_op="sum") / world

        q = value_quantiles(coeff.flatten(1), hp.num_quantiles).view(hp.code_maps, hp.code_length, -1)
        self.quantiles.copy_(mean_over_ranks(q))
        self.ratios.copy_(mean_over_ranks(gap_ratios(coeff, hp.num_quantiles)))
        self.threshold.copy_(mean_over_ranks(a.abs().masked_fill(~support, float("inf")).amin(-1).mean(0)))
        counts = support.float().sum(0).clamp(min=1)
        self.ternary_scale.copy_(mean_over_ranks(a.abs().sum(0) / counts).clamp(min=1e-3))

    # ------------------------------------------------------------------------------------------------
    # training
    # ------------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x = batch["image"]
        if self.hparams.trainable == "decoder":
            self.encoder.eval()  # its BatchNorm statistics are part of the fixed codes
            # D's too: trained as it is evaluated (batch statistics of a train_sx mix would blend the
            # sparsities' running statistics into ones that fit none of them)
            self.decoder.eval()
        with torch.set_grad_enabled(self.hparams.trainable == "all"):
            f = self.features(x)
            coeff = self.coefficients(f)
        losses = []
        sparsities = list(self.hparams.train_sx or [self.sx])
        k = self.hparams.train_sx_samples
        if k is not None and k < len(sparsities):
            sparsities = [sparsities[i] for i in torch.randperm(len(sparsities))[:k].tolist()]
        for s in dict.fromkeys(sparsities):  # a repeated sparsity is decoded once and weighted by its count
            a = self._quantize(sparsify(coeff, s))
            x_hat = self.decoder(torch.einsum("mnl,bml->bmn", self.reconstruct, a)).float()
            with float32():  # the SSIM term's local statistics are too coarse in bf16
                mse = F.mse_loss(x_hat, x)
                self.log(f"train/mse_sx{s}", mse.detach(), batch_size=x.shape[0])
                if self.hparams.ssim_weight:
                    mse = mse + self.hparams.ssim_weight * (1 - ssim_separable(x_hat, x))
            losses.append(mse * sparsities.count(s))
        loss = torch.stack(losses).sum() / len(sparsities)
        if self.adversary is not None:
            loss = loss + self._adversary_loss(coeff, x)
        if self.hparams.decorrelation_weight:
            corr = coefficient_correlation(coeff)
            self.log("train/coefficient_correlation", corr.detach(), batch_size=x.shape[0])
            loss = loss + self.hparams.decorrelation_weight * corr
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        if self.hparams.trainable == "all":  # a decoder fine-tune keeps E, W, R and the statistics
            self._epoch_features.append(f.detach().float())  # the transform stage (eqs. 1, 3) runs in float32
        return loss

    def _adversary_loss(self, coeff: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Min-max of the adversarial inverter (GRL, as PPL's eq. 13): it minimises its MSE from public codes
        to images, the encoder receives ``-adversary_weight`` times that gradient."""
        hp = self.hparams
        with float32():
            codes = sparsify(coeff.float(), self.sx)
            public = ambiguate_codes(
                codes, hp.adversary_sp, self.quantiles, self.ratios, None, bool(hp.ternary), self.threshold
            ).flatten(1)
            public = public / public.detach().std().clamp(min=1e-6)  # standardised, as the harness's attacker
            x_adv = torch.sigmoid(self.adversary(grad_reverse(public, hp.adversary_weight)))
            mse = F.mse_loss(x_adv.view_as(x), x.float())
        self.log("train/adversary_mse", mse.detach(), batch_size=x.shape[0])
        return mse

    def on_train_epoch_start(self) -> None:
        self._epoch_features = []

    def on_fit_start(self) -> None:
        if self._initialised or self.trainer.ckpt_path is not None or not self.hparams.init_from:
            return
        self._initialised = True
        path = self.hparams.init_from
        state = self.read_state(path, self.device)
        own = self.state_dict()
        # the adversarial inverter is a training device: a fine-tune may add a fresh one or drop it
        state = {k: v for k, v in state.items() if k in own or not k.startswith("adversary.")}
        fresh = {k for k in set(own) - set(state) if k.startswith("adversary.")}
        missing = sorted(set(own) - set(state) - fresh)
        unexpected = sorted(set(state) - set(own))
        shapes = [k for k in own if k in state and state[k].shape != own[k].shape]
        if missing or unexpected or shapes:
            raise ValueError(
                f"init_from={path} does not match this model (missing {missing[:5]}, unexpected "
                f"{unexpected[:5]}, other shapes {shapes[:5]}): it must be an SCA of the same channels, "
                "code_maps, code_length and decoy_pool_size"
            )
        self.load_state_dict(state, strict=not fresh)
        rank_zero_info(f"SCA: loaded {len(state)} tensors from {path} (trainable: {self.hparams.trainable})")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # mid-epoch checkpoints (every_n_train_steps) keep the features the epoch's transform stage needs,
        # so that a resumed run refits W / R on the same features as an uninterrupted one
        if self._epoch_features:
            feats = torch.cat(self._epoch_features)[-self.hparams.transform_samples :]
            checkpoint["sca_epoch_features"] = feats.cpu()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._initialised = True  # restored weights: a later fit must not re-apply init_from
        # Lightning does not call on_train_epoch_start when it resumes mid-epoch
        feats = checkpoint.get("sca_epoch_features")
        self._epoch_features = [feats] if feats is not None else []

    def on_train_start(self) -> None:
        self._epoch_features = [f.to(self.device) for f in self._epoch_features]

    def on_validation_epoch_start(self) -> None:
        # the transform stage runs before the epoch's validation, so that validation and the checkpoint
        # saved after it see the refreshed statistics
        if not self.trainer.sanity_checking and self._epoch_features:
            self._transform_stage()

    def on_train_epoch_end(self) -> None:
        self._transform_stage()  # epochs without validation

    def _transform_stage(self) -> None:
        if not self._epoch_features:
            return
        feats = torch.cat(self._epoch_features)[-self.hparams.transform_samples :]
        self._epoch_features = []
        refit = self.current_epoch < self.hparams.transform_epochs
        self.refit(feats, refit_transform=refit)
        if refit and self.transform_history:
            self.log("train/transform_objective", self.transform_history[-1], sync_dist=False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = self.decoder.parameters() if self.hparams.trainable == "decoder" else self.parameters()
        return torch.optim.Adam(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    # ------------------------------------------------------------------------------------------------
    # evaluation: authorized NMSE / SSIM at sx, curious-server NMSE at sp
    # ------------------------------------------------------------------------------------------------
    def _eval_step(self, batch: dict[str, torch.Tensor], batch_idx: int, metrics: MetricCollection) -> None:
        x = batch["image"]
        codes = self.encode(x)
        x_hat = self.decode(codes).float()
        with float32():
            metrics["nmse"].update(x_hat, x)
            metrics["ssim"].update(x_hat, x)
        if self.hparams.sp > 0:
            g = torch.Generator(device=x.device).manual_seed(self.hparams.seed * 1_000_003 + batch_idx)
            public = self.ambiguate(codes, self.hparams.sp, g)
            for attack, images in self.server_attacks(public).items():
                with float32():
                    metrics[f"server_nmse_{attack}"].update(images.float(), x)

    def _eval_epoch_end(self, metrics: MetricCollection) -> None:
        names = ["nmse", "ssim"] + (
            [f"server_nmse_{a}" for a in SERVER_ATTACKS] if self.hparams.sp > 0 else []
        )
        values = {name: metrics[name].compute() for name in names}
        metrics.reset()
        for name, value in values.items():
            self.log(metrics.prefix + name, value, prog_bar=name in ("nmse", "ssim"))
        if self.hparams.sp > 0:  # the strongest attack
            server = [values[f"server_nmse_{a}"] for a in SERVER_ATTACKS]
            self.log(f"{metrics.prefix}server_nmse", torch.stack(server).min())

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end(self.val_metrics)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end(self.test_metrics)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        codes = self.encode(batch["image"])
        g = torch.Generator(device=codes.device).manual_seed(self.hparams.seed * 1_000_003 + batch_idx)
        return {"index": batch["index"], "codes": codes, "public": self.ambiguate(codes, self.hparams.sp, g)}
