"""LightningCLI end to end on a tiny Fashion-MNIST: configs, loggers, checkpoints, exact resume."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, TESTS_DIR

from models.cli import cli_main, wandb_offline_default

CONFIG = str(REPO_ROOT / "configs" / "classifier" / "fashion_mnist.yaml")


def tiny_args(data_dir, *extra):
    return [
        f"--config={CONFIG}",
        f"--data.init_args.data_dir={data_dir}",
        "--data.init_args.batch_size=32",
        "--data.init_args.val_size=32",
        "--trainer.max_epochs=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.log_every_n_steps=1",
        *extra,
    ]


@pytest.mark.parametrize("config", sorted((REPO_ROOT / "configs").glob("*/*.yaml")), ids=lambda p: p.stem)
def test_every_config_parses_and_prints(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", f"--config={config}", "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path: models." in printed and "class_path: datamodules." in printed


def test_fit_and_test_with_csv_logger_keeps_last_and_best(fashion_mnist_dir, tmp_path):
    logs = tmp_path / "logs"
    args = tiny_args(
        fashion_mnist_dir,
        "--trainer.logger=CSVLogger",
        f"--trainer.logger.save_dir={logs}",
        "--trainer.logger.version=0",
        "--trainer.max_epochs=2",
    )
    run_dir = Path(cli_main(["fit", *args]).trainer.log_dir)
    assert run_dir.is_relative_to(logs)
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    assert any(row.get("train/loss") for row in rows) and any(row.get("val/acc") for row in rows)
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and len(checkpoints) == 2, checkpoints
    best = next(p for p in (run_dir / "checkpoints").iterdir() if p.name != "last.ckpt")
    assert "val/acc" in str(torch.load(best, weights_only=False)["callbacks"])
    assert (run_dir / "config.yaml").exists()
    # a second run into the same folder overwrites the saved config instead of failing
    cli_main(["fit", *args])
    last = f"--ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"
    cli = cli_main(["test", *args, last])
    assert 0.0 <= float(cli.trainer.callback_metrics["test/acc"]) <= 1.0
    cli = cli_main(["validate", *args, last])
    assert 0.0 <= float(cli.trainer.callback_metrics["val/acc"]) <= 1.0
    cli = cli_main(["predict", *args, last])
    predictions = cli.trainer.predict_loop.predictions
    assert sum(len(p["prediction"]) for p in predictions) == 64  # the whole test set


def test_ckpt_path_hparams_are_defaults_that_config_and_flags_override(fashion_mnist_dir, tmp_path, caplog):
    # stock LightningCLI lets the checkpoint's hyperparameters override the command line (lightning#21455)
    common = ["--trainer.logger=false", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]
    first = tmp_path / "first"
    args = tiny_args(fashion_mnist_dir, *common, f"--checkpoint.dirpath={first}")
    cli_main(["fit", *args, "--model.init_args.weight_decay=0.01"])
    ckpt = f"--ckpt_path={first / 'last.ckpt'}"
    # fine-tune: the flag wins over the checkpoint, the rest comes from the checkpoint
    second = tmp_path / "second"
    cli = cli_main(
        ["fit", *tiny_args(fashion_mnist_dir, *common, f"--checkpoint.dirpath={second}"), ckpt]
        + ["--model.init_args.lr=0.0005", "--trainer.max_epochs=2"]
    )
    assert cli.model.hparams.lr == 0.0005 and cli.model.hparams.weight_decay == 0.01
    assert cli.trainer.current_epoch == 2  # resumed from epoch 1, not restarted
    assert "model.lr = 0.0005 (checkpoint: 0.001)" in caplog.text
    assert torch.load(second / "last.ckpt", weights_only=False)["hyper_parameters"]["lr"] == 0.0005
    # without a config file, every model argument comes from the checkpoint
    cli = cli_main(
        ["test", "--model=models.classifier.ImageClassifier", "--data=datamodules.FashionMNISTDataModule"]
        + [f"--data.init_args.data_dir={fashion_mnist_dir}", "--data.init_args.val_size=32"]
        + [*common[:1], ckpt]
    )
    assert cli.model.hparams.weight_decay == 0.01 and cli.model.hparams.lr == 0.001


def test_default_logger_is_offline_wandb_with_uint8_images(fashion_mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cli = cli_main(["fit", *tiny_args(fashion_mnist_dir, f"--trainer.logger.init_args.save_dir={tmp_path}")])
    from lightning.pytorch.loggers import WandbLogger

    assert isinstance(cli.trainer.logger, WandbLogger)
    cli.trainer.logger.experiment.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    pictures = list(runs[0].glob("files/media/images/val/*.png"))
    assert pictures, "the ImageGridLogger callback logged no image"
    from PIL import Image

    picture = Image.open(pictures[0])
    assert picture.mode in ("RGB", "L") and max(picture.getextrema()[0]) > 0  # not black


def test_wandb_mode_is_respected(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "online")
    assert wandb_offline_default() is False
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_offline_default() is True
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: wandb is not configured
    assert wandb_offline_default() is True
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_offline_default() is False


def run_cli(*args):
    paths = os.pathsep.join([str(TESTS_DIR), str(REPO_ROOT)])
    env = {**os.environ, "PYTHONPATH": paths, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "cli.py"), "fit", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_privzoo_console_script_is_the_same_cli():
    from importlib.metadata import entry_points

    import models.cli

    (entry,) = entry_points(group="console_scripts", name="privzoo")
    assert entry.load() is models.cli.main
    for command in (
        [sys.executable, str(REPO_ROOT / "scripts" / "cli.py")],
        [sys.executable, "-m", "models.cli"],
    ):
        done = subprocess.run([*command, "fit", "--help"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "--checkpoint.every_n_train_steps" in done.stdout, done.stderr[-2000:]


def test_step_checkpoints_ignore_the_monitor_and_last_is_the_true_last_step(fashion_mnist_dir, tmp_path):
    # the classifier monitors val/acc; no validation at all: the monitored callback never saves
    folder = tmp_path / "novalid"
    args = ["--trainer.logger=false", "--checkpoint.every_n_train_steps=2", f"--checkpoint.dirpath={folder}"]
    cli_main(["fit", *tiny_args(fashion_mnist_dir, *args, "--trainer.limit_val_batches=0")])
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 3  # 96 images, batch 32
    # every_n_train_steps = steps per epoch: the step-3 file predates the epoch's validation; last.ckpt
    # is written again after it (the true last state: the epoch and its validation are done in it)
    folder = tmp_path / "valid"
    args = ["--trainer.logger=false", "--checkpoint.every_n_train_steps=3", f"--checkpoint.dirpath={folder}"]
    cli = cli_main(["fit", *tiny_args(fashion_mnist_dir, *args)])
    state = torch.load(folder / "last.ckpt", weights_only=True)
    assert state["global_step"] == cli.trainer.global_step == 3
    loops = state["loops"]["fit_loop"]
    assert loops["epoch_progress"]["current"]["processed"] == 1  # saved after the epoch, not at step 3
    assert loops["epoch_loop.val_loop.batch_progress"]["total"]["completed"] == 1
    assert not (folder / "last-v1.ckpt").exists()


def test_fast_dev_run_writes_no_checkpoint(fashion_mnist_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # like a run from the repository root, whose checkpoints/ is the zoo
    cli_main(["fit", *tiny_args(fashion_mnist_dir, "--trainer.fast_dev_run=true", "--trainer.logger=false")])
    assert not (tmp_path / "checkpoints").exists()
    assert not list(tmp_path.rglob("*.ckpt"))


def test_ckpt_path_missing_or_truncated_file_is_named(fashion_mnist_dir, tmp_path):
    from models.cli import CheckpointFileError

    missing = tmp_path / "nope.ckpt"
    with pytest.raises(CheckpointFileError, match=str(missing)):
        cli_main(["fit", *tiny_args(fashion_mnist_dir, "--trainer.logger=false", f"--ckpt_path={missing}")])
    folder = tmp_path / "run"
    common = tiny_args(fashion_mnist_dir, "--trainer.logger=false", "--trainer.limit_train_batches=1")
    cli_main(["fit", *common, f"--checkpoint.dirpath={folder}"])
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes((folder / "last.ckpt").read_bytes()[:5000])
    with pytest.raises(CheckpointFileError, match=f"{truncated}.*truncated"):
        cli_main(["fit", *common, f"--ckpt_path={truncated}"])
    done = run_cli(*common, f"--ckpt_path={truncated}")
    assert done.returncode == 1 and f"error: --ckpt_path {truncated}" in done.stderr, done.stderr[-2000:]


def _all_finite(path):
    state = torch.load(path, weights_only=True)["state_dict"]
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


def test_nonfinite_loss_stops_the_fit_and_keeps_the_good_last_ckpt(fashion_mnist_dir, tmp_path):
    common = tiny_args(fashion_mnist_dir, "--trainer.logger=false", "--trainer.max_epochs=2")
    folder = tmp_path / "diverged"
    done = run_cli(
        *common,
        "--model.init_args.lr=1e8",
        "--checkpoint.every_n_train_steps=1",
        f"--checkpoint.dirpath={folder}",
    )
    assert done.returncode == 1, done.stderr[-3000:]
    message = done.stderr
    assert "error: non-finite loss (train/loss)" in message and "at global step 1 " in message, message[
        -3000:
    ]
    assert "train/loss = nan" in message and "lower the learning rate (model.init_args.lr = 1e+08)" in message
    assert "--trainer.precision 32-true" in message
    assert "Traceback" not in message
    assert all(_all_finite(p) for p in folder.glob("*.ckpt")) and (folder / "last.ckpt").exists()
    # a good run, then a resumed run that diverges: the good last.ckpt stays as it was
    good = tmp_path / "good"
    assert (
        run_cli(
            *tiny_args(fashion_mnist_dir, "--trainer.logger=false"), f"--checkpoint.dirpath={good}"
        ).returncode
        == 0
    )
    before = (good / "last.ckpt").read_bytes()
    resumed = run_cli(*common, f"--checkpoint.dirpath={good}", "--ckpt_path=last", "--model.init_args.lr=1e8")
    assert resumed.returncode == 1 and "non-finite" in resumed.stderr, resumed.stderr[-3000:]
    assert "optimizer 0 param group 0: lr 0.001 -> 100000000.0" in resumed.stderr
    assert (good / "last.ckpt").read_bytes() == before and _all_finite(good / "last.ckpt")
    # the check can be switched off
    off = run_cli(
        *common,
        "--model.init_args.lr=1e8",
        "--finite_loss.enabled=false",
        f"--checkpoint.dirpath={tmp_path / 'off'}",
    )
    assert off.returncode == 0, off.stderr[-3000:]


def test_changed_lr_on_resume_reaches_the_restored_optimizer(fashion_mnist_dir, tmp_path, caplog):
    first = tmp_path / "first"
    common = ["--trainer.logger=false", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]
    cli_main(["fit", *tiny_args(fashion_mnist_dir, *common, f"--checkpoint.dirpath={first}")])
    saved = torch.load(first / "last.ckpt", weights_only=True)
    exp_avg = saved["optimizer_states"][0]["state"][0]["exp_avg"]
    # an explicit file
    second = tmp_path / "second"
    args = tiny_args(fashion_mnist_dir, *common, f"--checkpoint.dirpath={second}", "--trainer.max_epochs=2")
    cli = cli_main(["fit", *args, f"--ckpt_path={first / 'last.ckpt'}", "--model.init_args.lr=0.0005"])
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] == 0.0005
    assert "optimizer 0 param group 0: lr 0.001 -> 0.0005" in caplog.text
    state = torch.load(second / "last.ckpt", weights_only=True)
    assert state["optimizer_states"][0]["param_groups"][0]["lr"] == 0.0005
    assert state["hyper_parameters"]["lr"] == 0.0005
    # `last` (the folder's newest last.ckpt): the difference is printed and applied too
    caplog.clear()
    args = tiny_args(fashion_mnist_dir, *common, f"--checkpoint.dirpath={first}", "--trainer.max_epochs=2")
    cli = cli_main(["fit", *args, "--ckpt_path=last", "--model.init_args.weight_decay=0.01"])
    assert f"--ckpt_path {first / 'last.ckpt'}: model.weight_decay = 0.01 (checkpoint: 0.0)" in caplog.text
    assert cli.trainer.optimizers[0].param_groups[0]["weight_decay"] == 0.01
    assert cli.trainer.current_epoch == 2  # resumed, with the Adam moments of the checkpoint
    assert not torch.equal(exp_avg, torch.zeros_like(exp_avg))
    # `last` resolved by Lightning (no --checkpoint.dirpath: the default folder): reported by the callback
    caplog.clear()
    root = tmp_path / "root"
    args = tiny_args(fashion_mnist_dir, *common, f"--trainer.default_root_dir={root}")
    cli_main(["fit", *args])
    cli = cli_main(["fit", *args, "--trainer.max_epochs=2", "--ckpt_path=last", "--model.init_args.lr=0.002"])
    assert "model.lr = 0.002 (checkpoint: 0.001)" in caplog.text
    assert cli.trainer.optimizers[0].param_groups[0]["lr"] == 0.002
