"""SCA's leakage and utility pictures (uint8, for wandb or PNG): reconstructions of the authorized user and
of a curious server, t-SNE of the original / ambiguated / purified / reconstructed spaces with the
intra- vs inter-class KL (Fig. 4), support probabilities Pc / Pm under noise (Fig. 3b) and the R-recall@T
curve of the support-intersection index against pixel ground truth (Fig. 3e-f)."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

from callbacks.images import log_image_grids

__all__ = ["SCAPlotsLogger", "figure_to_uint8", "sca_pictures"]


def figure_to_uint8(fig) -> np.ndarray:
    """Renders a matplotlib figure to a uint8 ``[H, W, 3]`` array and closes it."""
    import matplotlib.pyplot as plt

    fig.canvas.draw()
    picture = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return picture


def _tsne(points: torch.Tensor, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = points.flatten(1).double().cpu().numpy()
    perplexity = float(min(30.0, max(2.0, (x.shape[0] - 1) / 4)))
    # one OpenMP thread: a few hundred points gain nothing from more, and a busy machine loses a lot
    with threadpool_limits(1):
        return TSNE(2, perplexity=perplexity, init="pca", random_state=seed, max_iter=500).fit_transform(x)


@torch.no_grad()
def sca_pictures(
    model,
    images: torch.Tensor,
    labels: torch.Tensor,
    sp: int | None = None,
    num_queries: int = 100,
    noise_levels: tuple[float, ...] = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3),
    ts: tuple[int, ...] = (1, 2, 5, 10, 20, 50, 100),
    seed: int = 0,
    tsne: bool = True,
) -> dict[str, np.ndarray]:
    """All SCA plots for a batch, as uint8 ``[H, W, 3]`` pictures.

    Args:
        model: a :class:`models.sca.SCA` (eval mode is set and restored).
        images: ``[M, C, H, W]`` in [0, 1] (database of the recall curve, points of the t-SNE).
        labels: ``[M]`` class ids (t-SNE colours, KL); multi-hot labels use their first column.
        sp: ambiguation level; ``None`` = the model's ``sp``, or half ambiguation ``(L - Sx) // 2`` if 0.
        num_queries: queries of the recall curve (noisy copies of the first images).
        noise_levels: pixel noise std of the Pc / Pm plot.
        ts: list lengths of the recall curve.
        seed: seed of the ambiguation noise, of the pixel noise and of t-SNE.
        tsne: draw the t-SNE figure (the slowest plot).

    Returns:
        ``{"tsne", "support", "recall"}`` -> picture (``tsne`` only when requested).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from models.sca import RecallAtT, intra_inter_kl, pixel_ground_truth, sparsify, support_probabilities

    was_training = model.training
    model.eval()
    try:
        device = images.device
        if labels.dim() > 1:
            labels = labels[:, 0].long()
        sp = sp if sp is not None else (model.hparams.sp or (model.hparams.code_length - model.sx) // 2)
        gen = torch.Generator(device=device).manual_seed(seed)
        codes = model.encode(images)
        public = model.ambiguate(codes, sp, gen)
        purified = model.purify(public, codes != 0)
        pictures: dict[str, np.ndarray] = {}

        if tsne:
            attacks = model.server_attacks(public)
            spaces = {
                "a) original": images,
                f"b) ambiguated (Sp={sp})": public,
                "c) purified": purified,
                "d) server reconstruction": attacks["as_is"],
                "e) authorized reconstruction": model.decode(purified),
            }
            fig, axes = plt.subplots(1, len(spaces), figsize=(4 * len(spaces), 4.2))
            for ax, (name, points) in zip(axes, spaces.items(), strict=True):
                emb = _tsne(points, seed)
                kl = intra_inter_kl(points.cpu(), labels.cpu())
                ax.scatter(emb[:, 0], emb[:, 1], c=labels.cpu().numpy(), cmap="tab10", s=4)
                ax.set_title(f"{name}\nD(P_intra||P_inter) = {kl:.3f}", fontsize=9)
                ax.set_xticks([])
                ax.set_yticks([])
            pictures["tsne"] = figure_to_uint8(fig)

        # Fig. 3b: support kept / missed under pixel noise, learned W vs W = I
        pc_w, pc_i = [], []
        feats = model.features(images)
        for sigma in noise_levels:
            noisy = (images + sigma * torch.randn(images.shape, generator=gen, device=device)).clamp(0, 1)
            f_noisy = model.features(noisy)
            pc_w.append(support_probabilities(codes, model.encode(noisy))[0])
            ident = sparsify(feats, model.sx).flatten(1), sparsify(f_noisy, model.sx).flatten(1)
            pc_i.append(support_probabilities(*ident)[0])
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(noise_levels, pc_w, "o-", label="Pc, learned W")
        ax.plot(noise_levels, [1 - p for p in pc_w], "o--", label="Pm, learned W")
        ax.plot(noise_levels, pc_i, "s-", label="Pc, W = I")
        ax.plot(noise_levels, [1 - p for p in pc_i], "s--", label="Pm, W = I")
        ax.set_xlabel("pixel noise std")
        ax.set_ylabel("probability")
        ax.set_title(f"support under noise (Sx={model.sx})")
        ax.legend(fontsize=8)
        fig.tight_layout()
        pictures["support"] = figure_to_uint8(fig)

        # Fig. 3e-f: R-recall@T of the server's index vs pixel-domain ground truth
        nq = min(num_queries, images.shape[0])
        queries = (images[:nq] + 0.05 * torch.randn(images[:nq].shape, generator=gen, device=device)).clamp(
            0, 1
        )
        q_codes, _ = model.query(queries, sq=min(model.hparams.sq, sp), sp=sp, generator=gen)
        index = model.build_index(public.cpu())
        ts = tuple(t for t in ts if t <= images.shape[0]) or (1,)
        _, found = index.search(q_codes.cpu(), max(ts))
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for r in (1, 10):
            if r > images.shape[0]:
                continue
            metric = RecallAtT(ts)
            metric.update(found, pixel_ground_truth(queries.cpu(), images.cpu(), r))
            ax.plot(ts, metric.compute().numpy(), "o-", label=f"R={r}")
        ax.set_xscale("log")
        ax.set_xlabel("T")
        ax.set_ylabel("R-recall@T")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"support-intersection search, Sp={sp}, Sq={min(model.hparams.sq, sp)}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        pictures["recall"] = figure_to_uint8(fig)
        return pictures
    finally:
        model.train(was_training)


class SCAPlotsLogger(L.Callback):
    """Logs SCA's pictures from the first validation batch every ``every_n_epochs`` epochs.

    Keys: ``sca/original``, ``sca/authorized``, ``sca/server_<attack>`` (image grids) and ``sca/tsne``,
    ``sca/support``, ``sca/recall`` (plots), all uint8.

    Args:
        every_n_epochs: logging period in epochs (counted from 1: epochs n-1, 2n-1, ...).
        num_images: images per reconstruction grid.
        num_points: points of the t-SNE / recall plots (taken from the first validation batch).
        tsne: draw the t-SNE figure.
    """

    def __init__(
        self, every_n_epochs: int = 1, num_images: int = 16, num_points: int = 500, tsne: bool = True
    ) -> None:
        super().__init__()
        self.every_n_epochs = every_n_epochs
        self.num_images = num_images
        self.num_points = num_points
        self.tsne = tsne
        self._batch: dict[str, torch.Tensor] | None = None

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if batch_idx == 0 and dataloader_idx == 0 and isinstance(batch, dict) and "image" in batch:
            self._batch = {k: v[: self.num_points] for k, v in batch.items() if torch.is_tensor(v)}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if (
            self._batch is None
            or trainer.sanity_checking
            or (trainer.current_epoch + 1) % self.every_n_epochs
            or not trainer.is_global_zero
        ):
            return
        batch, self._batch = self._batch, None
        x = batch["image"]
        with torch.no_grad():
            views = pl_module.visualize({"image": x[: self.num_images]})
        grids = {"sca/original": x[: self.num_images], **{f"sca/{k}": v for k, v in views.items()}}
        pictures = sca_pictures(pl_module, x, batch["label"], tsne=self.tsne, seed=pl_module.hparams.seed)
        for key, picture in pictures.items():
            grids[f"sca/{key}"] = torch.from_numpy(picture).permute(2, 0, 1)[None].float() / 255
        log_image_grids(trainer, grids)
