"""PowerEMACallback inside real (tiny) Lightning training runs: exact EMA profile with
gradient accumulation and random batch sizes, snapshot timing and files, resume, rank 0
only, and post-hoc reconstruction of a directly tracked third EMA."""

import itertools

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import autoguide
from autoguide.diffusion import edm2_loss
from autoguide.ema.callback import PowerEMACallback
from autoguide.ema.posthoc import reconstruct
from autoguide.ema.power import sigma_rel_to_gamma
from autoguide.ema.snapshots import read_index, write_index
from autoguide.io import read_model_file
from autoguide.nets import build_network, config_dict

MLP = {"arch": "mlp", "img_channels": 2, "label_dim": 0, "width": 16, "depth": 2}


class TinyDiffusion(pl.LightningModule):
    """The training-module contract of autoguide.train: ``.net`` and ``.nimg`` (images seen
    after the latest optimizer step, restored on resume). Batches are drawn inside
    ``training_step`` from a generator seeded by the image count, with a random batch size,
    so a resumed run continues exactly."""

    def __init__(self, batch_sizes=(8, 16, 24), lr=1e-2, record=False, network=MLP):
        super().__init__()
        torch.manual_seed(0)
        self.net = build_network(network)
        self.nimg = 0
        self.pending = 0
        self.batch_sizes = batch_sizes
        self.lr = lr
        self.record = record
        self.trajectory: list[tuple[int, dict[str, torch.Tensor]]] = []

    def training_step(self, batch, batch_idx):
        g = torch.Generator().manual_seed(1000003 * self.nimg + self.pending)
        size = self.batch_sizes[int(torch.randint(len(self.batch_sizes), (1,), generator=g))]
        centers = torch.tensor([[1.0, 0.0], [-1.0, 0.5]])[torch.randint(2, (size,), generator=g)]
        images = centers + 0.1 * torch.randn(size, 2, generator=g)
        self.pending += size
        return edm2_loss(self.net, images, None, -0.8, 1.6, generator=g)

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        self.nimg += self.pending
        self.pending = 0
        if self.record:
            params = {k: v.detach().clone().double() for k, v in self.net.named_parameters()}
            self.trajectory.append((self.nimg, params))

    def configure_optimizers(self):
        return torch.optim.Adam(self.net.parameters(), lr=self.lr, betas=(0.9, 0.99))

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(1_000_000, 1)), batch_size=1)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["nimg"] = self.nimg

    def on_load_checkpoint(self, checkpoint):
        self.nimg = checkpoint["nimg"]


def trainer(root, max_steps, callbacks, **kwargs):
    options = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": max_steps,
        "callbacks": callbacks,
        "default_root_dir": root,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
    }
    return pl.Trainer(**{**options, **kwargs})


def direct_average(trajectory, std, until):
    """Closed-form power-EMA weights applied to the recorded post-step weights."""
    g = sigma_rel_to_gamma(std)
    points = [(t, w) for t, w in trajectory if t <= until]
    out, prev = {}, 0
    for t, w in points:
        weight = ((t / until) ** (g + 1)) - ((prev / until) ** (g + 1))
        for k, v in w.items():
            out[k] = out.get(k, 0) + weight * v
        prev = t
    return out


def test_emas_and_snapshots_with_accumulation_and_random_batches(tmp_path):
    module = TinyDiffusion(record=True)
    callback = PowerEMACallback(stds=(0.05, 0.1), snapshot_kimg=0.4, out_dir=tmp_path / "phema")
    trainer(tmp_path, 100, [callback], accumulate_grad_batches=2).fit(module)
    times = [t for t, _ in module.trajectory]
    assert len(times) == 100 and times[-1] == module.nimg == callback.ema.nimg
    for std in (0.05, 0.1):
        expected = direct_average(module.trajectory, std, module.nimg)
        for k, v in callback.ema.modules[std].named_parameters():
            torch.testing.assert_close(v.double(), expected[k], rtol=1e-5, atol=1e-6)
    # snapshot times: the first update at or past each multiple of 400 images, plus the end
    crossing = [t for prev, t in itertools.pairwise([0, *times]) if t // 400 > prev // 400]
    expected_times = sorted(set(crossing) | {times[-1]})
    index = read_index(tmp_path / "phema")
    assert [(e.nimg, e.std) for e in index.entries] == [(t, s) for t in expected_times for s in (0.05, 0.1)]
    assert index.network == config_dict(MLP)
    assert set(index.buffers) == {k for k, _ in module.net.named_buffers()}
    for entry in index.entries[::5]:
        net = autoguide.load_denoiser(entry.path)
        assert net.card["nimg"] == entry.nimg and net.card["ema_std"] == entry.std
        expected = direct_average(module.trajectory, entry.std, entry.nimg)
        for k, v in net.named_parameters():
            torch.testing.assert_close(v.double(), expected[k], rtol=1e-5, atol=1e-6)
        for k, v in net.named_buffers():
            assert torch.equal(v, dict(module.net.named_buffers())[k])
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "phema").iterdir())


def test_resume_continues_emas_and_never_duplicates_snapshots(tmp_path):
    """Run A: 120 uninterrupted steps. Run B: 90 steps with checkpoints every 30, then
    resumed from the step-60 checkpoint (its snapshots after step 60 are an abandoned
    continuation) up to 120. B must end with A's EMAs and A's snapshot index and files."""
    a = TinyDiffusion()
    cb_a = PowerEMACallback(snapshot_kimg=0.5, out_dir=tmp_path / "a")
    trainer(tmp_path / "ra", 120, [cb_a]).fit(a)

    ckpts = tmp_path / "ckpt"
    saver = pl.callbacks.ModelCheckpoint(dirpath=ckpts, every_n_train_steps=30, save_top_k=-1)
    b = TinyDiffusion()
    trainer(
        tmp_path / "rb",
        90,
        [PowerEMACallback(snapshot_kimg=0.5, out_dir=tmp_path / "b"), saver],
        enable_checkpointing=True,
    ).fit(b)
    before = read_index(tmp_path / "b").entries
    ckpt = next(ckpts.glob("*step=60.ckpt"))
    b2 = TinyDiffusion()
    cb_b = PowerEMACallback(snapshot_kimg=0.5, out_dir=tmp_path / "b")
    with pytest.warns(UserWarning, match="removing"):
        trainer(tmp_path / "rb", 120, [cb_b]).fit(b2, ckpt_path=ckpt)
    assert any(e.nimg > torch.load(ckpt, weights_only=True)["nimg"] for e in before)

    assert b2.nimg == a.nimg
    for std in (0.05, 0.1):
        for pa, pb in zip(cb_a.ema.modules[std].parameters(), cb_b.ema.modules[std].parameters(), strict=True):
            torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7)
    ia, ib = read_index(tmp_path / "a"), read_index(tmp_path / "b")
    assert [(e.nimg, e.std) for e in ia.entries] == [(e.nimg, e.std) for e in ib.entries]
    assert sorted(p.name for p in (tmp_path / "b").glob("*.safetensors")) == [e.path.name for e in ib.entries]
    for ea, eb in zip(ia.entries, ib.entries, strict=True):
        sa, sb = read_model_file(ea.path)[0], read_model_file(eb.path)[0]
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k], rtol=1e-6, atol=1e-7)


def test_fresh_run_refuses_a_folder_with_snapshots(tmp_path):
    trainer(tmp_path, 20, [PowerEMACallback(snapshot_kimg=0.1, out_dir=tmp_path / "p")]).fit(TinyDiffusion())
    with pytest.raises(ValueError, match="already holds"):
        trainer(tmp_path, 20, [PowerEMACallback(snapshot_kimg=0.1, out_dir=tmp_path / "p")]).fit(TinyDiffusion())


def test_folder_of_another_architecture_is_refused(tmp_path):
    trainer(tmp_path, 20, [PowerEMACallback(snapshot_kimg=0.1, out_dir=tmp_path / "p")]).fit(TinyDiffusion())
    other = TinyDiffusion(network={**MLP, "width": 8})
    with pytest.raises(ValueError, match="different network architecture"):
        trainer(tmp_path, 20, [PowerEMACallback(snapshot_kimg=0.1, out_dir=tmp_path / "p")]).fit(other)


def test_resume_with_other_stds_is_refused(tmp_path):
    t = trainer(tmp_path, 10, [PowerEMACallback(snapshot_kimg=0.1, out_dir=tmp_path / "p")])
    t.fit(TinyDiffusion())
    t.save_checkpoint(tmp_path / "last.ckpt")
    cb = PowerEMACallback(stds=(0.05, 0.2), snapshot_kimg=0.1, out_dir=tmp_path / "p")
    with pytest.raises(ValueError, match="stds"):
        trainer(tmp_path, 20, [cb]).fit(TinyDiffusion(), ckpt_path=tmp_path / "last.ckpt")


def test_only_global_rank_zero_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(pl.Trainer, "is_global_zero", property(lambda self: False))
    cb = PowerEMACallback(snapshot_kimg=0.1, out_dir=tmp_path / "p")
    module = TinyDiffusion()
    trainer(tmp_path, 20, [cb]).fit(module)
    assert not (tmp_path / "p").exists()
    assert cb.ema.nimg == module.nimg > 0


def test_default_folder_is_under_the_run_root(tmp_path):
    trainer(tmp_path, 5, [PowerEMACallback(snapshot_kimg=0.05)]).fit(TinyDiffusion())
    assert read_index(tmp_path / "phema").entries


def test_reconstruction_after_a_short_training_run(tmp_path):
    """Track 0.05 and 0.10 (stored) and 0.075 (reference) during a 600-step EDM2-loss run;
    rebuild 0.075 from the 0.05/0.10 snapshots only and compare with the tracked one."""
    module = TinyDiffusion(batch_sizes=(16, 32), lr=3e-3)
    cb = PowerEMACallback(stds=(0.05, 0.1, 0.075), snapshot_kimg=0.5, out_dir=tmp_path / "phema")
    trainer(tmp_path, 600, [cb]).fit(module)
    index = read_index(tmp_path / "phema")
    stored = [e for e in index.entries if e.std != 0.075]
    only_two = tmp_path / "two"
    only_two.mkdir()
    for e in stored:
        (only_two / e.path.name).symlink_to(e.path)
    write_index(
        only_two, index.network, index.buffers, [type(e)(only_two / e.path.name, e.nimg, e.std) for e in stored]
    )
    [out] = reconstruct([only_two], [0.075], out_dir=tmp_path / "out", progress=False)
    rebuilt = autoguide.load_denoiser(out).state_dict()
    tracked = dict(cb.ema.modules[0.075].state_dict().items())
    short = dict(cb.ema.modules[0.05].state_dict().items())
    keys = [k for k, _ in module.net.named_parameters()]
    diff = torch.cat([(rebuilt[k] - tracked[k]).flatten() for k in keys]).norm()
    gap = torch.cat([(short[k] - tracked[k]).flatten() for k in keys]).norm()
    scale = torch.cat([tracked[k].flatten() for k in keys]).norm()
    print(
        f"training run: {len(stored) // 2} snapshots per std, |rebuilt - tracked| / "
        f"|ema(0.05) - ema(0.075)| = {diff / gap:.2e}, / |tracked| = {diff / scale:.2e}"
    )
    assert diff / gap < 2e-3
    for k, v in module.net.named_buffers():
        assert torch.equal(rebuilt[k], v)
    card = autoguide.load_denoiser(out).card
    assert card["ema_std"] == 0.075 and card["nimg"] == module.nimg and "reconstruction" in card["source"]
