"""SIMS synthesize stage: the chunk plan, shard contents against the sampler, the manifest,
resuming a half-written stage, and the split into array tasks."""

import json
import os

import numpy as np
import pytest
import torch

from autoguide.data.shards import IndexedShardDataset
from autoguide.io import save_model
from autoguide.nets import build_network
from autoguide.runtime.process import ModelLoader
from autoguide.sample.batch import generate_images
from autoguide.sample.sampler_settings import GenerationSettings, SamplerSettings
from autoguide.sample.seeds import format_seeds
from autoguide.sims.synthesize import (
    SynthesisSettings,
    check_label_coverage,
    plan_chunks,
    synthesize_stage,
    verify_manifest,
)

NET = {
    "arch": "unet",
    "img_resolution": 16,
    "img_channels": 1,
    "label_dim": 3,
    "model_channels": 8,
    "channel_mult": [1],
    "num_blocks": 1,
    "attn_resolutions": [],
    "channels_per_head": 8,
    "dropout": 0.0,
}
SAMPLER = {"num_steps": 2, "solver": "euler"}


class TinyReal(torch.utils.data.Dataset):
    """Real images on the uint8 grid (x = u / 127.5 - 1) with labels i mod 3."""

    def __init__(self, n=20):
        rng = np.random.RandomState(5)
        self.pixels = rng.randint(0, 256, size=(n, 1, 16, 16)).astype(np.uint8)

    def __len__(self):
        return len(self.pixels)

    def __getitem__(self, i):
        return torch.from_numpy(self.pixels[i]).float() / 127.5 - 1, i % 3


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    net = build_network(NET)
    with torch.no_grad():
        net.unet.out_gain.fill_(1.0)
    path = tmp_path_factory.mktemp("model") / "base.safetensors"
    save_model(path, net, {"network": NET, "nimg": 0, "ema_std": None, "source": "test"})
    return path


def _settings(**kw):
    generation = GenerationSettings(batch_size=3, sampler=SamplerSettings(**SAMPLER))
    return SynthesisSettings(
        **{"num_images": 10, "shard_size": 4, "class_labels": [0, 1, 2], "generation": generation, **kw}
    )


def test_plan_chunks():
    real = TinyReal()
    chunks = plan_chunks(_settings(num_images=10, real_fraction=0.3, real_seed=3, first_seed=100), 3, real)
    assert [(c.name, len(c.items)) for c in chunks] == [("synth-000000", 4), ("synth-000001", 3), ("real-000000", 3)]
    assert [s for c in chunks[:2] for s in c.items] == list(range(100, 107))
    assert [k for c in chunks[:2] for k in c.classes] == [0, 1, 2, 0, 1, 2, 0]
    picked = np.random.RandomState(3).permutation(20)[:3].tolist()
    assert list(chunks[2].items) == picked and list(chunks[2].classes) == [i % 3 for i in picked]
    assert format_seeds([3, 4, 5, 9, 11, 12]) == "3-5,9,11-12"
    with pytest.raises(ValueError, match="real data"):
        plan_chunks(_settings(real_fraction=0.5), 3, None)
    with pytest.raises(ValueError, match="no image of class 2"):
        check_label_coverage(plan_chunks(_settings(num_images=2), 3, None), 3)
    with pytest.raises(ValueError, match="real_fraction"):
        _settings(real_fraction=1.0)


def test_stage_output_resume_and_tasks(tmp_path, model):
    real = TinyReal()
    settings = _settings(real_fraction=0.3)
    load = ModelLoader(torch.device("cpu"))
    folder = tmp_path / "synth"
    manifest = synthesize_stage(
        folder, model, settings, 3, load, torch.device("cpu"), real=real, real_data={"name": "tiny"}
    )
    assert manifest["count"] == 10 and (manifest["num_synthetic"], manifest["num_real"]) == (7, 3)
    assert [(s["file"], s["count"]) for s in manifest["shards"]] == [
        ("shards/synth-000000.tar", 4),
        ("shards/synth-000001.tar", 3),
        ("shards/real-000000.tar", 3),
    ]
    assert manifest["shards"][1]["seeds"] == "4-6" and manifest["source_model"]["card"]["network"] == NET

    # Shard contents: the sampler's images for seeds 0..6 with classes 0,1,2,... and the real subset.
    synth = IndexedShardDataset(sorted(str(p) for p in (folder / "shards").glob("synth-*.tar")))
    expected = generate_images(load(str(model)), list(range(7)), [0, 1, 2, 0, 1, 2, 0], **SAMPLER)
    expected_u8 = torch.round((expected + 1) * 127.5).clamp(0, 255)
    for i in range(7):
        image, label = synth[i]
        assert label == i % 3
        assert torch.equal(torch.round((image + 1) * 127.5), expected_u8[i])
    reals = IndexedShardDataset(str(folder / "shards" / "real-000000.tar"))
    for j, index in enumerate(np.random.RandomState(0).permutation(20)[:3]):
        image, label = reals[j]
        assert torch.equal(image, real[index][0]) and label == index % 3

    # A killed stage: no record, one shard half-written, one sidecar missing -> only those redone.
    (folder / "stage.json").unlink()
    (folder / "manifest.json").unlink()
    shard0 = folder / "shards" / "synth-000000.tar"
    shard0.write_bytes(shard0.read_bytes()[:1000])
    (folder / "chunks" / "real-000000.json").unlink()
    untouched = folder / "shards" / "synth-000001.tar"
    os.utime(untouched, (1, 1))
    again = synthesize_stage(
        folder, model, settings, 3, load, torch.device("cpu"), real=real, real_data={"name": "tiny"}
    )
    assert again["shards"] == manifest["shards"]  # same bytes as before
    assert os.stat(untouched).st_mtime == 1  # the finished chunk was kept
    assert os.stat(shard0).st_mtime > 1 and (folder / "stage.json").exists()

    # The manifest catches a changed shard.
    data = bytearray(untouched.read_bytes())
    data[700] ^= 0xFF  # inside the first PNG
    untouched.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"synth-000001.tar"):
        verify_manifest(folder)

    # Two array tasks: the first leaves the set incomplete, the second finishes it.
    split = tmp_path / "split"
    assert (
        synthesize_stage(
            split,
            model,
            settings,
            3,
            load,
            torch.device("cpu"),
            real=real,
            real_data={"name": "tiny"},
            task=0,
            num_tasks=2,
        )
        is None
    )
    assert sorted(p.name for p in (split / "shards").iterdir()) == ["real-000000.tar", "synth-000000.tar"]
    assert not (split / "stage.json").exists() and not (split / "manifest.json").exists()
    done = synthesize_stage(
        split, model, settings, 3, load, torch.device("cpu"), real=real, real_data={"name": "tiny"}, task=1, num_tasks=2
    )
    assert [s["sha256"] for s in done["shards"]] == [s["sha256"] for s in manifest["shards"]]
    assert json.loads((split / "stage.json").read_text())["info"] == {"count": 10}
