"""PPL: Proactive Privacy-preserving Learning for hashing retrieval, as a LightningModule.

One optimiser step per batch implements Algorithm 1: the generator G and the surrogate hashing network F
are both in one Adam (two parameter groups, lr 1e-4 for G and 1e-3 for F) and minimise
``J = (Jo + Jp) / (n^2 c^2)`` (eq. 14; the terms at the paper's scale, divided by one global constant,
see :mod:`models.ppl.losses`), where the privacy term Jp reaches G through the gradient reversal layer
(eq. 13). So F descends ``Jo + Jp`` and G descends ``Jo - lambda * Jp`` (eq. 12).

Wiring of the game (the reversal applies to the Jp path only)::

    delta = G(x), z = clip(x + delta)                       # eq. 2
    h_x  = F(x)                                             # Jp only
    h_z  = F(z)               -> Jo(h_z)                    # eq. 4, plain gradient to G and F
    h_zr = F(grad_reverse(z)) -> Jp(h_x, h_zr)              # eq. 11, reversed gradient to G only

``h_z`` and ``h_zr`` have the same value; F runs twice on ``z`` so that the two paths reach G with
opposite signs while F gets the plain gradient of both.
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from torchmetrics import MetricCollection
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from models.grl import grad_reverse
from models.hub import PrivzooHubMixin
from models.metrics import HammingMAP, sign_codes
from models.ppl.diversity import (
    check_jpeg_quality,
    check_probability,
    jpeg_straight_through,
    random_resize_pad,
)
from models.ppl.generator import PerturbationGenerator, apply_perturbation, check_epsilon, check_norm
from models.ppl.losses import affinity_loss, objective_scale, privacy_loss, similarity_matrix
from models.ppl.surrogate import HashSurrogate
from models.precision import float32

__all__ = ["PPL"]

# retrieval scenarios of the surrogate: (query domain, database domain), c = clean, a = protected
_SCENARIOS = ("cc", "ca", "ac", "aa")


class PPL(PrivzooHubMixin, L.LightningModule):
    """Generator G + surrogate hashing network F trained by the one-step game of Algorithm 1.

    Consumes the privzoo batch format ``{"image": float [B, C, H, W] in [0, 1], "label": int64 [B],
    "index": int64 [B]}``; validation / test expect the retrieval split (loaders ``[query, database]``).

    Args:
        in_chans: image channels C the generator is built (and checked) for.
        image_size: image height = width, or ``[H, W]``, the generator is checked for.
        bits: code length c of the surrogate.
        generator_channels: the 4 encoder widths of G (paper: 16/32/64/128 Fashion-MNIST,
            64/128/256/512 CIFAR-10).
        surrogate_backbone: ``"ppl_cnn"`` (the paper's 2-conv grayscale net), ``"small_cnn"`` or any timm
            model name (paper for RGB: ``"resnet50"``).
        pretrained: start a timm surrogate backbone from pretrained weights.
        epsilon: per-image l_p budget of the perturbation (eq. 2), > 0.
        norm: ``"inf"``, ``"2"`` or ``"1"``.
        alpha: weight of the SMMD D_s in Jp (eq. 11).
        beta: weight of the similarity loss Js.
        gamma: weight of the matching loss Je.
        lambda_: gradient reversal strength (eq. 13), >= 0.
        lr_generator: Adam learning rate of G.
        lr_surrogate: Adam learning rate of F.
        bandwidth: fixed ``2 sigma^2`` of the SMMD Gaussian kernel; ``None`` = median heuristic.
        lambda_warmup_steps: ramp the reversal strength linearly from 0 to ``lambda_`` over this many
            optimizer steps (not in the paper, which uses a constant lambda = 1: the default 0).
        generator_steps: G steps per F step: F is updated only on every ``generator_steps``-th optimizer
            step (its gradient is dropped on the others, so Adam leaves it and its moments alone), G on
            every step. Algorithm 1 updates both on every step: the default 1.
        fc_init_gain: start of F's fc layer, see :class:`models.ppl.surrogate.HashSurrogate`.
        channels_last: train in the channels-last memory format (weights and batches converted for the fit,
            weights back to the default format after it); ``scripts/bench_ppl.py`` measured ~1.65x faster
            PPL steps on CPU (oneDNN) this way. Same results up to float rounding.
        extra_surrogates: backbones of more surrogates F_2..F_k (``"small_cnn"``, timm names) trained in the
            same game; G plays against their average objective (an ensemble, for transfer to unseen
            victims). Not in the paper: default none. ``hash`` stays the first surrogate's.
        input_diversity: probability per training step that the protected batch F sees on the privacy path
            is randomly shrunk and zero-padded back (DI-FGSM, :mod:`models.ppl.diversity`). Paper: 0.
        jpeg_prob: probability per training step that that batch is JPEG-compressed at ``jpeg_quality``
            with a straight-through gradient, so the perturbation survives JPEG purification. Paper: 0.
        jpeg_quality: libjpeg quality of that compression, in [1, 100].

    Raises:
        ValueError: ``epsilon <= 0``, unknown ``norm``, unknown backbone, bad sizes or weights.
    """

    card_method = (
        "PPL (proactive privacy-preserving learning): a perturbation generator G trained against a "
        "surrogate deep hashing net F through a gradient reversal layer, so released images fool "
        "retrieval models trained on clean or protected data."
    )
    card_paper = "Proactive Privacy-preserving Learning (PPL) against deep hashing retrieval models"
    card_task = "image-to-image"
    card_tags = ("hashing", "adversarial", "image-retrieval")
    card_usage = "z = model.protect(x)  # x: float [B, 1, 28, 28] in [0, 1] -> protected z, same shape"
    card_threat_model = (
        "Threat: a curious party crawls the released (protected) images and trains or queries a deep "
        "hashing retrieval model with them, or purifies them first (JPEG, median / Gaussian blur, "
        "bit-depth reduction). It knows the method but not the generator's weights, sees the released "
        "images, and trains its own victims (ADSH, DSDH, a classification-hash CNN, a timm backbone, an "
        "MLP) on clean (C) or protected (A) training images, and clean-trained deep-metric-learning "
        "embeddings (Proxy-Anchor, SoftTriple, CHEST-style; one is used only where its clean mAP reaches "
        "the ADSH victim's). Protection: every image is moved by at most "
        "epsilon in the l_p norm (eq. 2) so that retrieval across the clean and protected domains degrades "
        "for every victim, and within the protected domain for clean-trained ones; a victim trained on "
        "protected images still searches among protected images (A->A, the paper's 'normal use', counted "
        "as utility). The headline privacy numbers are the WORST CASE of the 'Privacy under attack' table "
        "(scripts/attack.py, plus the Table 1 victims at every code length that scripts/ppl_table.py "
        "--card adds as table1_* rows: the least private mAP and cross/clean mAP ratio over victims, "
        "training domains, purifications and every scenario outside the victim's own training domain); the "
        "Metrics table's ADSH rows are the paper's protocol, kept for comparison. Limits: the privacy is "
        "empirical, at the stated epsilon, not a formal bound (this is not differential privacy); other "
        "architectures, adaptive attackers (e.g. adversarial training, denoisers) or larger training sets "
        "may recover more utility from protected images."
    )

    # threat model of the attack harness (models.attacks, scripts/attack.py): a crawler of released images
    attack_surface = ("retrieval",)
    attack_settings = {}

    def release(self, x: torch.Tensor) -> torch.Tensor:
        """What is released: the protected images of ``x`` (:meth:`protect`; 8-bit rounding by the caller)."""
        return self.protect(x)

    def __init__(
        self,
        in_chans: int = 1,
        image_size: int | list[int] = 28,
        bits: int = 16,
        generator_channels: list[int] = [16, 32, 64, 128],  # noqa: B006 (read-only, shown by the CLI)
        surrogate_backbone: str = "ppl_cnn",
        pretrained: bool = False,
        epsilon: float = 0.3,
        norm: Literal["inf", "2", "1"] = "inf",
        alpha: float = 1.0,
        beta: float = 10.0,
        gamma: float = 1.0,
        lambda_: float = 1.0,
        lr_generator: float = 1e-4,
        lr_surrogate: float = 1e-3,
        bandwidth: float | None = None,
        lambda_warmup_steps: int = 0,
        generator_steps: int = 1,
        fc_init_gain: float | None = 5.0,
        channels_last: bool = False,
        extra_surrogates: list[str] = [],  # noqa: B006 (read-only, shown by the CLI)
        input_diversity: float = 0.0,
        jpeg_prob: float = 0.0,
        jpeg_quality: int = 75,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_epsilon(epsilon)
        check_norm(norm)
        if isinstance(image_size, int):
            image_size = [image_size, image_size]
        if len(image_size) != 2 or min(image_size) < 1:
            raise ValueError(f"image_size must be a positive int or [H, W], got {image_size!r}")
        self._image_hw = (int(image_size[0]), int(image_size[1]))
        for name in ("alpha", "beta", "gamma", "lambda_", "lr_generator", "lr_surrogate"):
            if getattr(self.hparams, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self.hparams, name)}")
        if lambda_warmup_steps < 0:
            raise ValueError(f"lambda_warmup_steps must be >= 0, got {lambda_warmup_steps}")
        if int(generator_steps) != generator_steps or generator_steps < 1:
            raise ValueError(
                f"generator_steps (G steps per surrogate step) must be an integer >= 1, "
                f"got {generator_steps}; 1 is the paper's Algorithm 1"
            )
        if bandwidth is not None and bandwidth <= 0:
            raise ValueError(f"bandwidth must be > 0 or None (median heuristic), got {bandwidth}")
        check_probability("input_diversity", input_diversity)
        check_probability("jpeg_prob", jpeg_prob)
        check_jpeg_quality(jpeg_quality)
        self.generator = PerturbationGenerator(in_chans, generator_channels, epsilon=epsilon, norm=norm)
        self.surrogate = HashSurrogate(
            in_chans, bits, backbone=surrogate_backbone, pretrained=pretrained, fc_init_gain=fc_init_gain
        )
        self.extra_surrogates = torch.nn.ModuleList(
            HashSurrogate(in_chans, bits, backbone=name, pretrained=pretrained, fc_init_gain=fc_init_gain)
            for name in extra_surrogates
        )
        # one collection per stage: a mAP per scenario, PSNR / SSIM (torchmetrics syncs them across DDP ranks)
        metrics = {f"map_{scenario}": HammingMAP() for scenario in _SCENARIOS}
        metrics |= {
            "psnr": PeakSignalNoiseRatio(data_range=1.0),
            "ssim": StructuralSimilarityIndexMeasure(data_range=1.0),
        }
        self.val_metrics = MetricCollection(metrics, prefix="val/", compute_groups=False)
        self.test_metrics = self.val_metrics.clone(prefix="test/")

    # ------------------------------------------------------------------------------------------------
    # public API
    # ------------------------------------------------------------------------------------------------
    @property
    def epsilon(self) -> float:
        return float(self.hparams.epsilon)

    @property
    def norm(self) -> str:
        return check_norm(self.hparams.norm)

    @property
    def bits(self) -> int:
        return int(self.hparams.bits)

    def current_lambda(self) -> float:
        """Reversal strength at the current step: ``lambda_``, ramped up during ``lambda_warmup_steps``."""
        warmup = self.hparams.lambda_warmup_steps
        if warmup <= 0:
            return float(self.hparams.lambda_)
        step = self._trainer.global_step if self._trainer is not None else 0
        return float(self.hparams.lambda_) * min(1.0, step / warmup)

    def check_images(self, x: torch.Tensor) -> None:
        """Raises ``ValueError`` unless ``x`` is float [B, C, H, W] in [0, 1] with this model's C, H, W."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise ValueError(f"images must be a float tensor in [0, 1], got {getattr(x, 'dtype', type(x))}")
        c, (h, w) = self.hparams.in_chans, self._image_hw
        if x.dim() != 4:
            raise ValueError(f"images must be [B, C, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != c:
            raise ValueError(f"this PPL model was built for {c}-channel images, got {x.shape[1]} channels")
        if tuple(x.shape[-2:]) != (h, w):
            raise ValueError(f"this PPL model was built for {h}x{w} images, got {x.shape[-2]}x{x.shape[-1]}")
        if x.numel() and bool((~((x >= 0) & (x <= 1))).any()):
            raise ValueError(
                f"images must lie in [0, 1] (got min {x.min().item():.4g}, max {x.max().item():.4g}); "
                "divide uint8 images by 255"
            )

    def perturbation(self, x: torch.Tensor) -> torch.Tensor:
        """The bounded generator output ``G(x)`` [B, C, H, W] (before the [0, 1] projection)."""
        self.check_images(x)
        return self.generator(x)

    def protect(self, x: torch.Tensor) -> torch.Tensor:
        """Protected images ``z = clip(x + G(x), 0, 1)`` [B, C, H, W] for images ``x`` [B, C, H, W] in [0, 1].

        ``||z_i - x_i||_p <= epsilon`` holds for every image (eq. 2).
        """
        return apply_perturbation(x, self.perturbation(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`protect`."""
        return self.protect(x)

    def hash(self, x: torch.Tensor) -> torch.Tensor:
        """Surrogate binary codes ``sign(F(x))`` [B, bits] in ``{-1, +1}`` (eq. 3) of images in [0, 1]."""
        self.check_images(x)
        return sign_codes(self.surrogate(x))

    def visualize(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Images for :class:`callbacks.ImageGridLogger`, all [B, C, H, W] in [0, 1].

        ``perturbation`` shows ``z - x`` mapped to ``0.5 + 0.5 * (z - x) / scale`` with ``scale = epsilon``
        for l_inf, and each image's own ``max |z - x|`` for l2 / l1 (whose budget is per image, not per
        pixel).
        """
        x = batch["image"]
        z = self.protect(x)
        delta = z - x
        if self.norm == "inf":
            scale = torch.full((x.shape[0], 1, 1, 1), self.epsilon, device=x.device, dtype=x.dtype)
        else:
            scale = delta.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-12)
        return {"protected": z, "perturbation": (delta * 0.5 / scale + 0.5).clamp(0, 1)}

    # ------------------------------------------------------------------------------------------------
    # the game
    # ------------------------------------------------------------------------------------------------
    def compute_losses(
        self, x: torch.Tensor, labels: torch.Tensor, reverse: bool = True
    ) -> dict[str, torch.Tensor]:
        """All terms of the objective for one batch.

        Args:
            x: clean images [B, C, H, W] in [0, 1].
            labels: class ids [B] or multi-hot [B, L].
            reverse: route the Jp path through the gradient reversal layer (training). ``False`` gives the
                plain losses (same values), e.g. to inspect their separate gradients.

        Returns:
            ``{"loss": scale * (Jo + Jp), "scale", "jo", "jp", "ds", "ds_pos", "ds_neg", "js", "je",
            "bandwidth", "z", "h_x"}`` (the terms at the paper's scale, ``scale = 1 / (n^2 c^2)`` the one
            global normaliser, ``z`` the protected images, ``h_x`` the clean relaxed codes). The gradient
            of ``loss`` is ``scale`` times that of ``Jo + Jp`` for F and of ``Jo - lambda * Jp`` for G when
            ``reverse`` (eq. 14).
        """
        hp = self.hparams
        z = apply_perturbation(x, self.generator(x))  # eq. 2
        s = similarity_matrix(labels).float()
        # eq. 13: G <- F only through the reversal on the Jp path
        z_p = grad_reverse(z, self.current_lambda()) if reverse else z
        if self.training:
            z_p = self._diversify(z_p)
        terms = []
        for surrogate in (self.surrogate, *self.extra_surrogates):
            h_z = surrogate(z).float()
            h_zr = surrogate(z_p).float() if (reverse or z_p is not z) else h_z
            h_x = surrogate(x).float()
            with float32():  # pairwise affinities and the SMMD's Gaussian kernels, too coarse in bf16
                jo = affinity_loss(h_z, s)
                t = privacy_loss(h_x, h_zr, s, hp.alpha, hp.beta, hp.gamma, hp.bandwidth)
            t["jo"], t["h_x"] = jo, h_x
            terms.append(t)
        # an ensemble plays the average objective; one surrogate: its own terms
        out = {k: sum(t[k] for t in terms) / len(terms) for k in terms[0] if k != "h_x"}
        h_x = terms[0]["h_x"]
        # eq. 14: J = Jo + Jp, minimised jointly (one step); one global constant keeps it O(1)
        scale = objective_scale(x.shape[0], h_x.shape[1])
        out["scale"] = torch.tensor(scale, dtype=out["jo"].dtype, device=out["jo"].device)
        out["loss"] = scale * (out["jo"] + out["jp"])
        out["z"], out["h_x"] = z, h_x
        return out

    def _diversify(self, z: torch.Tensor) -> torch.Tensor:
        """The options' random transforms of the batch F sees on the privacy path (identity by default)."""
        hp = self.hparams
        if hp.input_diversity > 0 and float(torch.rand(())) < hp.input_diversity:
            z = random_resize_pad(z)
        if hp.jpeg_prob > 0 and float(torch.rand(())) < hp.jpeg_prob:
            z = jpeg_straight_through(z, hp.jpeg_quality)
        return z

    def on_fit_start(self) -> None:
        if self.hparams.channels_last:
            self.to(memory_format=torch.channels_last)

    def on_fit_end(self) -> None:
        if self.hparams.channels_last:
            # the default format again: exports (safetensors) and inference see ordinary contiguous weights
            self.to(memory_format=torch.contiguous_format)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x = batch["image"]
        self.check_images(x)
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.compute_losses(x, batch["label"])
        n = x.shape[0]
        for key in ("loss", "jo", "jp", "ds", "ds_pos", "ds_neg", "js", "je", "bandwidth"):
            self.log(f"train/{key}", out[key].detach(), prog_bar=key == "loss", batch_size=n)
        with torch.no_grad():
            delta = (out["z"] - x).flatten(1)
            self.log("train/delta_linf", delta.abs().amax(1).mean(), batch_size=n)
            self.log("train/delta_l2", delta.norm(dim=1).mean(), batch_size=n)
            # mean |tanh code| of the clean images: ~0 flags a collapsed surrogate (see losses.py)
            self.log("train/code_abs", out["h_x"].abs().mean(), batch_size=n)
            self.log("train/lambda", self.current_lambda(), batch_size=n)
        return out["loss"]

    def surrogate_updates_at(self, step: int) -> bool:
        """Whether F takes optimizer step ``step`` (0-based): every ``generator_steps``-th one, from 0."""
        return step % int(self.hparams.generator_steps) == 0

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # k G steps per F step: drop F's (already DDP-reduced) gradient on the other k - 1 steps;
        # Adam skips parameters whose grad is None, moments included
        if not self.surrogate_updates_at(self.trainer.global_step):
            for p in (*self.surrogate.parameters(), *self.extra_surrogates.parameters()):
                p.grad = None

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # Algorithm 1 in one step: both players in one Adam, the GRL flips G's Jp gradient
        return torch.optim.Adam(
            [
                {"params": self.generator.parameters(), "lr": self.hparams.lr_generator},
                {
                    "params": [*self.surrogate.parameters(), *self.extra_surrogates.parameters()],
                    "lr": self.hparams.lr_surrogate,
                },
            ]
        )

    # ------------------------------------------------------------------------------------------------
    # evaluation: surrogate mAP in the 4 scenarios, PSNR / SSIM of the protected queries
    # ------------------------------------------------------------------------------------------------
    def _eval_step(
        self, batch: dict[str, torch.Tensor], dataloader_idx: int, metrics: MetricCollection
    ) -> None:
        x, labels, index = batch["image"], batch["label"], batch["index"]
        z = self.protect(x)
        clean, protected = self.hash(x), self.hash(z)
        role = "query" if dataloader_idx == 0 else "database"
        for scenario in _SCENARIOS:
            domain = scenario[0] if role == "query" else scenario[1]
            metrics[f"map_{scenario}"].update(
                clean if domain == "c" else protected, labels, role=role, index=index
            )
        if role == "query":
            for name in ("psnr", "ssim"):
                with float32():
                    metrics[name](z.float(), x.float())
                self.log(
                    metrics.prefix + name, metrics[name], add_dataloader_idx=False, batch_size=x.shape[0]
                )

    def _eval_epoch_end(self, metrics: MetricCollection) -> None:
        values = {}
        for scenario in _SCENARIOS:
            metric = metrics[f"map_{scenario}"]
            if metric.query_codes and metric.db_codes:  # both loaders of the retrieval split ran
                values[scenario] = metric.compute().float()
            metric.reset()
        for scenario, value in values.items():
            self.log(f"{metrics.prefix}map_{scenario}", value, prog_bar=scenario in ("cc", "ac"))
        if "cc" in values and "ac" in values:
            # utility kept on clean data minus what survives the protection: higher = better protector
            self.log(f"{metrics.prefix}map_gap", values["cc"] - values["ac"])

    def validation_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_step(batch, dataloader_idx, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end(self.val_metrics)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx, self.test_metrics)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end(self.test_metrics)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return {"index": batch["index"], "label": batch["label"], "protected": self.protect(batch["image"])}
