"""Export SCA's client side (encoder + sparse code + ambiguation) to ONNX, check parity with onnxruntime
and print the file size and the mean CPU latency per image.

    python scripts/sca_onnx.py --zoo sca-fashion-mnist-sx16 --sp 32 --out runs/sca/client_paper.onnx
    python scripts/sca_onnx.py --zoo sca-fashion-mnist-sx16 --sp 32 --mechanism decoy --data-dir data

The graph takes the host's randomness as inputs (:mod:`models.sca.onnx_export`). The decoy mechanism
needs a pool: the model's ``decoy_pool`` when it has one, else the codes of ``--pool-size`` training-split
images (``--data-dir``), standing in for the data owner's private images.
"""

from __future__ import annotations

import argparse

import torch

from models.sca import SCA
from models.sca.onnx_export import SCAClient, client_noise, export_client, onnx_latency, onnx_parity


def _pool(model, args) -> torch.Tensor:
    if model.decoy_pool is not None and bool((model.decoy_pool != 0).any()):
        return model.decoy_pool.flatten(1)
    from datamodules import FashionMNISTDataModule

    dm = FashionMNISTDataModule(data_dir=args.data_dir, download=False, val_size=1)
    dm.prepare_data()
    dm.setup("fit")
    images = dm.train_set.images[dm.train_set.indices[: args.pool_size]].float() / 255
    with torch.no_grad():
        return model.encode(images)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="an SCA Lightning checkpoint")
    source.add_argument("--zoo", help="a zoo checkpoint name")
    parser.add_argument("--sp", type=int, default=32)
    parser.add_argument("--mechanism", choices=("paper", "decoy"), default=None, help="default: the model's")
    parser.add_argument("--out", default="runs/sca/client.onnx")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--pool-size", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=64, help="images of the parity check")
    parser.add_argument("--runs", type=int, default=200, help="timed single-image runs")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="fail above this max abs difference")
    args = parser.parse_args(argv)

    if args.zoo:
        from models import zoo

        model = zoo.load(args.zoo)
    else:
        model = SCA.load_from_checkpoint(args.ckpt, map_location="cpu", weights_only=True)
    model.eval()
    client = SCAClient(model, args.sp, mechanism=args.mechanism).eval()
    pool = _pool(model, args) if client.mechanism == "decoy" else None
    path = export_client(client, args.out)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, *client.image_shape, generator=g)
    parity = onnx_parity(path, client, images, client_noise(client, args.batch, g, pool))
    size_mb = path.stat().st_size / 2**20
    latency = onnx_latency(path, client, client.image_shape, pool, runs=args.runs)
    print(f"exported {path} (mechanism {client.mechanism}, Sx={client.sx}, Sp={client.sp})")
    print(
        f"parity over {args.batch} images: max abs diff public {parity['public_max_abs_diff']:.3e}, "
        f"codes {parity['codes_max_abs_diff']:.3e}, public support mismatch {parity['support_mismatch_rate']}"
    )
    print(f"size: {size_mb:.3f} MB")
    print(f"latency: {latency:.3f} ms per image (onnxruntime CPU, 1 thread, mean of {args.runs})")
    worst = max(parity["public_max_abs_diff"], parity["codes_max_abs_diff"])
    with torch.no_grad():
        public, codes = client(images, *client_noise(client, args.batch, g, pool))
    short = int(((public != 0).sum(1) < (codes != 0).sum(1) + client.sp * client.maps).sum())
    if short:
        print(f"{short} of {args.batch} codes got fewer than Sp entries from {client.num_decoys} decoys")
    if worst > args.tolerance or parity["support_mismatch_rate"] > 0:
        raise SystemExit(f"parity check failed: {worst:.3e} > {args.tolerance} or supports differ")
    return {**parity, "size_mb": size_mb, "latency_ms": latency}


if __name__ == "__main__":
    main()
