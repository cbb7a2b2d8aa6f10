"""``autoguide-generate``: sample with the shared guided sampler (Hydra app, ``conf/generate/``).

    autoguide-generate model=<file> [guide=<file> guidance.weight=2.2] seeds=0-63 \\
        class_labels=random output.formats=[grid,npz] output.dir=out/ag

Several processes (``torchrun --nproc_per_node=K -m autoguide.sample.generate ...`` or
``srun``) split the images by contiguous seed ranges; each rank writes its own files
(``-rankNNN`` suffix) and rank 0 records the resolved config (``generate.yaml``) and the model
cards (``model_cards.json``) beside the images. Models of ``img_resolution 0`` (the 2D toy) get
a scatter plot instead of a grid.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from autoguide.config_dir import config_dir
from autoguide.io import load_denoiser, write_text_atomic
from autoguide.latent import load_latent_codec
from autoguide.sample.batch import generate_images
from autoguide.sample.config import build_guidance
from autoguide.sample.distributed import RankInfo, rank_from_env, rank_slice
from autoguide.sample.labels import class_labels
from autoguide.sample.outputs import (
    FORMATS,
    image_names,
    write_grid,
    write_image_shards,
    write_npz,
    write_pngs,
    write_scatter,
)
from autoguide.sample.pair_config import apply_pair
from autoguide.sample.seeds import parse_seeds

log = logging.getLogger(__name__)


def resolve_device(name: str, info: RankInfo) -> torch.device:
    """``auto``: this rank's GPU (``cuda:LOCAL_RANK``) if CUDA is available, else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class ModelLoader:
    """Loads each model file once (so equal paths give the same module) and keeps its card."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.models: dict[str, nn.Module] = {}

    def __call__(self, path: str) -> nn.Module:
        if path not in self.models:
            self.models[path] = load_denoiser(path, self.device)
        return self.models[path]

    def cards(self) -> dict[str, Any]:
        return {path: getattr(model, "card", None) for path, model in self.models.items()}


def write_outputs(cfg: DictConfig, samples: torch.Tensor, seeds: list[int], classes: list[int] | None, info: RankInfo, toy: bool) -> None:
    """Write this rank's samples in every format of ``cfg.output.formats``."""
    out = Path(cfg.output.dir)
    formats = list(cfg.output.formats)
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"output.formats: unknown format(s) {unknown}; valid: {list(FORMATS)}")
    if toy and {"png", "shards"} & set(formats):
        raise ValueError(f"output.formats={formats}: png and shards need images; 2D models take grid (a scatter plot) and npz")
    if "grid" in formats:
        if toy:
            write_scatter(out / f"scatter{info.suffix}.png", samples, classes, title=str(cfg.model))
        else:
            write_grid(out / f"grid{info.suffix}.png", samples, cfg.output.grid_cols)
    if "png" in formats:
        write_pngs(out / "images", samples, image_names(seeds, classes))
    if "npz" in formats:
        write_npz(out / f"samples{info.suffix}.npz", samples, seeds, classes)
    if "shards" in formats:
        write_image_shards(out / "shards", f"samples{info.suffix}", samples, classes, int(cfg.output.shard_size))


def run(cfg: DictConfig) -> Path:
    """Generate this rank's images as configured; returns the output folder."""
    info = rank_from_env()
    device = resolve_device(str(cfg.device), info)
    apply_pair(cfg)
    load = ModelLoader(device)
    net = load(str(cfg.model))
    codec = load_latent_codec(net.card, cfg.get("vae_path"), device)
    terms = build_guidance(cfg.guidance, load)
    if cfg.get("guide") is not None and str(cfg.guide) not in load.models:
        log.warning("guide=%s is unused: no active term needs it (autoguidance with guidance.weight=1 is no guidance)", cfg.guide)
    policy = list(cfg.class_labels) if OmegaConf.is_list(cfg.class_labels) else cfg.class_labels
    all_seeds, all_classes = class_labels(policy, parse_seeds(cfg.seeds), int(net.label_dim))
    part = rank_slice(len(all_seeds), info)
    seeds = all_seeds[part]
    classes = None if all_classes is None else all_classes[part]
    out = Path(cfg.output.dir)
    if info.rank == 0:
        write_text_atomic(out / "generate.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        write_text_atomic(out / "model_cards.json", json.dumps(load.cards(), indent=2, default=str))
    log.info("rank %d/%d: %d of %d images, %d guidance term(s), on %s", info.rank, info.world_size, len(seeds), len(all_seeds), len(terms), device)
    if not seeds:
        return out
    samples = generate_images(
        net, seeds, classes, terms,
        batch_size=int(cfg.batch_size), device=device, progress=bool(cfg.progress) and info.rank == 0,
        precision=str(cfg.precision), **OmegaConf.to_container(cfg.sampler, resolve=True),
    )
    if codec is not None:  # latent model: decode to RGB in [-1, 1] before writing
        samples = codec.decode(samples.to(device)).cpu()
    write_outputs(cfg, samples, seeds, classes, info, toy=int(net.img_resolution) == 0)
    log.info("wrote %d samples to %s", len(seeds), out)
    return out


def main() -> None:
    """Console entry point ``autoguide-generate``."""
    hydra.main(config_path=str(config_dir() / "generate"), config_name="generate", version_base="1.3")(run)()


if __name__ == "__main__":
    main()
