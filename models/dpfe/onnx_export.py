"""ONNX export of DPFE's feature extractor (the on-device part, section 6.4) and a parity check."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["FeatureExtractor", "export_feature_extractor", "onnx_latency", "onnx_parity"]


class FeatureExtractor(nn.Module):
    """``x [B, C, H, W] -> f [B, d]``: the layers up to the cut and the AE encoder + BatchNorm (eval mode).

    Args:
        module: a trained :class:`models.dpfe.DPFE`.
    """

    def __init__(self, module) -> None:
        super().__init__()
        self.layers = module._elementary
        self.bottleneck = module.bottleneck

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layers(x)
        return h.flatten(1) if self.bottleneck is None else self.bottleneck.encode(h)


def export_feature_extractor(module, path: str | Path, opset: int = 17) -> Path:
    """Writes the feature extractor to ONNX with a dynamic batch axis.

    Args:
        module: a :class:`models.dpfe.DPFE`.
        path: output ``.onnx`` file.
        opset: ONNX opset.

    Returns:
        The path written.
    """
    hp = module.hparams
    extractor = FeatureExtractor(module).eval().cpu()
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


def _session(path: str | Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_parity(path: str | Path, module, images: torch.Tensor) -> float:
    """Max abs difference between onnxruntime's and PyTorch's features on ``images`` ``[B, C, H, W]``."""
    with torch.no_grad():
        ref = FeatureExtractor(module).eval().cpu()(images.cpu()).numpy()
    out = _session(path).run(["features"], {"image": images.cpu().numpy().astype(np.float32)})[0]
    return float(np.abs(out - ref).max())


def onnx_latency(
    path: str | Path, image_shape: tuple[int, int, int], runs: int = 200, warmup: int = 20
) -> float:
    """Mean onnxruntime CPU latency (one thread) per single image, in milliseconds."""
    session = _session(path)
    x = np.random.default_rng(0).random((1, *image_shape), dtype=np.float32)
    for _ in range(warmup):
        session.run(["features"], {"image": x})
    start = time.perf_counter()
    for _ in range(runs):
        session.run(["features"], {"image": x})
    return (time.perf_counter() - start) / runs * 1e3
