"""DPFE's zoo evaluation: Procedure 2 on the real Fashion-MNIST test set, at r = 0 by default.

:func:`zoo_metrics` is the ``evaluate`` function of the DPFE entries of :mod:`models.zoo`: the private
features of the 10,000 test images -> the z-accuracy of the z-predictor (utility) and the identity privacy
of the features (log-rank privacy with the per-class KDE posterior, normalised rank mean / std, 1-NN
error), with the same code and settings as ``scripts/dpfe_curve.py``
(:func:`models.dpfe.curve.collect_features`, :func:`models.dpfe.curve.accuracy_privacy_curve`). With noise
ratios ``r > 0`` it measures those points of the curve too (C = covariance of the features of
``train_samples`` training images, as the script does).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from models.dpfe.curve import accuracy_privacy_curve, collect_features
from models.dpfe.noise import feature_covariance

__all__ = ["MEASURES", "PRIVACY_MEASURES", "zoo_metrics"]

#: the identity-privacy measures of a curve point (log-rank privacy, 1-NN error, normalised rank stats)
PRIVACY_MEASURES = ("lrp", "nn_error", "rank_mean", "rank_std")
#: what :func:`zoo_metrics` returns per noise ratio
MEASURES = ("z_acc", *PRIVACY_MEASURES)


def _key(measure: str, r: float) -> str:
    return measure if r == 0 else f"{measure}_r{r:g}"


@torch.no_grad()
def zoo_metrics(
    model,
    datamodule,
    ratios: Sequence[float] = (0.0,),
    train_samples: int = 10000,
    seed: int = 0,
) -> dict[str, float]:
    """Zoo evaluation of a DPFE model (any stage): z-accuracy and identity privacy on the test set.

    Args:
        model: a :class:`models.dpfe.DPFE` (Fashion-MNIST: z = its attribute set, y = the 10 classes).
        datamodule: a standard-split datamodule (not set up yet); its official test set is evaluated, and
            its training images give the covariance C when some r > 0.
        ratios: noise ratios r of Procedure 2; r = 0 (no noise) is the headline point.
        train_samples: training images whose features give the covariance C (when some r > 0).
        seed: noise seed (``scripts/dpfe_curve.py``'s default), also of a ``feature_noise`` channel.

    Returns:
        ``{"z_acc", "lrp", "nn_error", "rank_mean", "rank_std"}`` at r = 0 (when 0 is in ``ratios``) and
        ``"<measure>_r<r>"`` (e.g. ``"lrp_r1"``) for every other r.
    """
    if not ratios:
        raise ValueError("ratios is empty: pass at least one noise ratio (0 = no noise)")
    hp = model.hparams
    num_identities = hp.num_identities or (10 if hp.dataset == "fashion_mnist" else None)
    if num_identities is None:
        raise ValueError("zoo_metrics needs num_identities in the model's config for a CelebA model")
    datamodule.prepare_data()
    datamodule.setup("test")
    features, z, y = collect_features(model, datamodule.test_dataloader(), seed=seed)
    if any(r > 0 for r in ratios):
        cov = feature_covariance(
            collect_features(model, datamodule.train_dataloader(), train_samples, seed=seed + 1)[0]
        )
    else:  # the noise covariance is not used at r = 0
        cov = torch.zeros(features.shape[1], features.shape[1], dtype=torch.float64)
    rows = accuracy_privacy_curve(
        model, features, z, y, cov, ratios, num_identities, hp.privacy_estimator, hp.privacy_k, seed
    )
    return {_key(m, row["r"]): float(row[m]) for row in rows for m in MEASURES}
