"""DPFE as one LightningModule run three times (Procedure 1): attribute model -> Simple -> DPFE.

* ``stage="attribute"``: the attribute model M0 = backbone + z head, trained with sigmoid cross-entropy.
* ``stage="simple"``: M1 = M0 with the linear AE bottleneck (to ``feature_dim``, non-affine BatchNorm on the
  hidden layer) embedded at the ``cut`` layer (section 4.1/4.2); on fit start it loads M0 from ``init_from``
  and initialises the AE with PCA of the cut layer's outputs on training images; then fine-tuned on z.
* ``stage="dpfe"``: loads Simple from ``init_from`` and fine-tunes with eq. (7): the z loss plus
  ``remover_weight`` x the contrastive y-remover (margin ``margin``, inverted pair label) on pairs built
  INSIDE each batch (all B(B-1)/2 pairs of the batch; the batch is shuffled, so these are pairs of
  independent samples as in Fig. 4).

z and y come from the batch by ``dataset`` (see :mod:`models.dpfe.attributes`): Fashion-MNIST z = the
attribute set's coarse attributes of ``label``, y = ``label`` (10 classes); CelebA z = ``label`` (the
datamodule's ``attributes`` must be the set's), y = ``identity``.

Public API: :meth:`DPFE.extract` ``x -> f [B, d]`` (the private feature, the client side),
:meth:`DPFE.predict` ``x -> z logits [B, K]``, :meth:`DPFE.predict_from_features` ``f -> z logits`` (the
server side, used by the noise procedure).
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics import MeanMetric

from models.backbones import create_backbone
from models.dpfe.attributes import attribute_names, fashion_mnist_attribute_table
from models.dpfe.losses import attribute_loss, check_features, y_remover_loss
from models.dpfe.networks import LinearBottleneck, chain_layers, split_at
from models.dpfe.privacy import ESTIMATORS, IdentityPrivacy
from models.grl import grad_reverse
from models.hub import PrivzooHubMixin
from models.precision import float32

__all__ = ["DPFE", "STAGES"]

STAGES = ("attribute", "simple", "dpfe")


class DPFE(PrivzooHubMixin, L.LightningModule):
    """Deep private-feature extractor: feature extractor | AE bottleneck | z-predictor, + y-remover.

    Batches: the privzoo format (``image`` float ``[B, C, H, W]`` in [0, 1]; ``label``; CelebA also
    ``identity``).

    Args:
        stage: ``"attribute"``, ``"simple"`` or ``"dpfe"`` (Procedure 1, see the module docstring).
        dataset: ``"fashion_mnist"`` or ``"celeba"``: where z and y come from.
        attribute_set: z's attribute set name (Fashion-MNIST ``F``/``FU``/``FUW``;
            CelebA ``G`` ... ``GASLN``).
        in_chans: image channels C.
        image_size: image height = width (builds the bottleneck for the cut's output shape).
        backbone: ``"small_cnn"`` or a chain-structured timm model name.
        pretrained: timm pretrained weights for the attribute stage.
        cut: the last layer of the feature extractor (``ValueError`` lists the valid names).
        feature_dim: d, size of the private feature (paper: 10).
        remover_weight: beta-weight of the y-remover (reference code: 0.01); only used by ``stage="dpfe"``.
        margin: contrastive margin (reference code: 10).
        remover: ``"contrastive"`` (the paper's eq. 7) or ``"adversarial"`` (beyond the paper: a y-classifier
            on the features, trained through the gradient reversal layer, so the extractor maximises its
            loss while it minimises it; ``remover_weight`` is the reversal strength).
        adversary_hidden: hidden widths of the adversarial y-classifier (an MLP; ``[]`` = linear).
        adversary_lr: Adam learning rate of the adversarial y-classifier (it must keep up with the extractor).
        feature_noise: beyond the paper (0 = the paper's deterministic feature): standard deviation s of the
            Gaussian channel noise N(0, s^2 I) the extractor adds to its standardised private feature, in
            training and at every release (a noisy-channel information bottleneck: with unit-variance
            features, the z loss through the noise spends the variance on z and squeezes out the rest).
            Procedure 2's noise N(0, r C) comes on top of it.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        init_from: checkpoint of the previous stage loaded on fit start (``None``: start from scratch).
        pca_samples: number of training images whose cut outputs initialise the AE by PCA.
        num_identities: c_y for the privacy metrics; ``None`` = from the data (10 for Fashion-MNIST, the
            CelebA datamodule's ``num_identities``).
        privacy_estimator: ``"kde"`` or ``"knn"`` estimate of p(y|f) (:mod:`models.dpfe.privacy`).
        privacy_k: k of the ``"knn"`` estimator.
    """

    card_method = (
        "DPFE (deep private-feature extraction): the client runs a feature extractor whose low-dimensional "
        "private feature (a linear auto-encoder bottleneck in the middle of an attribute classifier) keeps "
        "the approved primary attributes z and is fine-tuned with a contrastive y-remover to drop the "
        "sensitive variable y; the server predicts z from it. `stage` says which model of Procedure 1 "
        "this is: `attribute` (no bottleneck), `simple` (bottleneck, z loss only: the paper's Simple "
        "baseline) or `dpfe` (z loss + y-remover, eq. 7)."
    )
    card_paper = (
        "S. A. Osia, A. Taheri, A. S. Shamsabadi, K. Katevas, H. Haddadi, H. R. Rabiee: "
        "Deep Private-Feature Extraction (2018)"
    )
    card_task = "image-feature-extraction"
    card_tags = ("private-features", "feature-extraction", "log-rank-privacy", "attribute-prediction")
    card_usage = (
        "f = model.extract(x)  # x: float [B, 1, 28, 28] in [0, 1] -> private features [B, 10]; "
        "model.predict_from_features(f) -> z logits [B, K]"
    )
    card_threat_model = (
        "Threat: the user sends the private feature f = model.extract(x) to an honest-but-curious service "
        "provider that should learn the primary attributes z but tries to infer the sensitive variable y "
        "(CelebA: the identity; Fashion-MNIST, the privzoo analogue: the 10-way class, with z = coarse "
        "attributes of the class such as footwear / upper body). The provider knows the extractor (it can "
        "run it on images of its own), sees the features of the evaluated images, and trains its "
        "attackers on labelled images of other people (the training split), disjoint from the evaluated "
        "test images. The headline privacy numbers are the WORST CASE of the 'Privacy under attack' table "
        "(scripts/attack.py: linear / MLP / k-NN probes of the class with their log-rank privacy, learned "
        "MLP / conv reconstructions of the image); the Metrics table's lrp / nn_error are the paper's KDE "
        "/ 1-NN measures, kept for comparison. On Fashion-MNIST z is a function of y, so an attacker who "
        "knew z exactly and nothing else would guess the class with accuracy (distinct attribute vectors) "
        "/ 10: 0.2 for F, 0.3 for FU, 0.5 for FUW -- the floor that a perfect extractor reaches. "
        "Protection: the y-remover (eq. 7, or the adversarial remover beyond the paper), a model's own "
        "channel noise when its config.json has feature_noise s > 0 (beyond the paper: the client adds "
        "N(0, s^2 I) to every release, and the extractor was trained through that channel; the attackers "
        "see one release per evaluated image and train on their own, independently drawn releases) and "
        "Gaussian noise N(0, r C) on f (Procedure 2). Limits: the privacy is **empirical**, not a formal "
        "bound (no differential-privacy epsilon); stronger attackers, more auxiliary data or "
        "averaging repeated noisy releases of one image can recover more. The `simple` stage has no "
        "y-remover at all: it is the baseline, not a privacy model."
    )

    # threat model of the attack harness (models.attacks, scripts/attack.py): the service provider's view
    attack_surface = ("reconstruction", "attribute_inference")
    attack_settings = {}

    def release(self, x: torch.Tensor) -> torch.Tensor:
        """What is released: the private features ``[B, d]`` of images ``x`` (:meth:`extract`)."""
        return self.extract(x)

    def __init__(
        self,
        stage: Literal["attribute", "simple", "dpfe"] = "dpfe",
        dataset: Literal["fashion_mnist", "celeba"] = "fashion_mnist",
        attribute_set: str = "FU",
        in_chans: int = 1,
        image_size: int = 28,
        backbone: str = "small_cnn",
        pretrained: bool = False,
        cut: str = "features.9",
        feature_dim: int = 10,
        remover_weight: float = 0.01,
        margin: float = 10.0,
        remover: Literal["contrastive", "adversarial"] = "contrastive",
        adversary_hidden: list[int] = [64, 64],  # noqa: B006 (read-only, shown by the CLI)
        adversary_lr: float = 1e-3,
        feature_noise: float = 0.0,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        init_from: str | None = None,
        pca_samples: int = 10000,
        num_identities: int | None = None,
        privacy_estimator: str = "kde",
        privacy_k: int = 10,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; valid: {', '.join(STAGES)}")
        if privacy_estimator not in ESTIMATORS:
            raise ValueError(
                f"unknown privacy_estimator {privacy_estimator!r}; valid: {', '.join(ESTIMATORS)}"
            )
        if remover_weight < 0 or margin <= 0:
            raise ValueError(f"need remover_weight >= 0 and margin > 0, got {remover_weight}, {margin}")
        if feature_noise < 0 or (feature_noise > 0 and stage == "attribute"):
            raise ValueError(
                f"feature_noise must be >= 0 and needs the bottleneck (stage simple / dpfe), got "
                f"{feature_noise} with stage={stage!r}"
            )
        if remover not in ("contrastive", "adversarial"):
            raise ValueError(f"unknown remover {remover!r}; valid: contrastive (the paper's), adversarial")
        self.attribute_names = attribute_names(dataset, attribute_set)
        k = len(self.attribute_names)
        if dataset == "fashion_mnist":
            self.register_buffer(
                "z_table", fashion_mnist_attribute_table(self.attribute_names), persistent=False
            )
        self.backbone = create_backbone(backbone, in_chans=in_chans, pretrained=pretrained)
        probe = torch.rand(2, in_chans, image_size, image_size)
        elementary, secondary = split_at(self.backbone, cut, probe)
        # views of self.backbone's layers (not registered twice: the state dict keeps backbone.* names)
        self.__dict__["_elementary"] = elementary
        self.__dict__["_secondary"] = secondary
        self.backbone.eval()
        with torch.no_grad():
            cut_shape = list(elementary(probe).shape[1:])
        self.backbone.train()
        self.cut_shape = cut_shape
        self.bottleneck = (
            LinearBottleneck(int(torch.tensor(cut_shape).prod()), feature_dim, cut_shape)
            if stage != "attribute"
            else None
        )
        self.head = nn.Linear(self.backbone.num_features, k)
        self.adversary = None
        if remover == "adversarial" and stage == "dpfe":
            classes = num_identities or (10 if dataset == "fashion_mnist" else None)
            if classes is None:
                raise ValueError("remover='adversarial' on CelebA needs num_identities (the y classes)")
            widths = [feature_dim, *adversary_hidden]
            layers: list[nn.Module] = []
            for a, b in zip(widths[:-1], widths[1:], strict=True):
                layers += [nn.Linear(a, b), nn.ReLU()]
            self.adversary = nn.Sequential(*layers, nn.Linear(widths[-1], classes))
        # paper footnote 4: mean of the per-attribute accuracies (= mean over all sample x attribute hits)
        self.val_acc = MeanMetric()
        self.test_acc = MeanMetric()
        self._initialised = False  # init_from / PCA done (or weights restored from a checkpoint)
        self.val_privacy: IdentityPrivacy | None = None
        self.test_privacy: IdentityPrivacy | None = None
        if num_identities is not None:
            self._build_privacy(num_identities)

    @staticmethod
    def cut_layers(backbone: str, in_chans: int = 1) -> list[str]:
        """Valid ``cut`` names of a backbone."""
        return [n for n, _ in chain_layers(create_backbone(backbone, in_chans=in_chans))]

    def _build_privacy(self, num_identities: int) -> None:
        hp = self.hparams
        self.val_privacy = IdentityPrivacy(num_identities, hp.privacy_estimator, hp.privacy_k).to(self.device)
        self.test_privacy = IdentityPrivacy(num_identities, hp.privacy_estimator, hp.privacy_k).to(
            self.device
        )

    # ------------------------------------------------------------------ public API
    def check_images(self, x: torch.Tensor) -> None:
        """Raises ``ValueError`` unless ``x`` is float [B, C, H, W] in [0, 1] with this model's C, H, W."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise ValueError(
                f"images must be a float tensor in [0, 1], got {getattr(x, 'dtype', type(x))}; "
                "convert uint8 images with x.float() / 255"
            )
        c, size = self.hparams.in_chans, self.hparams.image_size
        if x.dim() != 4:
            raise ValueError(f"images must be [B, C, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != c:
            raise ValueError(
                f"this DPFE model was built for {c}-channel images, got {x.shape[1]} channels "
                "(convert RGB / grayscale images, or use the model trained for them)"
            )
        if tuple(x.shape[-2:]) != (size, size):
            raise ValueError(
                f"this DPFE model was built for {size}x{size} images, got {x.shape[-2]}x{x.shape[-1]}; "
                "resize the images (a different size silently degrades the features)"
            )
        if x.numel() and bool(((x < 0) | (x > 1)).any()):  # (NaN: check_features names it after extract)
            raise ValueError(
                f"images must lie in [0, 1] (got min {x.min().item():.4g}, max {x.max().item():.4g}); "
                "divide uint8 images by 255"
            )

    def extract(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Private features (the client-side part): images ``[B, C, H, W]`` in [0, 1] -> ``[B, d]``.

        For ``stage="attribute"`` (no bottleneck) this is the flattened cut output ``[B, |L|]``. With
        ``feature_noise > 0`` every call draws fresh channel noise (from ``generator`` or torch's global one).
        :meth:`check_images` rejects another dtype, channel count, size or value range.
        """
        self.check_images(x)
        h = self._elementary(x)
        f = h.flatten(1) if self.bottleneck is None else self.bottleneck.encode(h)
        check_features(f, "private features")
        s = self.hparams.get("feature_noise", 0.0)
        if s > 0:  # beyond the paper: the noisy channel of the information bottleneck
            eps = torch.randn(
                f.shape, generator=generator, dtype=f.dtype, device="cpu" if generator else f.device
            )
            f = f + s * eps.to(f.device)
        return f

    def predict_from_features(self, f: torch.Tensor) -> torch.Tensor:
        """z-predictor (the server side): features ``[B, d]`` -> primary-attribute logits ``[B, K]``."""
        h = f.view(f.shape[0], *self.cut_shape) if self.bottleneck is None else self.bottleneck.decode(f)
        return self.head(self._secondary(h))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Primary-attribute logits ``[B, K]`` of images ``[B, C, H, W]``."""
        return self.predict_from_features(self.extract(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`predict`."""
        return self.predict(x)

    # ------------------------------------------------------------------ batches
    def targets(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z float [B, K], y int64 [B])`` of a batch (see the module docstring)."""
        label = batch["label"]
        if self.hparams.dataset == "fashion_mnist":
            if label.dim() != 1 or label.is_floating_point():
                raise ValueError(
                    "dataset='fashion_mnist' expects class ids label [B], got "
                    f"{label.dtype} {tuple(label.shape)} "
                    "(a CelebA batch? set dataset: celeba)"
                )
            return self.z_table[label], label.long()
        if "identity" not in batch:
            raise ValueError(
                "dataset='celeba' expects batches with an 'identity' entry (use CelebADataModule)"
            )
        if label.dim() != 2 or label.shape[1] != len(self.attribute_names):
            raise ValueError(
                f"CelebA label must be [B, {len(self.attribute_names)}] (the set {self.attribute_names}), "
                f"got {tuple(label.shape)}: set data.attributes to {self.attribute_names}"
            )
        return label.float(), batch["identity"].long()

    # ------------------------------------------------------------------ set-up
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self.hparams.dataset == "celeba" and dm is not None and hasattr(dm, "attribute_names"):
            if list(dm.attribute_names) != self.attribute_names:
                raise ValueError(
                    f"attribute set {self.hparams.attribute_set} = {self.attribute_names} but the datamodule "
                    f"serves {dm.attribute_names}: set data.attributes to {self.attribute_names}"
                )
        if self.val_privacy is None:
            if self.hparams.dataset == "fashion_mnist":
                c = 10
            elif dm is not None and hasattr(dm, "num_identities"):
                c = dm.num_identities
            else:
                raise ValueError(
                    "dataset='celeba' needs num_identities (or a CelebADataModule to read it from)"
                )
            self._build_privacy(c)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # restored weights (resume, load_from_checkpoint): a later fit must not re-run init_from / PCA
        self._initialised = True

    def on_fit_start(self) -> None:
        if self._initialised or self.trainer.ckpt_path is not None:
            return
        self._initialised = True
        loaded_bottleneck = False
        if self.hparams.init_from:
            loaded_bottleneck = self._load_previous_stage(self.hparams.init_from)
        if self.bottleneck is not None and not loaded_bottleneck:
            ratio = self._init_pca()
            rank_zero_info(
                f"DPFE: AE initialised by PCA, {self.hparams.feature_dim} components explain {ratio:.3f}"
            )

    def _load_previous_stage(self, path: str) -> bool:
        """Loads the previous stage's weights (a Lightning checkpoint, or a Hub-layout folder such as a zoo
        checkpoint); returns whether it held the bottleneck too."""
        state = self.read_state(path, self.device)
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if unexpected or any(not k.startswith(("bottleneck.", "adversary.")) for k in missing):
            raise ValueError(
                f"{path} does not match this model (missing {missing[:5]}, unexpected {unexpected[:5]}): "
                "init_from must be a checkpoint of the previous stage with the same backbone, cut, "
                "feature_dim and attribute set"
            )
        shapes = [k for k in state if state[k].shape != own[k].shape]
        if shapes:
            raise ValueError(
                f"{path}: shape mismatch for {shapes[:5]} (different attribute set / feature_dim?)"
            )
        self.load_state_dict(state, strict=False)
        rank_zero_info(f"DPFE: loaded {len(state)} tensors from {path}")
        return not any(k.startswith("bottleneck.") for k in missing)

    @torch.no_grad()
    def _init_pca(self) -> float:
        """PCA of the cut outputs on the first ``pca_samples`` training images (in the train loader's
        seeded order: every DDP rank computes the same; rank 0's result is broadcast to be exact)."""
        dm = self.trainer.datamodule
        if dm is None:
            raise RuntimeError(
                "the PCA initialisation needs a datamodule (trainer.fit(model, datamodule=...))"
            )
        loader = dm.train_dataloader()
        was_training = self.training
        self.eval()
        outs, n = [], 0
        for batch in loader:
            x = batch["image"].to(self.device)
            x = x.float() / 255.0 if not x.is_floating_point() else x
            outs.append(self._elementary(x).flatten(1).cpu())
            n += x.shape[0]
            if n >= self.hparams.pca_samples:
                break
        self.train(was_training)
        h = torch.cat(outs)[: self.hparams.pca_samples]
        ratio = self.bottleneck.init_pca(h)
        for tensor in self.bottleneck.state_dict().values():
            tensor.copy_(self.trainer.strategy.broadcast(tensor.clone(), src=0).to(tensor.device))
        return float(ratio)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        z, y = self.targets(batch)
        f = self.extract(batch["image"])
        z_loss = attribute_loss(self.predict_from_features(f), z)  # eq. (7), first term
        loss = z_loss
        if self.hparams.stage == "dpfe" and self.adversary is not None:
            # beyond the paper: min over the adversary, max over the extractor of its y cross-entropy; the
            # adversary sees batch-standardised features, as an attacker's probe does, so that rescaling f
            # cannot fool it
            g = f.float()
            g = (g - g.mean(0)) / g.std(0).clamp(min=1e-6)
            y_logits = self.adversary(grad_reverse(g, self.hparams.remover_weight))
            y_loss = F.cross_entropy(y_logits.float(), y)
            loss = z_loss + y_loss
            self.log("train/y_loss", y_loss)
            self.log("train/adversary_acc", (y_logits.argmax(1) == y).float().mean())
        elif self.hparams.stage == "dpfe":
            with float32():  # pairwise distances against the margin, too coarse in bf16
                y_loss = y_remover_loss(f.float(), y, self.hparams.margin)  # eq. (7), second term
            loss = z_loss + self.hparams.remover_weight * y_loss
            self.log("train/y_loss", y_loss)
        self.log("train/z_loss", z_loss)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str) -> dict[str, torch.Tensor]:
        z, y = self.targets(batch)
        f = self.extract(batch["image"])
        logits = self.predict_from_features(f)
        self.log(f"{stage}/z_loss", attribute_loss(logits, z), sync_dist=True)
        acc = getattr(self, f"{stage}_acc")
        acc(((logits > 0).float() == z).float())
        self.log(f"{stage}/z_acc", acc, prog_bar=True)
        getattr(self, f"{stage}_privacy").update(f, y)
        return {"features": f.detach().float(), "z": z, "y": y}

    def _log_privacy(self, stage: str) -> None:
        metric = getattr(self, f"{stage}_privacy")
        if not metric.update_called:
            return
        values = metric.compute()
        # the metric already gathered every rank's features: the values are equal on all ranks
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, sync_dist=True)
        metric.reset()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_privacy("val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        return self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_privacy("test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        f = self.extract(batch["image"])
        return {"index": batch["index"], "features": f, "logits": self.predict_from_features(f)}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        if self.adversary is None:
            return torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        adversary = set(self.adversary.parameters())
        rest = [p for p in self.parameters() if p not in adversary]
        groups = [{"params": rest}, {"params": list(adversary), "lr": hp.adversary_lr}]
        return torch.optim.Adam(groups, lr=hp.lr, weight_decay=hp.weight_decay)
