"""``torch.compile`` of a denoiser, in place: the module keeps its class, its parameters and its
state-dict names (``nn.Module.compile`` compiles ``__call__``; no ``_orig_mod.`` prefix), so
checkpoints, post-hoc EMA snapshots, model files and exports are the same with and without it.

Guidance hooks keep working (PAG, SEG: the attention ops; TSG: the noise embedding; layer skip
and kept dropout: the blocks' hook points, ``nets.hooks``): a hook added or removed after
compilation changes a module's hook dicts, and the compiled code guards on them, so it is
recompiled for that set of hooks (the first guided call of each kind pays a compilation; the
per-image random streams of TSG and dropout run as Python between compiled graphs). Dynamo
skips the hook guards of submodules by default, which would let a graph traced without a hook
run with one, so ``compile_network`` turns them on for the process
(``torch._dynamo.config.skip_nnmodule_hook_guards = False``). SAG is refused with compilation
(``autoguide.sample.generate_images``): its capture hook stores the attention map as a Python
side effect that compiled code does not replay.
"""

from __future__ import annotations

import torch._dynamo.config
from torch import nn


def is_compiled(net: nn.Module) -> bool:
    """Whether ``net.compile()`` was called on this module."""
    return getattr(net, "_compiled_call_impl", None) is not None


def compile_network(net: nn.Module, **options) -> nn.Module:
    """Compile ``net``'s forward in place (once; ``options`` go to ``torch.compile``)."""
    if not is_compiled(net):
        torch._dynamo.config.skip_nnmodule_hook_guards = False  # hooks added later must recompile (module docstring)
        net.compile(**options)
    return net
