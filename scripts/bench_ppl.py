"""Training / evaluation speed of PPL and its victims on this machine, measured in one run.

Prints, on real Fashion-MNIST at the paper's batch sizes:

* PPL training throughput (images/s) of one optimizer step (Algorithm 1: G + three surrogate passes),
  eager vs ``channels_last`` vs ``torch.compile``, from a plain loop on the same batch;
* the same step inside a Lightning ``Trainer`` with the in-memory datamodule, and the share of the step
  spent waiting for data (target < 10%);
* one ADSH and one DSDH training step inside a ``Trainer`` (images/s, data-wait share);
* the PPL step under ``precision="bf16-mixed"`` (CPU autocast here; the GPU path for our users);
* the time of the full four-scenario evaluation of one victim (protect the 70,000-image pool, hash
  query + database in both domains, four mAP@all);
* the time of the full Table 1 protocol at four victim code lengths (8 / 12 / 16 / 24 bits, ADSH + DSDH,
  clean- and protected-trained: 16 victim fits): one epoch of the PPL fit and of each victim's fit is
  timed inside a ``Trainer`` with the shipped configs (``configs/<method>/fashion_mnist.yaml``) and
  multiplied by the config's epochs; the evaluations are the measured four-scenario time. A projection
  from measured epochs, printed as such.

    .venv/bin/python scripts/bench_ppl.py [--steps 10 --data-dir data --no-compile --no-protocol]

Numbers depend on the machine and on what else runs on it: compare ratios from the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import torch

from datamodules import FashionMNISTDataModule
from models.hashing import ADSH, DSDH
from models.ppl import PPL
from models.ppl.protocol import protect_uint8, scenario_codes, scenario_maps


class StepTimer(L.Callback):
    """Wall time of each training batch, split into data wait (fetch + transfer) and compute."""

    def __init__(self) -> None:
        self.compute: list[float] = []
        self.wait: list[float] = []
        self._end: float | None = None
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._end is not None:
            self.wait.append(now - self._end)
        self._start = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._end = time.perf_counter()
        self.compute.append(self._end - self._start)


def trainer_throughput(
    model: L.LightningModule, dm, steps: int, batch_size: int, precision: str = "32-true"
) -> dict[str, float]:
    timer = StepTimer()
    trainer = L.Trainer(
        max_steps=steps + 2,
        precision=precision,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(model, datamodule=dm)
    compute, wait = timer.compute[2:], timer.wait[1:]  # skip warm-up steps
    step = statistics.median(compute)
    data = statistics.median(wait) if wait else 0.0
    return {
        "images_per_s": batch_size / (step + data),
        "step_s": step,
        "data_wait_share": data / (step + data),
    }


def ppl_loop_throughput(
    model: PPL, x: torch.Tensor, y: torch.Tensor, steps: int, variant: str
) -> dict[str, float]:
    model = model.train()
    opt = model.configure_optimizers()
    fn = model.compute_losses
    if variant == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    elif variant == "compile":
        fn = torch.compile(model.compute_losses)
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        fn(x, y)["loss"].backward()
        opt.step()
        if i >= 2:  # warm-up (and compilation) excluded
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    return {"images_per_s": x.shape[0] / step, "step_s": step}


def report(name: str, batch_size: int, r: dict[str, float]) -> None:
    wait = 100 * r["data_wait_share"]
    print(
        f"  {name:17s} batch {batch_size:4d}: {r['images_per_s']:8.1f} img/s, data wait {wait:.1f}% of a step"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="data")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    p.add_argument("--no-protocol", action="store_true", help="skip the four-code-length protocol timing")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    dm = FashionMNISTDataModule(data_dir=args.data_dir, split="retrieval", batch_size=512, num_train=10_000)
    dm.prepare_data()
    dm.setup("fit")
    batch = dm.train_set.__getitems__(list(range(512)))
    x, y = batch["image"].float() / 255, batch["label"]

    print("\nPPL step, batch 512 (plain loop on one batch):")
    base = None
    variants = ["eager", "channels_last"] + ([] if args.no_compile else ["compile"])
    for variant in variants:
        try:
            r = ppl_loop_throughput(PPL(), x, y, args.steps, variant)
        except Exception as err:  # noqa: BLE001 (a variant that does not run here is reported, not fatal)
            print(f"  {variant:14s} failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}")
            continue
        base = base or r["images_per_s"]
        ips = r["images_per_s"]
        print(f"  {variant:14s} {ips:8.1f} img/s  ({r['step_s']:.3f} s/step, x{ips / base:.2f} vs eager)")

    print("\nInside a Lightning Trainer (in-memory datamodule, data wait = fetch + transfer):")
    r = trainer_throughput(PPL(), dm, args.steps, 512)
    report("PPL", 512, r)
    r_cl = trainer_throughput(PPL(channels_last=True), dm, args.steps, 512)
    report("PPL channels_last", 512, r_cl)
    print(f"  -> channels_last x{r_cl['images_per_s'] / r['images_per_s']:.2f} vs the default format")
    r_bf = trainer_throughput(PPL(), dm, args.steps, 512, precision="bf16-mixed")
    report("PPL bf16-mixed", 512, r_bf)
    print(f"  -> bf16-mixed x{r_bf['images_per_s'] / r['images_per_s']:.2f} vs 32-true on this CPU")
    dsdh_dm = FashionMNISTDataModule(
        data_dir=args.data_dir, split="retrieval", batch_size=128, num_train=10_000
    )
    r = trainer_throughput(DSDH(), dsdh_dm, args.steps, 128)
    report("DSDH", 128, r)
    # ADSH (paper: batch 64 from Omega): a 64-image batch, Omega = the whole train subset
    adsh_dm = FashionMNISTDataModule(
        data_dir=args.data_dir, split="retrieval", batch_size=64, num_train=10_000
    )
    r = trainer_throughput(ADSH(num_samples=None), adsh_dm, args.steps, 64)
    report("ADSH", 64, r)

    print("\nFour-scenario evaluation of one victim (query 10,000 / database 60,000):")
    ppl, victim = PPL().eval(), DSDH().eval()
    pool = dm.query_set.images
    t0 = time.perf_counter()
    protected = protect_uint8(ppl.protect, pool)
    t1 = time.perf_counter()
    q, d = dm.query_set.indices, dm.database_set.indices
    codes = scenario_codes(victim.hash, pool, protected, q, d)
    t2 = time.perf_counter()
    scenario_maps(codes, dm.query_set.targets, dm.database_set.targets)
    t3 = time.perf_counter()
    print(f"  protect pool {t1 - t0:.1f} s + hash 140,000 images {t2 - t1:.1f} s + 4 mAP@all {t3 - t2:.1f} s")
    print(f"  = {t3 - t0:.1f} s per victim (PPL protection shared by all victims of a code length)")
    if not args.no_protocol:
        protocol_time(args.data_dir, protect_s=t1 - t0, eval_s=t3 - t1)


def epoch_seconds(method: str, data_dir: str) -> tuple[float, int]:
    """Wall seconds of one training epoch (validation off) of ``configs/<method>/fashion_mnist.yaml``
    inside a ``Trainer``, and the config's epoch count (``max_steps`` converted for PPL)."""
    import tempfile
    from pathlib import Path

    from models.ppl.protocol import _cli

    cfg = Path(__file__).resolve().parents[1] / "configs" / method / "fashion_mnist.yaml"
    with tempfile.TemporaryDirectory() as root:
        cli = _cli(cfg, ["--data.init_args.data_dir", data_dir], Path(root))
        dm = cli.datamodule
        dm.prepare_data()
        dm.setup("fit")
        steps_per_epoch = len(dm.train_dataloader())
        cfg_trainer = cli.trainer
        epochs = cfg_trainer.max_epochs
        if cfg_trainer.max_steps > 0:  # -1 = unset
            epochs = -(-cfg_trainer.max_steps // steps_per_epoch)
        trainer = L.Trainer(
            max_epochs=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
        )  # fmt: skip
        t0 = time.perf_counter()
        trainer.fit(cli.model, datamodule=dm)
        return time.perf_counter() - t0, epochs


def protocol_time(data_dir: str, protect_s: float, eval_s: float, bits: tuple = (8, 12, 16, 24)) -> None:
    print(f"\nTable 1 at {len(bits)} code lengths (projection: one measured epoch x the config's epochs):")
    total = protect_s
    ppl_epoch, ppl_epochs = epoch_seconds("ppl", data_dir)
    total += ppl_epoch * ppl_epochs
    print(f"  PPL fit: {ppl_epoch:.1f} s/epoch x {ppl_epochs} = {ppl_epoch * ppl_epochs / 60:.1f} min")
    for victim in ("adsh", "dsdh"):
        epoch, epochs = epoch_seconds(victim, data_dir)
        fits = 2 * len(bits)  # clean- and protected-trained at each code length
        total += fits * (epoch * epochs + eval_s)
        print(
            f"  {victim.upper()} fit: {epoch:.1f} s/epoch x {epochs} = {epoch * epochs / 60:.1f} min, "
            f"x {fits} fits + {fits} evaluations of {eval_s:.1f} s"
        )
    print(f"  = {total / 3600:.2f} h for the whole protocol on {torch.get_num_threads()} threads (projected)")


if __name__ == "__main__":
    main()
