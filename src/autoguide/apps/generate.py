"""``autoguide-generate``: sample with the shared guided sampler (``conf/generate.yaml``).

    autoguide-generate model=<file> [guide=<file> guidance.weight=2.2] seeds=0-63 \\
        class_labels=random output.formats=[grid,npz] output.dir=out/ag

Several processes (``torchrun --nproc_per_node=K -m autoguide.apps.generate ...`` or ``srun``)
split the images by contiguous seed ranges (``autoguide.runtime.process``); each rank writes its own
files (``-rankNNN`` suffix) and rank 0 records the resolved config (``generate.yaml``) and the
model cards (``model_cards.json``) beside the images. Latent models are decoded with the VAE
at ``vae_path``; models of ``img_resolution 0`` (the 2D toy) get a scatter plot instead of a grid.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from autoguide.apps.common import with_pair
from autoguide.apps.hydra_app import run_hydra_app
from autoguide.apps.sampling_configs import GenerateConfig, read_config
from autoguide.data.sample_files import write_outputs
from autoguide.data.vae import codec_for
from autoguide.io import write_text_atomic
from autoguide.runtime.process import ModelLoader, rank_from_env, rank_slice, resolve_device
from autoguide.sample.batch import generate_images
from autoguide.sample.guidance_spec import build_guidance
from autoguide.sample.labels import class_labels, model_label_dim

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> Path:
    """Generate this rank's images as ``cfg`` (``conf/generate.yaml``) says; returns the output folder."""
    settings = with_pair(read_config(GenerateConfig, cfg))
    info = rank_from_env()
    device = resolve_device(settings.device, info)
    load = ModelLoader(device)
    model = settings.model_file()
    net = load(model)
    codec = codec_for(net, settings.vae_path, device)
    terms = build_guidance(settings.guidance_settings, load)
    if settings.guide is not None and settings.guide not in load.models:
        log.warning("guide=%s is unused: no active term needs it (a weight of 1 is no guidance)", settings.guide)
    all_seeds, all_classes = class_labels(settings.class_labels, settings.seeds, model_label_dim(net))
    part = rank_slice(len(all_seeds), info)
    seeds = all_seeds[part]
    classes = None if all_classes is None else all_classes[part]
    out = Path(settings.output.dir)
    if info.rank == 0:
        write_text_atomic(out / "generate.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        write_text_atomic(out / "model_cards.json", json.dumps(load.cards(), indent=2, default=str))
    log.info(
        "rank %d/%d: %d of %d images, %d guidance term(s), on %s",
        info.rank,
        info.world_size,
        len(seeds),
        len(all_seeds),
        len(terms),
        device,
    )
    if not seeds:
        return out
    generation = settings.generation()
    options = generation.options() | {"progress": generation.progress and info.rank == 0}
    samples = generate_images(net, seeds, classes, terms, device=device, **options)
    if codec is not None:  # latent model: decode to RGB in [-1, 1] before writing
        samples = codec.decode(samples.to(device)).cpu()
    write_outputs(settings.output, samples, seeds, classes, info.suffix, title=model)
    log.info("wrote %d samples to %s", len(seeds), out)
    return out


def main() -> None:
    """Console entry point ``autoguide-generate``."""
    run_hydra_app(
        "generate",
        run,
        errors={ValueError: "autoguide-generate: error", FileNotFoundError: "autoguide-generate: error"},
    )


if __name__ == "__main__":
    main()
