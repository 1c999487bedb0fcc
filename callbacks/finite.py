"""Stop a fit at the first non-finite loss, before it reaches the weights or a checkpoint.

:class:`FiniteLossCheck` (added by :mod:`models.cli` by default; ``--finite_loss.enabled false`` turns it
off) checks every training step in two Lightning hooks:

* ``on_before_optimizer_step``: the gradients, after ``backward`` and before the optimizer applies them (a
  NaN / inf loss gives non-finite gradients): the step is never taken;
* ``on_train_batch_end``: the returned loss, the loss terms the module logged in this step and the
  weights, before any ``ModelCheckpoint`` of that step (Lightning runs checkpoint callbacks last).

Either raises :class:`NonFiniteLossError` naming the global step, the logged loss terms and the likely fix.
The fit stops there, so no checkpoint with non-finite weights is written and the previous ``last.ckpt``
stays as it was. ``EarlyStopping(check_finite=True)`` only looks at a monitored metric after validation,
which is too late for this. Under ``16-mixed`` precision the gradient check is left to the GradScaler
(which skips steps with inf gradients by design); the loss and weight checks still apply.
"""

from __future__ import annotations

import math

import lightning as L
import torch

__all__ = ["FiniteLossCheck", "NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN / inf loss, gradient or weight (the message says where and what to do)."""


def _as_float(value) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach().float().cpu())
    if isinstance(value, (int, float)):
        return float(value)
    return None


class FiniteLossCheck(L.Callback):
    """Raises :class:`NonFiniteLossError` at the first non-finite loss / gradient / weight (module docstring).

    Args:
        enabled: ``False`` turns every check off.
        check_weights: Also check every parameter after each step (one fused reduction per step).
    """

    def __init__(self, enabled: bool = True, check_weights: bool = True) -> None:
        self.enabled = enabled
        self.check_weights = check_weights

    # ------------------------------------------------------------------ what the module logged
    @staticmethod
    def logged_terms(trainer) -> dict[str, float]:
        """``{name: value}`` of the scalars logged in the current training step (best effort)."""
        terms: dict[str, float] = {}
        try:
            results = trainer.fit_loop.epoch_loop._results
            for key, metric in results.items():
                name = getattr(getattr(metric, "meta", None), "name", key.split(".", 1)[-1])
                value = getattr(metric, "_forward_cache", None)
                if value is None:
                    value = getattr(metric, "value", None)
                number = _as_float(value)
                if number is not None:
                    terms[name] = number
        except Exception:  # private Lightning structures: never let the check itself fail
            pass
        if not terms:
            for name, value in trainer.callback_metrics.items():
                number = _as_float(value)
                if number is not None and name.startswith("train"):
                    terms[name] = number
        return terms

    def _error(self, trainer, pl_module, what: str, loss: float | None = None) -> NonFiniteLossError:
        terms = self.logged_terms(trainer)
        if loss is not None:
            terms.setdefault("loss (returned by training_step)", loss)
        shown = ", ".join(f"{k} = {v:.6g}" for k, v in sorted(terms.items())) or "nothing logged"
        lrs = {
            k: v
            for k, v in dict(getattr(pl_module, "hparams", {})).items()
            if (k == "lr" or k.startswith("lr_") or k.endswith("_lr")) and isinstance(v, (int, float))
        }
        lr_text = ", ".join(f"model.init_args.{k} = {v:g}" for k, v in lrs.items())
        epoch_loop = trainer.fit_loop.epoch_loop
        return NonFiniteLossError(
            f"{what} at global step {trainer.global_step} (epoch {trainer.current_epoch}, batch "
            f"{epoch_loop.batch_idx}); loss terms logged in this step: {shown}. The fit was stopped before "
            "any checkpoint of this step: the last good state is in last.ckpt. Likely fix: lower the "
            f"learning rate{f' ({lr_text})' if lr_text else ''}, train in full precision "
            f"(--trainer.precision 32-true; this run: {trainer.precision}), or clip gradients "
            "(--trainer.gradient_clip_val 1.0); check the input data for NaN / inf. "
            "(--finite_loss.enabled false turns this check off.)"
        )

    # ------------------------------------------------------------------ hooks
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not self.enabled or str(trainer.precision).startswith("16"):
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads or bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            return
        names = {id(p): n for n, p in pl_module.named_parameters()}
        bad = [
            names.get(id(p), "?")
            for group in optimizer.param_groups
            for p in group["params"]
            if p.grad is not None and not bool(torch.isfinite(p.grad).all())
        ]
        bad_terms = [k for k, v in self.logged_terms(trainer).items() if not math.isfinite(v)]
        what = f"non-finite loss ({', '.join(bad_terms)})" if bad_terms else "non-finite gradients"
        raise self._error(trainer, pl_module, f"{what}, gradients of {', '.join(bad[:4])}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.enabled:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        value = _as_float(loss)
        if value is not None and not math.isfinite(value):
            raise self._error(trainer, pl_module, "non-finite loss", value)
        bad_terms = [k for k, v in self.logged_terms(trainer).items() if not math.isfinite(v)]
        if bad_terms:
            raise self._error(trainer, pl_module, f"non-finite loss terms ({', '.join(bad_terms)})")
        if self.check_weights:
            params = [p for p in pl_module.parameters()]
            if params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
                bad = [n for n, p in pl_module.named_parameters() if not bool(torch.isfinite(p).all())]
                raise self._error(trainer, pl_module, f"non-finite weights ({', '.join(bad[:4])})")
