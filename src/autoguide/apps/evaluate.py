"""``autoguide-eval``: generate samples with the shared sampler and report every metric as JSON
(``conf/eval.yaml``; sampling options as for ``autoguide-generate``).

    autoguide-eval model=<file> guide=<file> guidance.weight=2.0 metrics=mnist seeds=0-4999
    autoguide-eval model=<file> metrics=toy2d class_labels=0 seeds=0-9999 seed_sets=3

Writes ``<output.dir>/metrics.json`` (``autoguide.eval.evaluate``: best and mean over the seed
sets, every set's values) and ``evaluate.yaml``; a preview of the first ``preview_images``
samples of set 0 in ``output.formats``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from autoguide.apps.common import apply_pair, evaluation, output_settings, plain
from autoguide.apps.hydra_app import run_hydra_app
from autoguide.eval.evaluate import Evaluation, sample_chunks
from autoguide.io import write_json_atomic, write_text_atomic
from autoguide.latent import codec_for
from autoguide.runtime import ModelLoader, resolve_device
from autoguide.sample.config import build_guidance
from autoguide.sample.guidance import GuidanceTerm
from autoguide.sample.labels import class_labels
from autoguide.sample.outputs import write_outputs


def write_preview(cfg: DictConfig, net: nn.Module, terms: list[GuidanceTerm], measure: Evaluation) -> None:
    """The first ``preview_images`` samples of seed set 0, in ``output.formats``."""
    count = int(cfg.preview_images)
    output = output_settings(cfg)
    if count <= 0 or not output.formats:
        return
    seeds, classes = class_labels(measure.plan.class_labels, list(measure.plan.seeds[:count]), int(net.label_dim))
    codec = codec_for(net, measure.vae_path, measure.device)
    samples, _ = next(sample_chunks(net, terms, seeds, classes, measure.generation, measure.device, len(seeds), codec))
    write_outputs(output, samples, seeds, classes, title=str(cfg.model))


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.model`` (guided as ``cfg.guidance`` says); returns and writes the report."""
    device = resolve_device(str(cfg.device))
    apply_pair(cfg)
    measure = evaluation(cfg, device)
    load = ModelLoader(device)
    net = load(str(cfg.model))
    terms = build_guidance(plain(cfg.guidance), load)
    result = measure(net, terms)
    report = {
        "model": str(cfg.model),
        "guide": None if cfg.get("guide") is None else str(cfg.guide),
        "guidance": plain(cfg.guidance),
        "sampler": plain(cfg.sampler),
        "class_labels": plain(cfg.class_labels),
        "seed_sets": measure.plan.seed_sets,
        **result,
        "feature_networks": measure.evaluator.info(),
        "model_cards": load.cards(),
    }
    out = Path(cfg.output.dir)
    write_json_atomic(out / "metrics.json", report)
    write_text_atomic(out / "evaluate.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    write_preview(cfg, net, terms, measure)
    print(json.dumps({"metrics": result["metrics"], "report": str(out / "metrics.json")}))
    return report


def main() -> None:
    """Console entry point ``autoguide-eval``."""
    run_hydra_app("eval", run, errors={ValueError: "autoguide-eval: error", FileNotFoundError: "autoguide-eval: error"})


if __name__ == "__main__":
    main()
