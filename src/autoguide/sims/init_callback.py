"""``InitFromModel``: start a training run from a model file's weights.

Added to the fine-tune's training config as ``callbacks.init_from``. It loads the weights in
Lightning's ``setup`` hook, i.e. before the strategy wraps the module (DDP broadcasts them)
and before a checkpoint is restored, so a resumed run continues from its checkpoint and a
fresh one starts from the model file. The model's card must describe the same network as
the training config. Given the SIMS budgets, it also refuses, before any step, a global batch
size that does not divide them (the image count moves in steps of the batch, and each budget
needs a snapshot at exactly that count).
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl

from autoguide.io import read_model_file
from autoguide.nets import network_config
from autoguide.train.plan import image_count


class InitFromModel(pl.Callback):
    """Copy the weights of model file ``path`` into ``pl_module.net`` at fit setup."""

    def __init__(self, path: str, budgets: Sequence[int] = ()) -> None:
        super().__init__()
        self.path = str(path)
        self.budgets = [int(b) for b in budgets]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        module = image_count(pl_module)
        batch = module.batch_size
        uneven = [b for b in self.budgets if b % batch]
        if uneven:
            raise ValueError(
                f"SIMS budgets {uneven} (images) are not multiples of train.batch_size={batch}; "
                "change budget_mi or the batch size"
            )
        state, card = read_model_file(self.path)
        net = module.net
        if network_config(card["network"]) != network_config(net.config):
            raise ValueError(
                f"callbacks.init_from.path={self.path}: its network {card['network']} differs from the "
                f"training config's net {net.config}"
            )
        net.load_state_dict(state)
