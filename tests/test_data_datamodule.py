"""The training index stream and DiffusionDataModule: exact resume, rank slicing, worker
independence, label encoding, dataset configs."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from autoguide.data.datamodule import DataSettings, DiffusionDataModule, dataset_info, training_dataset
from autoguide.data.stream import TrainStream, epoch_permutation


class Numbers(Dataset):
    """Item i is (tensor([i]), i % 3)."""

    label_dim = 3

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.tensor([float(i)]), i % 3


def _ids(stream, count):
    """Dataset indices of the first ``count`` batches of ``stream``."""
    return [stream.batch(j)[0][:, 0].long().tolist() for j in range(count)]


def test_epoch_permutation_is_a_fixed_permutation():
    p = epoch_permutation(50, seed=7, epoch=3)
    assert sorted(p.tolist()) == list(range(50))
    assert torch.equal(p, epoch_permutation(50, 7, 3))
    assert not torch.equal(p, epoch_permutation(50, 7, 4))
    assert not torch.equal(p, epoch_permutation(50, 8, 3))


def test_ranks_interleave_into_epochs_that_cover_the_data():
    """Merging the ranks' items in global order gives, epoch by epoch, each index once."""
    n, world, batch, steps = 10, 2, 3, 10
    per_rank = [_ids(TrainStream(Numbers(n), batch, 3, seed=1, rank=r, world_size=world), steps) for r in range(world)]
    flat = [[i for batch_ids in ids for i in batch_ids] for ids in per_rank]
    merged = [flat[g % world][g // world] for g in range(world * batch * steps)]
    for e in range(len(merged) // n):
        assert sorted(merged[e * n : (e + 1) * n]) == list(range(n))
    assert merged[:n] == epoch_permutation(n, 1, 0).tolist()


@pytest.mark.parametrize("world", [1, 3])
def test_resume_continues_the_uninterrupted_stream(world):
    n, batch, done, more = 17, 4, 5, 6  # epochs end mid-batch
    full = [_ids(TrainStream(Numbers(n), batch, 3, 9, r, world), done + more) for r in range(world)]
    start = done * batch * world
    resumed = [_ids(TrainStream(Numbers(n), batch, 3, 9, r, world, start_nimg=start), more) for r in range(world)]
    for r in range(world):
        assert resumed[r] == full[r][done:]
    with pytest.raises(ValueError, match="multiple of world_size 3"):
        TrainStream(Numbers(n), batch, 3, 9, 0, 3, start_nimg=4)


def test_loader_workers_do_not_change_the_batches():
    stream = TrainStream(Numbers(23), 5, 3, seed=4, rank=1, world_size=2, start_nimg=6)
    expected = _ids(stream, 7)
    for workers in (0, 2):
        loader = iter(DataLoader(stream, batch_size=None, num_workers=workers))
        assert [next(loader)[0][:, 0].long().tolist() for _ in range(7)] == expected


def test_labels_one_hot_or_empty():
    images, labels = TrainStream(Numbers(9), 6, 3, seed=0).batch(0)
    ids = images[:, 0].long()
    assert labels.dtype == torch.float32 and labels.shape == (6, 3)
    assert torch.equal(labels.argmax(1), ids % 3) and torch.equal(labels.sum(1), torch.ones(6))
    _, empty = TrainStream(Numbers(9), 6, 0, seed=0).batch(0)
    assert empty.shape == (6, 0)


def test_data_settings_split_the_loader_keys_from_the_dataset_keys():
    data = DataSettings.from_mapping({"name": "toy2d", "num_samples": 64, "seed": 3, "conditional": True})
    assert data == DataSettings({"name": "toy2d", "num_samples": 64}, num_workers=0, seed=3, conditional=True)
    with pytest.raises(ValueError, match=r"data\.batch_size: .*train\.batch_size .*train\.micro_batch"):
        DataSettings.from_mapping({"name": "toy2d", "batch_size": 8})


def test_datamodule_toy2d_info_and_batches():
    data = DataSettings.from_mapping(
        {"name": "toy2d", "num_samples": 64, "classes": "AB", "seed": 3, "conditional": True}
    )
    dm = DiffusionDataModule(data, micro_batch=8)
    assert dataset_info(dm.dataset, data) == {
        "img_channels": 2,
        "img_resolution": 0,
        "label_dim": 2,
        "num_images": 64,
    }
    x, labels = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 2) and x.dtype == torch.float32 and labels.shape == (8, 2)
    assert torch.equal(x[0], dm.dataset[epoch_permutation(64, 3, 0)[0].item()][0])
    unconditional = dataclasses.replace(data, conditional=False)
    assert dataset_info(dm.dataset, unconditional)["label_dim"] == 0
    assert next(iter(DiffusionDataModule(unconditional, 8).train_dataloader()))[1].shape == (8, 0)


def test_datamodule_takes_rank_and_nimg_from_the_trainer():
    dm = DiffusionDataModule(DataSettings.from_mapping({"name": "toy2d", "num_samples": 40, "seed": 5}), 4)
    dm.trainer = SimpleNamespace(lightning_module=SimpleNamespace(nimg=24), global_rank=1, world_size=2)
    stream = dm.train_dataloader().dataset
    assert (stream.rank, stream.world_size, stream.start_nimg) == (1, 2, 24)
    first = next(iter(dm.train_dataloader()))[0]
    reference = TrainStream(dm.dataset, 4, 0, 5, rank=1, world_size=2).batch(3)[0]
    assert torch.equal(first, reference)


def test_datamodule_mnist_and_npz(tmp_path):
    data = DataSettings.from_mapping({"name": "mnist5k", "split": "test", "channels": 3, "conditional": True})
    assert dataset_info(training_dataset(data), data) == {
        "img_channels": 3,
        "img_resolution": 32,
        "label_dim": 10,
        "num_images": 500,
    }
    np.savez(tmp_path / "u.npz", images=np.zeros((4, 16, 16, 1), np.uint8))
    with pytest.raises(ValueError, match=r"conditional: true.*no labels"):
        training_dataset(
            DataSettings.from_mapping({"name": "npz", "path": str(tmp_path / "u.npz"), "conditional": True})
        )


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"name": "imagenet"}, "'imagenet' is unknown.*mnist5k"),
        (
            {"name": "mnist5k", "resolution": 64},
            "'mnist5k'.*resolution.*'split', 'channels'",
        ),
        ({"name": "npz"}, "'npz'.*path"),
    ],
)
def test_config_errors(cfg, message):
    with pytest.raises(ValueError, match=message):
        training_dataset(DataSettings.from_mapping(cfg))
    with pytest.raises(ValueError, match="micro_batch=0"):
        DiffusionDataModule(DataSettings.from_mapping({"name": "mnist5k"}), 0)


def test_lightning_resume_continues_exactly(tmp_path):
    """A Trainer resumed from a checkpoint after 4 steps sees steps 5..10 of an uninterrupted
    run: the loader starts at the restored LightningModule.nimg."""
    import lightning as L

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)
            self.nimg, self.seen = 0, []

        def training_step(self, batch, index):
            self.seen.append(batch[0].clone())
            self.nimg += len(batch[0]) * self.trainer.world_size
            return self.lin(batch[0]).square().mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

        def on_save_checkpoint(self, checkpoint):
            checkpoint["nimg"] = self.nimg

        def on_load_checkpoint(self, checkpoint):
            self.nimg = checkpoint["nimg"]

    data = DataSettings.from_mapping({"name": "toy2d", "num_samples": 50, "seed": 1, "conditional": True})
    options = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
        "default_root_dir": tmp_path,
    }

    def fit(max_steps, ckpt_path=None):
        module, trainer = Recorder(), L.Trainer(max_steps=max_steps, **options)
        trainer.fit(module, DiffusionDataModule(data, 8), ckpt_path=ckpt_path)
        return module, trainer

    full, _ = fit(10)
    _, first = fit(4)
    first.save_checkpoint(tmp_path / "step4.ckpt")
    resumed, _ = fit(10, tmp_path / "step4.ckpt")
    assert len(resumed.seen) == 6 and resumed.nimg == 80
    assert torch.equal(torch.stack(resumed.seen), torch.stack(full.seen[4:]))
