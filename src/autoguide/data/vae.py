"""The latent space of the EDM2 ImageNet-512 models: Stable Diffusion's VAE with a fixed
per-channel standardisation.

EDM2 (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models",
Sec. 5 and Appendix) trains its img512 models on the 64x64x4 latents of the VAE
``stabilityai/sd-vae-ft-mse``. A latent ``z_raw`` drawn from the VAE posterior
``N(mean, std^2)`` is mapped per channel ``c`` to the model's latent

    z = z_raw * scale_c + bias_c,   scale_c = final_std / raw_std_c,   bias_c = final_mean - raw_mean_c * scale_c

with raw_mean (5.81, 3.25, 0.12, -2.15), raw_std (4.17, 4.62, 3.71, 3.28), final_mean 0 and
final_std 0.5 (= sigma_data). Decoding inverts the map and runs the VAE decoder. As in the
released pipeline the VAE sees pixels in [0, 1] (the raw statistics were measured that way);
this module's images use the project convention, float in [-1, 1].

``diffusers`` is an optional extra (``pip install -e ".[latent]"``); the VAE weights come from a
local folder (``config.json`` + weights, e.g. ``huggingface-cli download stabilityai/sd-vae-ft-mse
--local-dir vae/sd-vae-ft-mse``), never from the network at run time.

A VAE is identified by the SHA-256 of its ``config.json`` and of its weights (``vae_identity``);
the card entry of a model trained on a latent set carries that identity (``vae``), and every
place that decodes with a ``vae_path`` checks it first (``check_vae_path``). An imported
release has no hashes: its ``vae_name`` is assumed, and said so.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoguide.io.atomic import write_json_atomic
from autoguide.io.digest import file_sha256
from autoguide.io.records import load_json

LATENT_TYPE = "stability_vae"
SD_VAE_NAME = "stabilityai/sd-vae-ft-mse"
EDM2_RAW_MEAN = (5.81, 3.25, 0.12, -2.15)
EDM2_RAW_STD = (4.17, 4.62, 3.71, 3.28)
EDM2_FINAL_MEAN = 0.0
EDM2_FINAL_STD = 0.5
SPEC_KEYS = ("type", "vae_name", "raw_mean", "raw_std", "final_mean", "final_std")
VAE_WEIGHTS = "diffusion_pytorch_model.safetensors"
RUN_LATENT_FILE = "latent.json"
HASH_KEYS = ("config_sha256", "weights_sha256")
STD_RATIO_WARN = 2.0
"""``standardize=edm2`` on a set whose raw std differs from EDM2's by more than this factor warns."""

log = logging.getLogger(__name__)


def stability_vae_spec(
    vae_name: str = SD_VAE_NAME,
    raw_mean: Sequence[float] = EDM2_RAW_MEAN,
    raw_std: Sequence[float] = EDM2_RAW_STD,
    final_mean: float = EDM2_FINAL_MEAN,
    final_std: float = EDM2_FINAL_STD,
    vae: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``latent`` entry of a model card for a model trained on these latents; ``vae``: the
    VAE's ``vae_identity`` (hashes), absent for imported releases."""
    return {
        "type": LATENT_TYPE,
        "vae_name": vae_name,
        "raw_mean": [float(v) for v in raw_mean],
        "raw_std": [float(v) for v in raw_std],
        "final_mean": float(final_mean),
        "final_std": float(final_std),
        **({"vae": dict(vae)} if vae is not None else {}),
    }


def standardisation(
    raw_mean: Sequence[float],
    raw_std: Sequence[float],
    final_mean: float = EDM2_FINAL_MEAN,
    final_std: float = EDM2_FINAL_STD,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, bias)`` per channel, float32 as in the release: ``scale = final_std / raw_std``,
    ``bias = final_mean - raw_mean * scale`` (``z = z_raw * scale + bias``)."""
    if len(raw_mean) != len(raw_std):
        raise ValueError(
            f"raw_mean and raw_std need one value per latent channel, got {len(raw_mean)} and {len(raw_std)}"
        )
    if min(raw_std) <= 0 or final_std <= 0:
        raise ValueError(f"raw_std {list(raw_std)} and final_std {final_std} must be positive")
    scale = torch.tensor(final_std, dtype=torch.float32) / torch.tensor(raw_std, dtype=torch.float32)
    return scale, torch.tensor(final_mean, dtype=torch.float32) - torch.tensor(raw_mean, dtype=torch.float32) * scale


def same_latent_space(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None, rel: float = 1e-4) -> bool:
    """Whether two card ``latent`` entries describe the same latent space: both pixel space
    (``None``), or the same type, the same VAE where both name its hashes (``vae``), and the
    same statistics within ``rel`` (imported cards keep 6 digits)."""
    if a is None or b is None:
        return a is None and b is None
    if a.get("type") != b.get("type"):
        return False
    if "vae" in a and "vae" in b and not same_vae(a["vae"], b["vae"]):
        return False
    values = [(x, y) for k in ("raw_mean", "raw_std") for x, y in zip(a[k], b[k], strict=False)]
    values += [(a[k], b[k]) for k in ("final_mean", "final_std")]
    return len(a["raw_mean"]) == len(b["raw_mean"]) and all(
        abs(x - y) <= rel * max(abs(x), abs(y), 1.0) for x, y in values
    )


def describe_latent_space(spec: Mapping[str, Any] | None) -> str:
    """A card ``latent`` entry in words, for messages."""
    if spec is None:
        return "pixel space"
    vae = describe_vae(spec["vae"]) if "vae" in spec else f"{spec.get('vae_name')!r} (no hashes)"
    stats = f"raw_mean {[round(v, 3) for v in spec['raw_mean']]}, raw_std {[round(v, 3) for v in spec['raw_std']]}"
    return f"the latent space of VAE {vae}, {stats}"


def check_same_latent_space(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None, what_a: str, what_b: str) -> None:
    """A ``ValueError`` naming both when card entries ``a`` (of ``what_a``) and ``b`` (of
    ``what_b``) are not the same latent space (``same_latent_space``: another VAE or other
    statistics), e.g. a main model and its guide."""
    if not same_latent_space(a, b):
        raise ValueError(f"{what_a} works in {describe_latent_space(a)}, but {what_b} in {describe_latent_space(b)}")


DiffusersVAE = Any
"""A diffusers ``AutoencoderKL`` (an ``nn.Module`` with ``config``, ``encode(x).latent_dist``
and ``decode(z).sample``); diffusers ships no type information, so it is typed ``Any``."""


def _autoencoder_class() -> DiffusersVAE:
    try:
        from diffusers import AutoencoderKL
    except ImportError as err:
        raise ImportError(
            'latent models need diffusers: pip install -e ".[latent]" (or pip install diffusers)'
        ) from err
    return AutoencoderKL


def _vae_files(vae_path: str | os.PathLike, vae_name: str | None) -> tuple[Path, Path]:
    """``(config.json, weights)`` of a local diffusers VAE folder; ``FileNotFoundError`` saying
    what a VAE folder holds (and, for a missing or empty folder, how to get one) when either is
    missing."""
    folder = Path(vae_path)
    get = f"expected a diffusers AutoencoderKL folder (config.json + {VAE_WEIGHTS}, as save_pretrained writes)"
    if not folder.is_dir() or not any(folder.iterdir()):
        name = vae_name or SD_VAE_NAME
        get += f"; to get {name}: huggingface-cli download {name} --local-dir {folder}"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"vae_path={folder}: no config.json there; {get}")
    if not (folder / VAE_WEIGHTS).is_file():
        raise FileNotFoundError(
            f"vae_path={folder}: no {VAE_WEIGHTS} there (weights are read from safetensors only); {get}"
        )
    return folder / "config.json", folder / VAE_WEIGHTS


def load_vae(vae_path: str | os.PathLike, vae_name: str | None = None) -> DiffusersVAE:
    """The diffusers ``AutoencoderKL`` in local folder ``vae_path`` (``config.json`` and
    safetensors weights; nothing is downloaded), in eval mode without gradients."""
    _vae_files(vae_path, vae_name)
    vae = _autoencoder_class().from_pretrained(
        str(vae_path), local_files_only=True, use_safetensors=True, low_cpu_mem_usage=False
    )
    return vae.eval().requires_grad_(False)


def vae_identity(vae_path: str | os.PathLike, vae_name: str | None = None) -> dict[str, str]:
    """What identifies a local VAE: its ``name`` (``vae_name``, else the hub name its
    ``config.json`` records as ``_name_or_path``, else the folder's name), the ``folder`` name
    and the SHA-256 of its ``config.json`` and of its weights file (the hashes decide whether
    two VAEs are the same)."""
    config, weights = _vae_files(vae_path, vae_name)
    folder = Path(vae_path).resolve().name
    if vae_name is None:
        recorded = load_json(config, "VAE config").get("_name_or_path")
        vae_name = recorded if isinstance(recorded, str) and recorded and not Path(recorded).is_absolute() else folder
    return {
        "name": vae_name,
        "folder": folder,
        "config_sha256": file_sha256(config),
        "weights_file": weights.name,
        "weights_sha256": file_sha256(weights),
    }


def same_vae(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two ``vae_identity`` records name the same VAE (equal config and weights hashes)."""
    return all(a.get(k) == b.get(k) for k in HASH_KEYS)


def describe_vae(identity: Mapping[str, Any]) -> str:
    """``'name' (folder F, config sha256 abc..., weights sha256 def...)`` for messages."""
    config, weights = (str(identity.get(k))[:12] for k in HASH_KEYS)
    name, folder = identity.get("name"), identity.get("folder")
    return f"{name!r} (folder {folder!r}, config sha256 {config}, weights sha256 {weights})"


def check_vae_path(spec: Mapping[str, Any], vae_path: str | os.PathLike, what: str = "this model") -> dict[str, str]:
    """Check, before decoding, that local VAE folder ``vae_path`` is the VAE of card entry
    ``spec`` (``latent``): a ``ValueError`` naming both when the hashes of ``spec["vae"]``
    differ; for an entry without hashes (an imported release) one log line says which VAE is
    assumed. Returns the folder's ``vae_identity``."""
    found = vae_identity(vae_path, spec.get("vae_name"))
    made_with = spec.get("vae")
    if made_with is None:
        log.warning(
            "%s names no VAE hashes (an imported release): assuming vae_path=%s (config sha256 %s) is %s",
            what,
            vae_path,
            found["config_sha256"][:12],
            spec.get("vae_name", SD_VAE_NAME),
        )
    elif not same_vae(made_with, found):
        raise ValueError(
            f"vae_path={vae_path}: {what} works in the latent space of VAE {describe_vae(made_with)}, but that folder "
            f"holds VAE {describe_vae({**found, 'name': found['folder']})}; point vae_path at the VAE it was made with"
        )
    return found


def check_raw_std(raw_std: Sequence[float], where: str) -> None:
    """One warning when a set's per-channel raw std differs from EDM2's constants by more than
    ``STD_RATIO_WARN`` (``standardize=edm2`` then gives latents far from unit scale)."""
    ratios = [float(s) / e for s, e in zip(raw_std, EDM2_RAW_STD, strict=False)]
    if any(r > STD_RATIO_WARN or r < 1 / STD_RATIO_WARN for r in ratios):
        log.warning(
            "%s: the latents' raw std per channel %s is %s x EDM2's constants %s; data.standardize=edm2 suits the SD "
            "VAE only: consider data.standardize=dataset (the set's own statistics)",
            where,
            [round(float(s), 3) for s in raw_std],
            [round(r, 2) for r in ratios],
            list(EDM2_RAW_STD),
        )


def downsampling(vae: DiffusersVAE) -> int:
    """How many pixels a latent pixel covers per side: 2 per down block after the first."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def write_run_latent(run_dir: str | os.PathLike, spec: Mapping[str, Any]) -> None:
    """Record in a training run folder the latent space its models work in
    (``<run>/latent.json``); post-hoc EMA reconstructions copy it into their cards."""
    write_json_atomic(Path(run_dir) / RUN_LATENT_FILE, dict(spec))


def read_run_latent(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The ``latent`` entry recorded in a run folder, ``None`` for a pixel-space run."""
    path = Path(run_dir) / RUN_LATENT_FILE
    if not path.is_file():
        return None
    spec = load_json(path, "run's latent space")
    if not isinstance(spec, dict) or spec.get("type") != LATENT_TYPE:
        raise ValueError(f"{path}: expected a latent entry of type {LATENT_TYPE!r}, got {spec!r}")
    return spec


class LatentCodec(nn.Module):
    """Images (float [-1, 1], ``[N, 3, H, W]``) <-> EDM2 latents (``[N, C, H/f, W/f]``) via a VAE.

    ``vae`` is a diffusers ``AutoencoderKL`` (``encode(x).latent_dist``, ``decode(z).sample``).
    ``scale`` and ``bias`` are computed in float32 from the statistics, as in the release;
    ``factor``: image pixels per latent pixel and side.
    """

    vae: DiffusersVAE
    scale: torch.Tensor
    bias: torch.Tensor

    def __init__(
        self,
        vae: DiffusersVAE,
        raw_mean: Sequence[float] = EDM2_RAW_MEAN,
        raw_std: Sequence[float] = EDM2_RAW_STD,
        final_mean: float = EDM2_FINAL_MEAN,
        final_std: float = EDM2_FINAL_STD,
        batch_size: int = 8,
    ) -> None:
        super().__init__()
        channels = int(vae.config.latent_channels)
        if len(raw_mean) != channels or len(raw_std) != channels:
            raise ValueError(
                f"raw_mean/raw_std need {channels} values (the VAE's latent channels), "
                f"got {len(raw_mean)}/{len(raw_std)}"
            )
        scale, bias = standardisation(raw_mean, raw_std, final_mean, final_std)
        self.vae = vae.eval().requires_grad_(False)
        self.factor = downsampling(vae)  # pixels per latent pixel and side
        self.batch_size = int(batch_size)
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any], vae_path: str | os.PathLike, batch_size: int = 8) -> LatentCodec:
        """The codec of card entry ``spec`` with the VAE weights from local folder ``vae_path``."""
        missing = [k for k in SPEC_KEYS if k not in spec]
        if missing or spec["type"] != LATENT_TYPE:
            raise ValueError(
                f"latent spec {dict(spec)}: expected type {LATENT_TYPE!r} with keys {list(SPEC_KEYS)} "
                f"(missing {missing})"
            )
        check_vae_path(spec, vae_path)
        vae = load_vae(vae_path, spec["vae_name"])
        return cls(vae, spec["raw_mean"], spec["raw_std"], spec["final_mean"], spec["final_std"], batch_size)

    @torch.no_grad()
    def encode(
        self, images: torch.Tensor, generator: torch.Generator | None = None, sample: bool = True
    ) -> torch.Tensor:
        """Latents of float images in [-1, 1]: ``(mean + std * eps) * scale + bias``.

        The VAE gets ``(images + 1) / 2`` in [0, 1]; ``sample=False`` uses the posterior mean.
        """
        out = []
        for batch in images.split(self.batch_size):
            posterior = self.vae.encode((batch.to(torch.float32) + 1) / 2).latent_dist
            raw = posterior.mean
            if sample:
                noise = torch.randn(raw.shape, generator=generator, device=raw.device, dtype=raw.dtype)
                raw = raw + posterior.std * noise
            out.append(raw * self.scale[:, None, None] + self.bias[:, None, None])
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Float images in [-1, 1] of latents: VAE-decode ``(z - bias) / scale``, clamp to [0, 1], map to [-1, 1]."""
        out = []
        for batch in latents.split(self.batch_size):
            raw = (batch.to(torch.float32) - self.bias[:, None, None]) / self.scale[:, None, None]
            pixels = self.vae.decode(raw).sample.clamp(0, 1)
            out.append(pixels * 2 - 1)
        return torch.cat(out)


def load_latent_codec(
    card: Mapping[str, Any], vae_path: str | os.PathLike | None, device: str | torch.device = "cpu"
) -> LatentCodec | None:
    """The codec a model card asks for (``card["latent"]``), or None for pixel-space models.

    A latent model without ``vae_path`` is an error that says where to get the VAE.
    """
    spec = card.get("latent")
    if spec is None:
        return None
    if vae_path is None:
        name = spec.get("vae_name", SD_VAE_NAME)
        made_with = f" (folder {spec['vae']['folder']!r} when it was trained)" if "vae" in spec else ""
        get = "" if "vae" in spec else f" (e.g. huggingface-cli download {name} --local-dir vae/{name.split('/')[-1]})"
        raise ValueError(
            f"this model works in the latent space of VAE {name!r}{made_with}: "
            f"pass vae_path=<local folder of that VAE>{get}"
        )
    return LatentCodec.from_spec(spec, vae_path).to(device)


@functools.lru_cache(maxsize=2)
def _cached_codec(spec_json: str, vae_path: str | None, device: str) -> LatentCodec | None:
    return load_latent_codec({"latent": json.loads(spec_json)}, vae_path, device)


def codec_for(
    net: nn.Module, vae_path: str | os.PathLike | None, device: str | torch.device = "cpu"
) -> LatentCodec | None:
    """The VAE codec of a latent model (its card's ``latent`` entry), loaded once per (spec,
    VAE folder, device) and kept for later calls; ``None`` for pixel and 2D models."""
    spec = getattr(net, "card", {}).get("latent")
    if spec is None:
        return None
    return _cached_codec(json.dumps(spec, sort_keys=True), None if vae_path is None else str(vae_path), str(device))
