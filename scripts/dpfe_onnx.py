"""Export a DPFE checkpoint's feature extractor (``extract``) to ONNX, check parity with onnxruntime and
print the file size and the mean CPU latency per image.

    python scripts/dpfe_onnx.py --ckpt runs/dpfe/dpfe/last.ckpt --out runs/dpfe/dpfe_extractor.onnx
"""

from __future__ import annotations

import argparse

import torch

from models.dpfe import DPFE
from models.dpfe.onnx_export import export_feature_extractor, onnx_latency, onnx_parity


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True, help="a DPFE (or Simple) Lightning checkpoint")
    parser.add_argument("--out", default="runs/dpfe/dpfe_extractor.onnx")
    parser.add_argument("--batch", type=int, default=64, help="images of the parity check")
    parser.add_argument("--runs", type=int, default=200, help="timed single-image runs")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="fail above this max abs difference")
    args = parser.parse_args(argv)

    module = DPFE.load_from_checkpoint(args.ckpt, map_location="cpu", weights_only=True).eval()
    hp = module.hparams
    path = export_feature_extractor(module, args.out)
    images = torch.rand(
        args.batch, hp.in_chans, hp.image_size, hp.image_size, generator=torch.Generator().manual_seed(0)
    )
    diff = onnx_parity(path, module, images)
    size_mb = path.stat().st_size / 2**20
    latency = onnx_latency(path, (hp.in_chans, hp.image_size, hp.image_size), runs=args.runs)
    print(f"exported {path} ({hp.backbone}, cut {hp.cut}, d={hp.feature_dim})")
    print(f"parity: max abs diff onnxruntime vs PyTorch = {diff:.3e} over {args.batch} images")
    print(f"size: {size_mb:.3f} MB")
    print(f"latency: {latency:.3f} ms per image (onnxruntime CPU, 1 thread, mean of {args.runs})")
    if diff > args.tolerance:
        raise SystemExit(f"parity check failed: {diff:.3e} > {args.tolerance}")
    return {"max_abs_diff": diff, "size_mb": size_mb, "latency_ms": latency}


if __name__ == "__main__":
    main()
