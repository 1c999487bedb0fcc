"""DPFE networks: layer separation of a backbone at a named cut (section 4.1) and the linear AE bottleneck
with PCA initialisation and non-affine BatchNorm (section 4.2, the reference code's design)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LinearBottleneck", "chain_layers", "split_at"]


def _expand(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    """Flattens nested ``nn.Sequential`` containers into (dotted name, leaf module) pairs, in order."""
    out: list[tuple[str, nn.Module]] = []
    for name, child in module.named_children():
        full = f"{prefix}.{name}" if prefix else name
        if isinstance(child, nn.Sequential) and len(child) > 0:
            out.extend(_expand(child, full))
        else:
            out.append((full, child))
    return out


def chain_layers(backbone: nn.Module, probe: torch.Tensor | None = None) -> list[tuple[str, nn.Module]]:
    """The backbone as an ordered chain of named layers whose composition equals ``backbone(x)``.

    Top-level children are taken in definition order and ``nn.Sequential`` containers are expanded
    (``small_cnn``: ``features.0`` ... ``features.9``; a timm ResNet: ``conv1``, ``bn1``, ``act1``,
    ``maxpool``, ``layer1.0``, ..., ``layer4.1``, ``global_pool``, ``fc``).

    Args:
        backbone: a ``models.backbones.create_backbone`` module.
        probe: optional input ``[B, C, H, W]``; when given, the chain is checked to reproduce
            ``backbone(probe)`` (in eval mode) and a ``ValueError`` is raised if it does not.

    Returns:
        ``[(name, module), ...]``.
    """
    layers = _expand(backbone, "")
    if probe is not None:
        was_training = backbone.training
        backbone.eval()
        with torch.no_grad():
            ref = backbone(probe)
            h = probe
            for _, layer in layers:
                h = layer(h)
        backbone.train(was_training)
        if h.shape != ref.shape or not torch.allclose(h, ref, atol=1e-4, rtol=1e-4):
            raise ValueError(
                f"{type(backbone).__name__} is not a plain chain of its children (its forward does more), "
                "so it cannot be split at a layer; use 'small_cnn' or a chain-structured timm model "
                "(e.g. resnet18, mobilenetv3_small_100)"
            )
    return layers


def split_at(
    backbone: nn.Module, cut: str, probe: torch.Tensor | None = None
) -> tuple[nn.Sequential, nn.Sequential]:
    """Layer separation (section 4.1): the layers up to and including ``cut``, and the rest.

    Args:
        backbone: the attribute model's backbone.
        cut: name of the last layer of the feature extractor (see :func:`chain_layers`).
        probe: optional input used to check the chain (see :func:`chain_layers`).

    Returns:
        ``(elementary, secondary)`` ``nn.Sequential``s sharing the backbone's modules; ``secondary``
        may be empty (cut at the last layer).

    Raises:
        ValueError: ``cut`` is not a layer name (the message lists the valid ones).
    """
    layers = chain_layers(backbone, probe)
    names = [n for n, _ in layers]
    if cut not in names:
        raise ValueError(
            f"cut layer {cut!r} does not exist in this backbone; valid cut layers: {', '.join(names)}"
        )
    k = names.index(cut) + 1
    return nn.Sequential(*[m for _, m in layers[:k]]), nn.Sequential(*[m for _, m in layers[k:]])


class LinearBottleneck(nn.Module):
    """Linear auto-encoder at the cut: ``h -> W_e h + b_e -> BatchNorm (no affine) = f -> W_d f + b_d``.

    The cut output ``h`` ``[B, *S]`` is flattened to ``[B, D]``; the private feature is ``f`` ``[B, d]``
    (standardised by the non-affine BatchNorm, which the privacy bound of Theorem 8 assumes); the decoder
    output is reshaped back to ``[B, *S]`` for the secondary layers.

    Args:
        in_features: D, the flattened size of the cut output.
        feature_dim: d (the paper: 10).
        cut_shape: ``S``, the per-sample shape of the cut output.
    """

    def __init__(self, in_features: int, feature_dim: int, cut_shape: list[int]) -> None:
        super().__init__()
        if feature_dim < 1 or feature_dim > in_features:
            raise ValueError(
                f"feature_dim must be in 1..{in_features} (the cut layer's size), got {feature_dim}"
            )
        self.cut_shape = [int(s) for s in cut_shape]
        self.encoder = nn.Linear(in_features, feature_dim)
        self.norm = nn.BatchNorm1d(feature_dim, affine=False)
        self.decoder = nn.Linear(feature_dim, in_features)

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        """Cut output ``[B, *S]`` -> private features ``[B, d]``."""
        return self.norm(self.encoder(h.flatten(1)))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Private features ``[B, d]`` -> reconstructed cut output ``[B, *S]``."""
        return self.decoder(f).view(f.shape[0], *self.cut_shape)

    @torch.no_grad()
    def init_pca(self, h: torch.Tensor) -> torch.Tensor:
        """PCA initialisation (Procedure 1, "Initialize AE with PCA weights on L's output").

        With ``mu`` the mean and ``U`` ``[D, d]`` the top-d principal directions (eigenvalues
        ``lam``) of ``h``: encoder ``W_e = U^T``, ``b_e = -U^T mu``; BatchNorm running mean 0, running
        variance ``lam``; decoder ``W_d = U diag(sqrt(lam))``, ``b_d = mu`` so that decoding the
        standardised code gives back the rank-d PCA reconstruction of ``h``.

        Args:
            h: cut outputs ``[N, *S]`` of training images (N >= 2).

        Returns:
            The explained variance ratio of the d components (a scalar tensor).
        """
        x = h.flatten(1).double()
        if x.shape[0] < 2:
            raise ValueError("PCA initialisation needs at least 2 cut-layer outputs")
        if not torch.isfinite(x).all():
            raise FloatingPointError("NaN/inf in the cut layer's outputs: the attribute model is broken")
        mu = x.mean(0)
        xc = x - mu
        cov = xc.T @ xc / (x.shape[0] - 1)
        lam, vec = torch.linalg.eigh(cov)  # ascending
        d = self.encoder.out_features
        lam_d, u = lam.flip(0)[:d].clamp_min(1e-8), vec.flip(1)[:, :d]
        self.encoder.weight.copy_(u.T.float())
        self.encoder.bias.copy_((-u.T @ mu).float())
        self.norm.reset_running_stats()
        self.norm.running_var.copy_(lam_d.float())
        self.decoder.weight.copy_((u * lam_d.sqrt()).float())
        self.decoder.bias.copy_(mu.float())
        return (lam_d.sum() / lam.clamp_min(0).sum().clamp_min(1e-12)).float()
