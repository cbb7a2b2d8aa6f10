"""WebDataset shards: atomic, deterministic writing; bit-exact reading through webdataset and
through the offset index; equal-length disjoint splits across simulated DDP ranks."""

import tarfile

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from autoguide.data.images import float_to_uint8
from autoguide.data.shards import IndexedShardDataset, ShardDataset, read_shard_index, write_shards


def _images(n, size=8, channels=3):
    return np.random.default_rng(0).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


@pytest.fixture
def written(tmp_path):
    """20 RGB images labeled by their index, 3 per shard -> 7 shards (the last holds 2)."""
    images = _images(20)
    paths = write_shards(((images[i], i) for i in range(20)), tmp_path / "out", "train", 3)
    return images, paths


def test_write_layout_atomic_and_deterministic(written, tmp_path):
    images, paths = written
    assert [p.name for p in paths] == [f"train-{i:06d}.tar" for i in range(7)]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [p.name for p in paths]
    with tarfile.open(paths[0]) as archive:
        assert archive.getnames() == [f"{k:09d}.{e}" for k in range(3) for e in ("cls", "png")]
        assert archive.extractfile("000000001.cls").read() == b"1"
    assert [len(read_shard_index(p)) for p in paths] == [3, 3, 3, 3, 3, 3, 2]
    again = write_shards(((images[i], i) for i in range(20)), tmp_path / "again", "train", 3)
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(paths, again, strict=True))


def test_stream_round_trip_is_bit_exact(written):
    images, paths = written
    data = ShardDataset(paths)
    assert (data.label_dim, data.img_channels, data.img_resolution) == (20, 3, 8)
    items = list(data)
    assert [label for _, label in items] == list(range(20))
    for x, label in items:
        assert x.dtype == torch.float32 and x.shape == (3, 8, 8)
        assert np.array_equal(float_to_uint8(x), images[label])


def test_indexed_round_trip_is_bit_exact(written):
    images, paths = written
    data = IndexedShardDataset(str(paths[0].parent))  # a folder
    assert len(data) == 20 and data.label_dim == 20
    for i in (19, 0, 7):
        x, label = data[i]
        assert label == i and np.array_equal(float_to_uint8(x), images[i])
    brace = str(paths[0].parent / "train-{000000..000001}.tar")
    assert len(IndexedShardDataset(brace)) == 6


def test_grayscale_unlabeled(tmp_path):
    images = _images(4, channels=1)
    paths = write_shards(((img[:, :, 0], None) for img in images), tmp_path, "g", 10)
    data = IndexedShardDataset(paths)
    assert (data.label_dim, data.img_channels) == (0, 1)
    assert np.array_equal(float_to_uint8(data[3][0]), images[3]) and data[3][1] == 0


def _rank_items(monkeypatch, paths, rank, batch_size, num_workers):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", "2")
    loader = DataLoader(ShardDataset(paths, batch_size), batch_size=batch_size, num_workers=num_workers)
    return [batch[1].tolist() for batch in loader]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_two_ranks_get_disjoint_data_of_equal_length(written, monkeypatch, num_workers):
    """Shard sizes 3,3,3,3,3,3,2. Rank 0 gets shards 0,2,4,6 (11 samples), rank 1 shards
    1,3,5 (9). One worker: m = min(11, 9) = 9 -> 8 with batch 4: 2 batches per rank. Two
    workers: pairs get {0,4}=6, {2,6}=5, {1,5}=6, {3}=3, so m = 3 -> 2 with batch 2: one
    batch per worker, 2 per rank."""
    _, paths = written
    batch_size = 4 if num_workers == 0 else 2
    per_rank = [_rank_items(monkeypatch, paths, r, batch_size, num_workers) for r in (0, 1)]
    assert [len(b) for b in per_rank] == [2, 2]
    assert all(len(batch) == batch_size for b in per_rank for batch in b)
    labels = [{label for batch in b for label in batch} for b in per_rank]
    assert not labels[0] & labels[1]
    shard_of = lambda label: label // 3  # noqa: E731
    assert {shard_of(x) % 2 for x in labels[0]} == {0} and {shard_of(x) % 2 for x in labels[1]} == {1}


def test_too_few_samples_for_ranks_is_an_error(tmp_path, monkeypatch):
    paths = write_shards(((img, 0) for img in _images(3)), tmp_path, "s", 3)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"1 shards.*2 ranks"):
        list(ShardDataset(paths))


def test_write_errors(tmp_path):
    images = _images(2)
    with pytest.raises(ValueError, match=r"sample 1.*label all samples or none"):
        write_shards([(images[0], 1), (images[1], None)], tmp_path, "x", 5)
    with pytest.raises(ValueError, match=r"sample 0.*uint8"):
        write_shards([(images[0].astype(np.float32), 1)], tmp_path, "y", 5)
    with pytest.raises(ValueError, match=r"sample 0.*integer >= 0"):
        write_shards([(images[0], -2)], tmp_path, "z", 5)
    assert not list(tmp_path.iterdir())  # nothing half-written is left behind


def test_read_errors_name_the_shard(tmp_path):
    with tarfile.open(tmp_path / "bad.tar", "w") as archive:
        archive.add(__file__, arcname="000.txt")
    with pytest.raises(ValueError, match=r"bad\.tar.*'000'.*'png'"):
        IndexedShardDataset(tmp_path / "bad.tar")
    with pytest.raises(FileNotFoundError, match=r"absent.tar"):
        ShardDataset([tmp_path / "absent.tar"])
