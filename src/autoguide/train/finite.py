"""Stopping a run that went non-finite, before anything non-finite is written.

EDM2 (Karras et al. 2024) replaces non-finite gradient entries by zero before every optimizer
step, so a rare overflow does not end a long run. Left alone, that also hides a run that
diverged: with a loss that is NaN at every step every gradient is zeroed, the weights never move
and the run "finishes" with an untrained model; with an absurd learning rate the weights
themselves overflow and every checkpoint, snapshot and the final model fill with NaN.

``FiniteGuard`` keeps EDM2's zeroing but counts the optimizer steps whose loss or gradient had
a non-finite value: more than ``max_nonfinite_steps`` such steps in a row stop the run, and
non-finite weights after an optimizer step stop it at once. ``DiffusionModule`` checks at the
end of its optimizer step, before Lightning calls any callback's ``on_train_batch_end`` (where
the EMAs are updated and checkpoints, snapshots and sample grids are written), so the step that
went wrong writes nothing. The check costs one device-to-host copy of three booleans per step:
the max-norm of the loss values, of the gradient buffer and of the weights (NaN and inf
propagate through a max, so each is finite exactly when every value is).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch


class NonFiniteTraining(RuntimeError):
    """Training produced a non-finite loss, gradient or weight and was stopped; the message is one
    line naming the step, the image count and the quantity. ``nimg`` is the image count before
    the step that went wrong."""

    def __init__(self, message: str, nimg: int) -> None:
        super().__init__(message)
        self.nimg = nimg


def max_norm(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """``max |x|`` over every element of ``tensors`` as a 0-dim tensor (no host sync); NaN if
    any element is NaN, inf if any is infinite."""
    return torch.nn.utils.get_total_norm([t.detach() for t in tensors], norm_type=math.inf, error_if_nonfinite=False)


@dataclass
class FiniteGuard:
    """Counts optimizer steps with a non-finite loss or gradient (``in_a_row``) and decides when
    a run must stop: more than ``max_nonfinite_steps`` of them in a row, or non-finite weights."""

    max_nonfinite_steps: int
    in_a_row: int = 0

    def check(self, step: int, nimg: int, loss_ok: bool, grads_ok: bool, weights_ok: bool) -> str | None:
        """Record optimizer step ``step`` (1-based; it started at image count ``nimg``); raise
        ``NonFiniteTraining`` if the run must stop. Returns a warning line for a tolerated
        non-finite step (its gradients were zeroed), else ``None``."""
        where = f"optimizer step {step} (nimg {nimg})"
        if not weights_ok:
            raise NonFiniteTraining(
                f"non-finite network weights after {where}; lower train.lr_ref or check the recipe", nimg
            )
        if loss_ok and grads_ok:
            self.in_a_row = 0
            return None
        self.in_a_row += 1
        what = "loss" if not loss_ok else "gradient"
        if self.in_a_row > self.max_nonfinite_steps:
            raise NonFiniteTraining(
                f"non-finite {what} at {where}: {self.in_a_row} such steps in a row exceed "
                f"train.max_nonfinite_steps={self.max_nonfinite_steps}; check train.lr_ref, train.P_mean, "
                "net.sigma_data and the data",
                nimg,
            )
        return (
            f"non-finite {what} at {where}: gradients zeroed ({self.in_a_row} of at most "
            f"{self.max_nonfinite_steps} such steps in a row)"
        )
