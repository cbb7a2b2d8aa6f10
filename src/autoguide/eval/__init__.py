"""Evaluation: feature extractors (Inception-v3, DINOv2, the project's MNIST classifier),
Fréchet distance, improved precision/recall, exact 2D-toy metrics, cached reference
statistics, statistics files (EDM2 ``.pkl``, EDM ``.npz``), model evaluation over seed sets
(``evaluate``) and guidance sweeps (``sweep``); the apps ``autoguide-eval`` /
``autoguide-sweep`` sit on top (``autoguide.apps``)."""

from autoguide.eval.evaluator import Evaluator, lower_is_better
from autoguide.eval.extractors import build_extractor
from autoguide.eval.features import FeatureExtractor
from autoguide.eval.frechet import GaussianAccumulator, frechet_distance, gaussian_stats
from autoguide.eval.manifold_pr import precision_recall
from autoguide.eval.reference import ReferenceStats, reference_stats
from autoguide.eval.statistics import StatisticsError, read_statistics, write_statistics
from autoguide.eval.toy_metrics import ToyMetricsConfig, toy_metrics

__all__ = [
    "Evaluator",
    "FeatureExtractor",
    "GaussianAccumulator",
    "ReferenceStats",
    "StatisticsError",
    "ToyMetricsConfig",
    "build_extractor",
    "frechet_distance",
    "gaussian_stats",
    "lower_is_better",
    "precision_recall",
    "read_statistics",
    "reference_stats",
    "toy_metrics",
    "write_statistics",
]
