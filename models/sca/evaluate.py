"""SCA's Table I evaluation (normalised MSE and SSIM vs Sx and Sp), shared by ``scripts/sca_table.py``
and the zoo (:func:`zoo_metrics`); the paper's Table I numbers are defined here, once.

* authorized user, Sp = 0, Sx in ``sx_list`` (one model: the top-k is applied at encode time);
* Sx = ``table_sx``, Sp in ``sp_list``: the authorized user purifies the public code with the true support;
  a curious server runs every attack of :data:`models.sca.SERVER_ATTACKS`. The paper's attacks are
  ``as_is`` and ``top_sx`` (the strongest of them is compared with the paper); ``posterior_mean`` is an
  extra, stronger attack reported next to it.

Normalised MSE is ``||x - x_hat||^2 / ||x||^2`` averaged over images (``nmse``; ``nmse_global`` divides the
sums), SSIM is torchmetrics' (11x11 Gaussian window, data range 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from scipy import stats
from torchmetrics import MetricCollection
from torchmetrics.image import StructuralSimilarityIndexMeasure

from models.sca.metrics import NMSE
from models.sca.module import SCA, SERVER_ATTACKS

__all__ = ["PAPER_ATTACKS", "PAPER_AUTH", "PAPER_SERVER", "measure", "refit_statistics", "zoo_metrics"]

PAPER_ATTACKS = ("as_is", "top_sx")
# Table I, Fashion-MNIST row: Sx -> (NMSE, SSIM) of the authorized user at Sp = 0
PAPER_AUTH = {
    1: (0.5355, 0.4926),
    2: (0.4298, 0.5989),
    4: (0.3368, 0.6976),
    8: (0.2657, 0.7753),
    16: (0.2236, 0.8242),
}
# Table I, Fashion-MNIST row: Sp -> (NMSE, SSIM) of the curious server at Sx = 16
PAPER_SERVER = {8: (0.2775, 0.7506), 16: (0.3255, 0.6835), 24: (0.3635, 0.6351), 32: (0.4026, 0.5914)}


def _reconstruction_metrics(ssim: bool = True) -> MetricCollection:
    metrics = {"nmse": NMSE(), "nmse_global": NMSE("global")}
    if ssim:  # the costly one (five 11 x 11 convolutions per image)
        metrics["ssim"] = StructuralSimilarityIndexMeasure(data_range=1.0)
    return MetricCollection(metrics, compute_groups=False)


def _compute(metrics: MetricCollection) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in metrics.compute().items()}


@torch.no_grad()
def measure(
    model: SCA,
    loader: Iterable[dict[str, torch.Tensor]],
    sx_list: Sequence[int],
    sp_list: Sequence[int],
    table_sx: int,
    seed: int,
    limit: int | None = None,
    ks: bool = True,
    server_ssim: bool = True,
    purified: bool = True,
) -> dict:
    """Table I of one model on a loader of ``{"image": [B, C, H, W]}`` (uint8 or float in [0, 1]).

    Args:
        model: the SCA model (put in eval mode).
        loader: test batches.
        sx_list: sparsities of the authorized rows (Sp = 0).
        sp_list: ambiguation levels of the server rows (at Sx = ``table_sx``).
        table_sx: Sx of the ambiguation rows.
        seed: seed of the ambiguation noise.
        limit: use only the first this many images.
        ks: also run the two-sample KS tests, informative vs noise entries of the public codes.
        server_ssim: also measure SSIM in the ambiguation rows (``False``: NMSE only, much cheaper).
        purified: also measure the authorized user's purified reconstruction at each Sp (``False``: skip
            it; purification restores the Sp = 0 codes exactly, so it repeats the Sx = ``table_sx`` row).

    Returns:
        ``{"num_images", "authorized": {sx: row}, "ambiguation": {sp: row}}`` (rows described in the
        module docstring; paper numbers and "meets" flags where Table I has them).
    """
    model.eval()
    auth = {sx: _reconstruction_metrics() for sx in sx_list}
    parties = (("authorized",) if purified else ()) + SERVER_ATTACKS
    amb = {sp: {p: _reconstruction_metrics(server_ssim) for p in parties} for sp in sp_list}
    gen = torch.Generator().manual_seed(seed)
    values = {sp: ([], []) for sp in sp_list}  # informative / noise entries of the public codes
    seen = 0
    for batch in loader:
        x = batch["image"].float() / 255 if batch["image"].dtype == torch.uint8 else batch["image"]
        if limit is not None:
            x = x[: max(0, limit - seen)]
            if not len(x):
                break
        seen += len(x)
        for sx in sx_list:
            auth[sx].update(model.decode(model.encode(x, sx=sx)), x)
        codes = model.encode(x, sx=table_sx)
        for sp in sp_list:
            public = model.ambiguate(codes, sp, gen)
            if ks and sum(v.numel() for v in values[sp][0]) < 50_000:
                values[sp][0].append(public[codes != 0])
                values[sp][1].append(public[(public != 0) & (codes == 0)])
            if purified:
                amb[sp]["authorized"].update(model.decode(model.purify(public, codes != 0)), x)
            for name, images in model.server_attacks(public, sx=table_sx).items():
                amb[sp][name].update(images, x)
    out = {"num_images": seen, "authorized": {}, "ambiguation": {}}
    for sx in sx_list:
        row = _compute(auth[sx])
        if sx in PAPER_AUTH:
            row["paper_nmse"], row["paper_ssim"] = PAPER_AUTH[sx]
            row["meets_nmse"] = row["nmse"] <= PAPER_AUTH[sx][0]
            row["meets_ssim"] = row["ssim"] >= PAPER_AUTH[sx][1]
        out["authorized"][sx] = row
    for sp in sp_list:
        row = {name: _compute(m) for name, m in amb[sp].items()}
        paper = min(PAPER_ATTACKS, key=lambda a: row[a]["nmse"])
        overall = min(SERVER_ATTACKS, key=lambda a: row[a]["nmse"])
        row["strongest_paper_attack"], row["strongest_attack"] = paper, overall
        if sp in PAPER_SERVER:
            row["paper_server_nmse"], row["paper_server_ssim"] = PAPER_SERVER[sp]
            row["server_meets_paper_vs_paper_attacks"] = row[paper]["nmse"] >= PAPER_SERVER[sp][0]
            row["server_meets_paper_vs_all_attacks"] = row[overall]["nmse"] >= PAPER_SERVER[sp][0]
        if ks:
            info, noise = torch.cat(values[sp][0]).numpy(), torch.cat(values[sp][1]).numpy()
            ks_val, ks_abs = stats.ks_2samp(info, noise), stats.ks_2samp(abs(info), abs(noise))
            row["ks_values"] = {
                "statistic": round(float(ks_val.statistic), 4),
                "pvalue": float(ks_val.pvalue),
            }
            row["ks_magnitudes"] = {
                "statistic": round(float(ks_abs.statistic), 4),
                "pvalue": float(ks_abs.pvalue),
            }
        out["ambiguation"][sp] = row
    return out


@torch.no_grad()
def refit_statistics(model: SCA, dm, ckpt: str | None = None, save: str | None = None) -> None:
    """The statistics half of SCA's transform stage on eval-mode features of the whole training split.

    Args:
        model: the SCA model (its ``W`` / ``R`` are kept).
        dm: a set-up datamodule with ``train_set``.
        ckpt, save: with both, the Lightning checkpoint ``ckpt`` is re-saved to ``save`` with the refreshed
            statistics in its state dict.
    """
    model.eval()
    feats = []
    loader = torch.utils.data.DataLoader(dm.train_set, batch_size=1000, collate_fn=dm.train_set.collate_fn)
    for batch in loader:
        feats.append(model.features(batch["image"].float() / 255))
    model.refit(torch.cat(feats), refit_transform=False)
    if save:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        state["state_dict"] = {k: v.clone() for k, v in model.state_dict().items()}
        torch.save(state, save)


def zoo_metrics(
    model: SCA,
    datamodule,
    sx: int = 16,
    sp_list: Sequence[int] = (8, 16, 24, 32),
    privacy_sp: int = 32,
    seed: int = 0,
    limit: int | None = None,
) -> dict[str, float]:
    """The zoo evaluation of an SCA checkpoint: Table I's headline numbers on the official test split.

    Runs :func:`measure` (authorized row at Sx = ``sx``, server rows at Sx = ``sx`` and every Sp of
    ``sp_list``; NMSE only in the server rows, no purified rows, no KS tests: about 40 s on one busy CPU
    core) on the datamodule's test split (Fashion-MNIST: 10,000 images).

    Returns:
        ``ssim_sx{sx}`` / ``nmse_sx{sx}``: the authorized user's SSIM / NMSE at Sp = 0 (utility);
        ``server_nmse_sp{sp}``: the curious server's NMSE with the strongest of the paper's two attacks
        (``as_is``, ``top_sx``) at each Sp (privacy: higher = more private; ``sp = privacy_sp`` is the
        headline); ``server_nmse_posterior_mean_sp{sp}``: the same with privzoo's extra
        ``posterior_mean`` attack (stronger: lower NMSE); ``num_images``.
    """
    if privacy_sp not in sp_list:
        raise ValueError(f"privacy_sp={privacy_sp} must be one of sp_list={list(sp_list)}")
    datamodule.prepare_data()
    datamodule.setup("test")
    result = measure(
        model,
        datamodule.test_dataloader(),
        [sx],
        list(sp_list),
        sx,
        seed,
        limit=limit,
        ks=False,
        server_ssim=False,
        purified=False,
    )
    auth = result["authorized"][sx]
    out = {f"ssim_sx{sx}": auth["ssim"], f"nmse_sx{sx}": auth["nmse"]}
    for sp, row in result["ambiguation"].items():
        paper_attack = row[row["strongest_paper_attack"]]  # the paper's comparison
        out[f"server_nmse_sp{sp}"] = paper_attack["nmse"]
        out[f"server_nmse_posterior_mean_sp{sp}"] = row["posterior_mean"]["nmse"]
    out["num_images"] = float(result["num_images"])
    return out
