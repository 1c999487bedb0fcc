"""Mixed precision: every Fashion-MNIST config trains under ``--trainer.precision bf16-mixed`` (one step on
the CPU), and the metrics and losses that must stay float32 do (models.precision)."""

import math

import pytest
import torch
from conftest import REPO_ROOT

from models.cli import cli_main
from models.precision import float32

CONFIGS = sorted((REPO_ROOT / "configs").glob("*/fashion_mnist*.yaml"))
RETRIEVAL = (
    "--data.init_args.num_train=32",
    "--data.init_args.num_query=16",
    "--data.init_args.num_database=96",
)


def _args(config, data_dir, tmp_path, precision):
    args = [
        f"--config={config}",
        f"--data.init_args.data_dir={data_dir}",
        "--data.init_args.batch_size=16",
        "--data.init_args.eval_batch_size=32",
        f"--trainer.precision={precision}",
        "--trainer.fast_dev_run=1",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={tmp_path}",
        f"--checkpoint.dirpath={tmp_path / 'ckpt'}",
    ]
    method = config.parent.name
    if method in ("ppl", "adsh", "dsdh"):
        args += RETRIEVAL
    else:
        args += ["--data.init_args.val_size=32"]
    if method == "dpfe":
        args += ["--model.init_args.init_from=null", "--model.init_args.pca_samples=32"]
    if method == "sca":
        args += ["--model.init_args.transform_samples=64"]
    if method == "adsh":
        args += ["--model.init_args.num_samples=16"]
    return args


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.name}-{p.stem}")
def test_every_fashion_mnist_config_trains_a_step_under_bf16_mixed(config, fashion_mnist_dir, tmp_path):
    cli = cli_main(["fit", *_args(config, fashion_mnist_dir, tmp_path, "bf16-mixed")])
    assert cli.trainer.precision == "bf16-mixed" and cli.trainer.global_step >= 1
    logged = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    assert any(k.startswith("train/") for k in logged), logged
    assert all(math.isfinite(v) for v in logged.values()), logged
    for p in cli.model.parameters():  # the weights stay float32: autocast computes in bf16, stores in fp32
        assert p.dtype == torch.float32 and torch.isfinite(p).all()


@pytest.mark.gpu
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.name}-{p.stem}")
def test_every_fashion_mnist_config_trains_a_step_under_16_mixed_on_a_gpu(
    config, fashion_mnist_dir, tmp_path
):
    args = _args(config, fashion_mnist_dir, tmp_path, "16-mixed") + [
        "--trainer.accelerator=gpu",
        "--trainer.devices=1",
    ]
    cli = cli_main(["fit", *args])
    assert cli.trainer.global_step >= 1
    assert all(math.isfinite(float(v)) for v in cli.trainer.callback_metrics.values())


def test_float32_turns_autocast_off_for_metrics_and_losses():
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    exact = ssim(y, x, data_range=1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lowered = torch.nn.functional.conv2d(x, torch.ones(1, 1, 3, 3))
        with float32():
            kept = torch.nn.functional.conv2d(x, torch.ones(1, 1, 3, 3))
            inside = ssim(y, x, data_range=1.0)
    assert lowered.dtype == torch.bfloat16 and kept.dtype == torch.float32
    assert torch.equal(inside, exact)


def _validate(model_config, data_dir, tmp_path, precision):
    cli = cli_main(_args(model_config, data_dir, tmp_path / precision, precision), run=False)
    return cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0]


@pytest.mark.parametrize("method", ["ppl", "sca"])
def test_validation_metrics_under_bf16_match_float32_ones(method, fashion_mnist_dir, tmp_path):
    config = REPO_ROOT / "configs" / method / "fashion_mnist.yaml"
    torch.manual_seed(0)
    full = _validate(config, fashion_mnist_dir, tmp_path, "32-true")
    torch.manual_seed(0)
    mixed = _validate(config, fashion_mnist_dir, tmp_path, "bf16-mixed")
    assert full.keys() == mixed.keys()
    for key in full:  # the model runs in bf16, the metric on its outputs in float32: close, not equal
        assert mixed[key] == pytest.approx(full[key], rel=0.05, abs=0.02), key


def test_sca_codes_and_eval_metrics_stay_float32_under_autocast():
    from models.sca import SCA

    torch.manual_seed(0)
    model = SCA(code_length=32, sx=4, sp=8).eval()
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        codes = model.encode(x)
        x_hat = model.decode(codes).float()
        model._eval_step({"image": x}, 0, model.val_metrics)
    assert codes.dtype == torch.float32  # the support (eq. 2) is chosen on float32 coefficients
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    assert float(model.val_metrics["ssim"].compute()) == pytest.approx(
        float(ssim(x_hat, x, data_range=1.0)), abs=1e-6
    )


def test_ppl_losses_are_float32_under_autocast():
    from models.ppl import PPL

    torch.manual_seed(0)
    model = PPL(bits=8)
    x, labels = torch.rand(8, 1, 28, 28), torch.arange(8) % 3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.compute_losses(x, labels)
    assert all(out[k].dtype == torch.float32 for k in ("loss", "jo", "jp", "ds", "js", "je"))
