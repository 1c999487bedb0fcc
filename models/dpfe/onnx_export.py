"""ONNX export of DPFE's feature extractor (the on-device part, section 6.4) and a parity check."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.onnx_runtime import cpu_session, mean_latency_ms

__all__ = ["FeatureExtractor", "export_feature_extractor", "onnx_latency", "onnx_parity"]


class FeatureExtractor(nn.Module):
    """``x [B, C, H, W] -> f [B, d]``: the layers up to the cut and the AE encoder + BatchNorm (eval mode),
    plus the channel noise of a ``feature_noise > 0`` model (ONNX ``RandomNormalLike``), as ``extract`` does.

    Args:
        module: a trained :class:`models.dpfe.DPFE`.
        channel: add the model's channel noise (``False``: the deterministic part only, for parity checks;
            never release those features).
    """

    def __init__(self, module, channel: bool = True) -> None:
        super().__init__()
        self.layers = module._elementary
        self.bottleneck = module.bottleneck
        self.noise = float(module.hparams.get("feature_noise", 0.0)) if channel else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layers(x)
        f = h.flatten(1) if self.bottleneck is None else self.bottleneck.encode(h)
        return f + self.noise * torch.randn_like(f) if self.noise > 0 else f


def export_feature_extractor(module, path: str | Path, opset: int = 17, channel: bool = True) -> Path:
    """Writes the feature extractor to ONNX with a dynamic batch axis.

    Args:
        module: a :class:`models.dpfe.DPFE`.
        path: output ``.onnx`` file.
        opset: ONNX opset.
        channel: include the channel noise of a ``feature_noise > 0`` model (see :class:`FeatureExtractor`).

    Returns:
        The path written.
    """
    hp = module.hparams
    extractor = FeatureExtractor(module, channel).eval().cpu()
    dummy = torch.rand(2, hp.in_chans, hp.image_size, hp.image_size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        extractor,
        (dummy,),
        str(path),
        input_names=["image"],
        output_names=["features"],
        dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )
    return path


def onnx_parity(path: str | Path, module, images: torch.Tensor) -> float:
    """Max abs difference between onnxruntime's and PyTorch's features on ``images`` ``[B, C, H, W]``.

    For a ``feature_noise > 0`` model the file at ``path`` draws its own noise: the deterministic part is
    compared through a channel-free twin export, and the file's noise must have the model's standard
    deviation (``ValueError`` otherwise: a file that dropped the channel would release clean features).
    """
    x = images.cpu().numpy().astype(np.float32)
    with torch.no_grad():
        ref = FeatureExtractor(module, channel=False).eval().cpu()(images.cpu()).numpy()
    out = cpu_session(path).run(["features"], {"image": x})[0]
    noise = float(module.hparams.get("feature_noise", 0.0))
    if noise == 0:
        return float(np.abs(out - ref).max())
    spread = float((out - ref).std())
    if out.size >= 100 and abs(spread - noise) > 0.2 * noise:
        raise ValueError(
            f"{path}: its features differ from the clean ones by std {spread:.3g}, not the model's channel "
            f"noise {noise:g}: re-export with export_feature_extractor(module, path) (channel=True)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        twin = export_feature_extractor(module, Path(tmp) / "twin.onnx", channel=False)
        det = cpu_session(twin).run(["features"], {"image": x})[0]
    return float(np.abs(det - ref).max())


def onnx_latency(
    path: str | Path, image_shape: tuple[int, int, int], runs: int = 200, warmup: int = 20
) -> float:
    """Mean onnxruntime CPU latency (one thread) per single image, in milliseconds."""
    x = np.random.default_rng(0).random((1, *image_shape), dtype=np.float32)
    return mean_latency_ms(path, {"image": x}, ["features"], runs, warmup)
