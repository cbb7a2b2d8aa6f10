"""Datasets and the training datamodule: bundled MNIST-5k, the 2D tree toy with exact density,
image folders and ``.npz`` archives, WebDataset shards (read and write).

Items are ``(float32 tensor, int label)``; images are CHW in [-1, 1]. Names are imported on
first use (PEP 562), so ``import autoguide.data.toy2d`` does not pull in Lightning or
webdataset.
"""

from autoguide.lazy import lazy_getattr

_EXPORTS = {
    "DiffusionDataModule": "datamodule",
    "ExactToyDenoiser": "toy2d",
    "ImageFolderDataset": "folder",
    "IndexedShardDataset": "shards",
    "MNIST5k": "mnist",
    "NpzDataset": "folder",
    "ShardDataset": "shards",
    "Toy2DDataset": "toy2d",
    "ToyMixture": "toy2d",
    "TrainStream": "stream",
    "build_dataset": "registry",
    "epoch_permutation": "stream",
    "float_to_uint8": "images",
    "toy_mixture": "toy2d",
    "uint8_to_float": "images",
    "write_shards": "shards",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
