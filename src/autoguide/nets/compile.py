"""``torch.compile`` of a denoiser, in place: the module keeps its class, its parameters and its
state-dict names (``nn.Module.compile`` compiles ``__call__``; no ``_orig_mod.`` prefix), so
checkpoints, post-hoc EMA snapshots, model files and exports are the same with and without it.

Guidance hooks keep working for PAG, SEG and TSG (forward hooks on the attention ops and the
noise embedding): a hook added or removed after compilation changes the module's hook dicts,
which the compiled code guards on, so it is recompiled for that set of hooks (the first guided
call of each kind pays a compilation; TSG's per-image noise streams run as Python between
compiled graphs). SAG is refused with compilation (``autoguide.sample.generate_images``): its
capture hook stores the attention map as a Python side effect that compiled code does not
replay.
"""

from __future__ import annotations

from torch import nn


def is_compiled(net: nn.Module) -> bool:
    """Whether ``net.compile()`` was called on this module."""
    return getattr(net, "_compiled_call_impl", None) is not None


def compile_network(net: nn.Module, **options) -> nn.Module:
    """Compile ``net``'s forward in place (once; ``options`` go to ``torch.compile``)."""
    if not is_compiled(net):
        net.compile(**options)
    return net
