"""``autoguide-eval``: generate samples with the shared sampler and report every metric as JSON
(``conf/eval.yaml``; sampling options as for ``autoguide-generate``).

    autoguide-eval model=<file> guide=<file> guidance.weight=2.0 metrics=mnist seeds=0-4999
    autoguide-eval model=<file> metrics=toy2d class_labels=0 seeds=0-9999 seed_sets=3

    autoguide-eval protocol=edm2 model=<file> guide=<file> metrics.reference=img512.pkl vae_path=<vae>

Before sampling it logs which detectors (feature networks) are usable and refuses one that is
not, with its install line. Writes ``<output.dir>/metrics.json`` (``autoguide.eval.evaluate``:
best, mean, min, max and std over the seed sets, every set's values, and the provenance: model
files and hashes, guidance, sampler, seeds, detector and statistics-file hashes, code revision),
``metrics.csv`` (image metrics), ``statistics/set<j>.pkl`` (each set's feature statistics in
EDM2's layout) and ``statistics/reference.pkl`` (a reference computed from a dataset),
``evaluate.yaml``, and a preview of the first ``preview_images`` samples of set 0 in
``output.formats``. With ``shards.images`` set the images are measured in shards
(``autoguide.eval.shards``), shared by torchrun ranks or by ``shards.worker``/``shards.workers``
(SLURM array tasks, ``slurm/eval.sbatch``); finished shards are skipped on a rerun.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from autoguide.apps.common import evaluation, with_pair
from autoguide.apps.hydra_app import run_hydra_app
from autoguide.apps.sampling_configs import EvalConfig, ShardSettings, read_config
from autoguide.core.typed_settings import ConfigError, plain
from autoguide.data.sample_files import write_outputs
from autoguide.data.vae import codec_for
from autoguide.eval.evaluate import Evaluation, sample_chunks
from autoguide.eval.evaluator import Evaluator
from autoguide.eval.shards import ShardedEvaluation
from autoguide.eval.statistics import stats_key, write_statistics
from autoguide.io import (
    file_sha256,
    write_csv_atomic,
    write_json_atomic,
    write_text_atomic,
)
from autoguide.runtime.claim import claim_folder
from autoguide.runtime.process import (
    ModelLoader,
    RankInfo,
    code_revision,
    rank_from_env,
    resolve_device,
    wait_for_ranks,
)
from autoguide.sample.guidance import GuidanceTerm
from autoguide.sample.guidance_spec import build_guidance
from autoguide.sample.labels import class_labels, model_label_dim
from autoguide.sample.seeds import format_seeds

log = logging.getLogger(__name__)


def write_preview(settings: EvalConfig, net: nn.Module, terms: list[GuidanceTerm], measure: Evaluation) -> None:
    """The first ``preview_images`` samples of seed set 0, in ``output.formats``."""
    count, output = settings.preview_images, settings.output
    if count <= 0 or not output.formats:
        return
    seeds, classes = class_labels(measure.plan.class_labels, list(measure.plan.seeds[:count]), model_label_dim(net))
    codec = codec_for(net, measure.vae_path, measure.device)
    samples, _ = next(sample_chunks(net, terms, seeds, classes, measure.generation, measure.device, len(seeds), codec))
    write_outputs(output, samples, seeds, classes, title=settings.model_file())


def worker_info(shards: ShardSettings) -> RankInfo:
    """This process's share of the shards: ``shards.worker`` of ``shards.workers`` (SLURM array
    tasks), else the launcher's rank (torchrun), else all of them."""
    launched = rank_from_env()
    worker, workers = shards.worker, shards.workers
    if worker is None and workers is None:
        if launched.world_size > 1 and shards.images is not None and "MASTER_ADDR" not in os.environ:
            raise ConfigError(
                "sharded evaluation over several ranks needs torchrun (its ranks meet at MASTER_ADDR); "
                "under SLURM use array tasks (slurm/eval.sbatch)"
            )
        return launched
    if worker is None or workers is None or not 0 <= worker < workers:
        raise ConfigError(f"shards.worker={worker}, shards.workers={workers}: give both, with 0 <= worker < workers")
    if launched.world_size > 1:
        raise ConfigError(
            "shards.worker/workers: this process was started as one of several ranks; let the launcher share the work"
        )
    if shards.images is None:
        raise ConfigError(
            "shards.worker/workers share shards: set shards.images (images per shard), e.g. with protocol=edm2"
        )
    return RankInfo(worker, workers)


def fingerprint(settings: EvalConfig, measure: Evaluation, load: ModelLoader) -> dict[str, Any]:
    """Everything a shard's sums depend on: models (with hashes), guidance, sampler, seeds, detectors."""
    return {
        "models": {path: file_sha256(path) for path in load.models},
        "guidance": settings.guidance_settings.to_dict(),
        "sampler": plain(settings.sampler),
        "precision": settings.precision,
        "class_labels": plain(settings.class_labels),
        "seeds": format_seeds(measure.plan.seeds),
        "seed_sets": measure.plan.seed_sets,
        "vae_path": settings.vae_path,
        "extractors": {e.name: e.sha256 for e in measure.evaluator.extractors},
    }


def measure_sharded(
    settings: EvalConfig,
    measure: Evaluation,
    net: nn.Module,
    terms: list[GuidanceTerm],
    load: ModelLoader,
    stats_dir: Path,
) -> dict[str, Any] | None:
    """This process's shards, then the merged result if every shard is finished (torchrun: rank 0
    after all ranks; array tasks: whichever task finds the last shard done), else ``None``."""
    shards = settings.shards
    if shards.images is None:
        raise ConfigError("shards.images: not set; a sharded evaluation needs the images per shard")
    worker = worker_info(shards)
    sharded = ShardedEvaluation(
        measure, net, terms, Path(shards.dir), shards.images, fingerprint(settings, measure, load)
    )
    with claim_folder(shards.dir, role=f"worker{worker.rank}of{worker.world_size}"):
        done = sharded.run(worker)
    print(json.dumps({"worker": f"{worker.rank}/{worker.world_size}", **done}))
    launched = rank_from_env()
    wait_for_ranks(launched)
    missing = sharded.missing() if launched.rank == 0 else ["(rank 0 merges)"]
    if missing:
        log.info(
            "%d of %d shards are not finished yet; the worker that finishes the last one merges",
            len(missing),
            len(sharded.shards),
        )
        return None
    with claim_folder(settings.output.dir, role="merge", wait_s=600):
        return {
            **sharded.merge(stats_dir),
            "shards": {"folder": shards.dir, "count": len(sharded.shards), **done},
        }


def write_reference_statistics(evaluator: Evaluator, stats_dir: Path) -> str | None:
    """The statistics of a reference computed from a dataset, as ``<stats_dir>/reference.pkl``."""
    if evaluator.stats_file is not None or not evaluator.references:
        return None
    stats = {stats_key(name): {"mu": ref.mu, "sigma": ref.sigma} for name, ref in evaluator.references.items()}
    return str(write_statistics(stats, stats_dir / "reference.pkl"))


def write_csv(path: Path, result: dict[str, Any]) -> None:
    """One row per seed set, then the best, mean, min, max and std rows."""
    names = list(result["metrics"])
    rows = [
        {"row": f"set{i}", "seeds": s["seeds"], "images": s["images"], **s["metrics"]}
        for i, s in enumerate(result["sets"])
    ]
    rows += [
        {"row": label, **result[key]}
        for label, key in (("best", "metrics"), *((k, k) for k in ("mean", "min", "max", "std")))
    ]
    write_csv_atomic(path, rows, ["row", "seeds", "images", *names])


def run(cfg: DictConfig) -> dict[str, Any] | None:
    """Evaluate the model of ``cfg`` (``conf/eval.yaml``; guided as its ``guidance`` says);
    returns and writes the report (``None`` from a sharded worker that leaves the merge to another)."""
    settings = with_pair(read_config(EvalConfig, cfg))
    worker_info(settings.shards)  # the sharding options checked before anything is loaded
    device = resolve_device(settings.device)
    measure = evaluation(settings, device)
    load = ModelLoader(device)
    model = settings.model_file()
    net = load(model)
    terms = build_guidance(settings.guidance_settings, load)
    out = Path(settings.output.dir)
    stats_dir = out / "statistics"
    if settings.shards.images is None:
        result = measure(net, terms, stats_dir)
    else:
        merged = measure_sharded(settings, measure, net, terms, load, stats_dir)
        if merged is None:
            return None
        result = merged
    report = {
        "model": model,
        "guide": settings.guide,
        "guidance": settings.guidance_settings.to_dict(),
        "sampler": plain(settings.sampler),
        "class_labels": plain(settings.class_labels),
        "seed_sets": measure.plan.seed_sets,
        **result,
        "feature_networks": measure.evaluator.info(),
        "reference_statistics": write_reference_statistics(measure.evaluator, stats_dir),
        "model_sha256": {path: file_sha256(path) for path in load.models},
        "model_cards": load.cards(),
        "code_revision": code_revision(),
    }
    write_json_atomic(out / "metrics.json", report)
    if measure.evaluator.toy is None:
        write_csv(out / "metrics.csv", result)
    write_text_atomic(out / "evaluate.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    if rank_from_env().rank == 0:
        write_preview(settings, net, terms, measure)
    print(json.dumps({"metrics": result["metrics"], "report": str(out / "metrics.json")}))
    return report


def main() -> None:
    """Console entry point ``autoguide-eval``."""
    run_hydra_app("eval", run, errors={ValueError: "autoguide-eval: error", FileNotFoundError: "autoguide-eval: error"})


if __name__ == "__main__":
    main()
