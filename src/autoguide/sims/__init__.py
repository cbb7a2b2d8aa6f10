"""SIMS (Alemohammad et al. 2024, "Self-Improving Diffusion Models with Synthetic Data"):
the negative model is the base model fine-tuned on its own samples, and sampling uses
``s = (1 + omega) s_base - omega s_synth`` (Karras weight ``w = 1 + omega``).

``autoguide-sims`` (``autoguide.sims.cli``) runs base -> synthesize -> retrain -> register
(``autoguide.sims.pipeline``), each stage verifiable and resumable (``records``). The
outputs other tools read: ``pair.json`` (``pair.read_pair``), the synthetic set's
``manifest.json`` (``synthesize.verify_manifest``) and the weight-space models
``theta_base + w' (theta_base - theta_synth)`` (``weightspace``).
"""

from autoguide.io.sims_pair import SimsPair, read_pair
from autoguide.sims.synthesize import verify_manifest
from autoguide.sims.weightspace import extrapolate

__all__ = ["SimsPair", "extrapolate", "read_pair", "verify_manifest"]
