"""The training stream: an infinite, deterministic sequence of batches that a resumed run
continues exactly.

Global stream: the concatenation over epochs e = 0, 1, ... of ``randperm(n)`` drawn with a
generator seeded from ``(seed, e)``; position ``g`` (0-based count of images drawn across all
ranks) holds dataset index ``perm_{g // n}[g mod n]``. Rank ``r`` of ``W`` takes the strided
slice ``g = r, r + W, r + 2W, ...`` and starts at ``start_nimg`` (images already seen by all
ranks together), so its m-th item sits at ``g = start_nimg + r + W m``. After every rank drew
k images the run has consumed exactly positions ``[start_nimg, start_nimg + W k)``.

Each rank yields whole batches (use ``DataLoader(stream, batch_size=None)``); with several
loader workers, worker w makes local batches w, w + K, w + 2K, ... and the loader's
round-robin returns them in order, so the batches do not depend on the number of workers.

A dataset whose items are random draws (``stochastic = True``, e.g. the latent dataset, which
draws ``mean + std * eps`` per read) is read with ``dataset.read(index, item_seed(seed, g))``:
its randomness is a function of the data seed and the global position only, never of the
global RNG, the rank, the worker or the number of processes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """``torch.randperm(n)`` with a CPU generator seeded by the 63-bit hash
    ``SeedSequence([seed, epoch])`` (distinct, well-mixed seeds for every (seed, epoch))."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0]
    generator = torch.Generator().manual_seed(int(state) >> 1)
    return torch.randperm(n, generator=generator)


class ItemSource(Protocol):
    """A training dataset: ``len`` items ``(tensor, label)``."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]: ...


@runtime_checkable
class StochasticSource(ItemSource, Protocol):
    """A dataset whose items are random draws (``stochastic`` true): ``read(index, seed)``
    draws item ``index`` from ``seed`` (``autoguide.data.latents``)."""

    stochastic: bool

    def read(self, index: int, seed: int) -> tuple[torch.Tensor, int]: ...


ITEM_DRAW = 1  # spawn key of the per-item draws, apart from the epoch permutations


def item_seed(seed: int, position: int) -> int:
    """A 63-bit seed for the random draw of the item at global stream position ``position``
    (``SeedSequence([seed, position], spawn_key=(ITEM_DRAW,))``)."""
    sequence = np.random.SeedSequence([int(seed), int(position)], spawn_key=(ITEM_DRAW,))
    return int(sequence.generate_state(1, np.uint64)[0] >> 1)


class TrainStream(IterableDataset):
    """Infinite micro-batches ``(images [b, ...] float32, labels [b, label_dim] float32
    one-hot)`` of ``dataset`` for one rank, ``b = micro_batch`` (images per device and forward
    pass, not the global ``train.batch_size``). With ``label_dim = 0`` (unconditional) labels
    are the empty tensor [b, 0]; pass ``None`` to the network in that case."""

    def __init__(
        self,
        dataset: ItemSource,
        micro_batch: int,
        label_dim: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_nimg: int = 0,
    ) -> None:
        if micro_batch <= 0:
            raise ValueError(f"micro_batch must be positive, got {micro_batch}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if start_nimg < 0 or start_nimg % world_size:
            raise ValueError(f"start_nimg {start_nimg} must be >= 0 and a multiple of world_size {world_size}")
        if len(dataset) == 0:
            raise ValueError("the training dataset is empty")
        self.dataset = dataset
        self.micro_batch = micro_batch
        self.label_dim = label_dim
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_nimg = start_nimg
        self._permutations: dict[int, torch.Tensor] = {}

    def global_positions(self, batch: int) -> range:
        """Global stream positions of this rank's local batch number ``batch``."""
        first = self.start_nimg + self.rank + self.world_size * batch * self.micro_batch
        return range(first, first + self.world_size * self.micro_batch, self.world_size)

    def dataset_index(self, position: int) -> int:
        """Dataset index at global stream position ``position``."""
        n = len(self.dataset)
        epoch = position // n
        if epoch not in self._permutations:
            self._permutations = {epoch: epoch_permutation(n, self.seed, epoch)}
        return int(self._permutations[epoch][position % n])

    def item(self, position: int) -> tuple[torch.Tensor, int]:
        """The item at global stream position ``position`` (drawn from ``item_seed`` if the
        dataset is stochastic)."""
        index = self.dataset_index(position)
        if isinstance(self.dataset, StochasticSource) and self.dataset.stochastic:
            return self.dataset.read(index, item_seed(self.seed, position))
        return self.dataset[index]

    def batch(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Local batch number ``batch`` of this rank."""
        items = [self.item(g) for g in self.global_positions(batch)]
        images = torch.stack([image for image, _ in items]).to(torch.float32)
        classes = torch.tensor([label for _, label in items], dtype=torch.long)
        if not self.label_dim:
            return images, torch.zeros(len(items), 0)
        if classes.max() >= self.label_dim:
            raise ValueError(f"label {int(classes.max())} is out of range for label_dim {self.label_dim}")
        return images, torch.nn.functional.one_hot(classes, self.label_dim).to(torch.float32)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        worker = get_worker_info()
        first, step = (0, 1) if worker is None else (worker.id, worker.num_workers)
        for index in itertools.count(first, step):
            yield self.batch(index)
