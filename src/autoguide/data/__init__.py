"""Datasets and the training datamodule: bundled MNIST-5k, the 2D tree toy with exact density,
image folders and ``.npz`` archives, WebDataset shards (read and write), latent shards of a VAE
(encode and read).

Items are ``(float32 tensor, int label)``; images are CHW in [-1, 1]. Names are imported on
first use (PEP 562), so ``import autoguide.data.toy2d`` does not pull in Lightning or
webdataset.
"""

from autoguide.core.lazy import lazy_getattr

_EXPORTS = {
    "DiffusionDataModule": "datamodule",
    "ExactToyDenoiser": "toy2d",
    "ImageFolderDataset": "folder",
    "IndexedShardDataset": "shards",
    "LatentShardDataset": "latents",
    "MNIST5k": "mnist",
    "NpzDataset": "folder",
    "ShardDataset": "shards",
    "Toy2DDataset": "toy2d",
    "ToyMixture": "toy2d",
    "TrainStream": "stream",
    "build_dataset": "registry",
    "build_reference_dataset": "registry",
    "encode_dataset": "encode",
    "epoch_permutation": "stream",
    "float_to_uint8": "images",
    "item_seed": "stream",
    "toy_mixture": "toy2d",
    "uint8_to_float": "images",
    "write_shards": "shards",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
