"""Weight-space SIMS models and pair.json: the formulas, checked against direct computations."""

import json

import pytest
import torch
from tiny import TINY_MNIST_UNET

from autoguide import load_denoiser
from autoguide.io import read_card, save_model
from autoguide.io.sims_pair import SimsPair, read_pair, write_pair
from autoguide.nets import build_network
from autoguide.sample.batch import generate_images
from autoguide.sample.guidance_spec import GuidanceSettings, build_guidance
from autoguide.sims.weightspace import extrapolate, frozen_buffers, write_weightspace_model

NET = TINY_MNIST_UNET


def _model_pair(tmp_path):
    """Two models of one architecture with different weights (output gains non-zero)."""
    torch.manual_seed(0)
    base = build_network(NET)
    synth = build_network(NET)
    with torch.no_grad():
        for net, gain in ((base, 0.8), (synth, 0.5)):
            net.unet.out_gain.fill_(gain)
        synth.unet.emb_fourier.freqs.mul_(2.0)  # a buffer that must never be extrapolated
    save_model(tmp_path / "base.safetensors", base, {"network": NET, "nimg": 100, "ema_std": 0.1, "source": "test"})
    save_model(tmp_path / "synth.safetensors", synth, {"network": NET, "nimg": 10, "ema_std": 0.05, "source": "test"})
    return base, synth


def test_extrapolate_formula_per_tensor():
    base = {"w": torch.tensor([1.0, 2.0, -3.0]), "b": torch.tensor([0.5], dtype=torch.float16), "n": torch.tensor([3])}
    synth = {"w": torch.tensor([0.0, 2.5, -1.0]), "b": torch.tensor([1.5], dtype=torch.float16), "n": torch.tensor([7])}
    out = extrapolate(base, synth, 1.5, frozen={"b"})
    # (1 + 1.5) * base - 1.5 * synth, written out element by element
    assert out["w"].tolist() == [2.5 * 1.0 - 1.5 * 0.0, 2.5 * 2.0 - 1.5 * 2.5, 2.5 * -3.0 - 1.5 * -1.0]
    assert out["b"].dtype == torch.float16 and out["b"].item() == 0.5  # frozen: the base's value
    assert out["n"].item() == 3  # integer tensors are copied from the base
    assert extrapolate(base, synth, 0.0)["w"].tolist() == base["w"].tolist()
    with pytest.raises(ValueError, match="differ in their tensors"):
        extrapolate(base, {"w": synth["w"]}, 1.0)
    with pytest.raises(ValueError, match="tensor w"):
        extrapolate(base, {**synth, "w": torch.zeros(2)}, 1.0)
    with pytest.raises(ValueError, match="finite"):
        extrapolate(base, synth, float("nan"))


def test_weightspace_model_file(tmp_path):
    base, synth = _model_pair(tmp_path)
    assert frozen_buffers(NET) == {
        "unet.emb_fourier.freqs",
        "unet.emb_fourier.phases",
        "logvar_fourier.freqs",
        "logvar_fourier.phases",
    }
    out = write_weightspace_model(
        tmp_path / "ws.safetensors",
        tmp_path / "base.safetensors",
        tmp_path / "synth.safetensors",
        0.75,
        {"budget_nimg": 64},
    )
    model = load_denoiser(out)
    got = model.state_dict()
    for name, b in base.state_dict().items():
        s = synth.state_dict()[name]
        expected = b if "fourier" in name else b + 0.75 * (b - s)
        torch.testing.assert_close(got[name], expected, rtol=1e-6, atol=1e-6, msg=name)
    card = read_card(out)
    assert card["network"] == NET and card["sims"] == {"variant": "weight_space", "weight": 0.75, "budget_nimg": 64}
    other = dict(NET, model_channels=16)
    save_model(tmp_path / "other.safetensors", build_network(other), {"network": other})
    with pytest.raises(ValueError, match="one architecture"):
        write_weightspace_model(
            tmp_path / "x.safetensors", tmp_path / "base.safetensors", tmp_path / "other.safetensors", 1.0, {}
        )


def test_pair_round_trip_and_guided_sampling(tmp_path):
    _model_pair(tmp_path)
    sub = tmp_path / "pairs" / "b1"
    sub.mkdir(parents=True)
    ws = write_weightspace_model(
        sub / "ws.safetensors", tmp_path / "base.safetensors", tmp_path / "synth.safetensors", 1.0, {}
    )
    pair = SimsPair(tmp_path / "base.safetensors", tmp_path / "synth.safetensors", 64, 0.05, 0, {1.0: ws})
    write_pair(sub / "pair.json", pair, root=tmp_path)
    data = json.loads((sub / "pair.json").read_text())
    assert data["positive"] == "../../base.safetensors" and data["weight_space"][0]["model"] == "ws.safetensors"
    assert "guidance=sims" in data["generate"] and "guidance.omega=OMEGA" in data["generate"]
    moved = tmp_path.rename(tmp_path.parent / (tmp_path.name + "-moved"))  # relative paths survive a move
    loaded = read_pair(moved / "pairs" / "b1" / "pair.json", check_hashes=True)
    assert loaded.negative == (moved / "synth.safetensors").resolve() and loaded.budget_nimg == 64
    assert loaded.weight_space == {1.0: (moved / "pairs" / "b1" / "ws.safetensors").resolve()}

    # Sampling with the pair: one Euler step from sigma_max returns the guided denoiser's output,
    # which must be D_neg + (1 + omega) (D_pos - D_neg) = (1 + omega) D_pos - omega D_neg.
    omega = 0.7
    models = {}
    load = lambda p: models.setdefault(p, load_denoiser(p))  # noqa: E731
    (term,) = build_guidance(GuidanceSettings.from_mapping(loaded.guidance(omega)), load)
    assert term.weight == pytest.approx(1 + omega)
    pos = load(str(loaded.positive))
    seeds, labels = [3, 4], [1, 7]
    got = generate_images(pos, seeds, labels, [term], num_steps=1, solver="euler", sigma_max=80.0)
    noise = torch.stack([torch.randn(1, 32, 32, generator=torch.Generator().manual_seed(s)) for s in seeds]) * 80.0
    onehot = torch.eye(10)[labels]
    sigma = torch.full((2,), 80.0)
    expected = (1 + omega) * pos(noise, sigma, onehot) - omega * load(str(loaded.negative))(noise, sigma, onehot)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)

    (moved / "synth.safetensors").write_bytes((moved / "base.safetensors").read_bytes())
    with pytest.raises(ValueError, match=r"negative model .* changed"):
        read_pair(moved / "pairs" / "b1" / "pair.json", check_hashes=True)
    (moved / "synth.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="negative model"):
        read_pair(moved / "pairs" / "b1" / "pair.json")


def test_generate_and_eval_read_a_pair_file(tmp_path):
    """``pair=<pair.json>`` sets the model to the base and a SIMS term with the negative
    (omega from guidance.omega with guidance=sims, else 1); the generated images equal sampling
    the two files directly; a conflicting model or guidance is refused."""
    import numpy as np

    from autoguide.apps.common import with_pair
    from autoguide.apps.config_tree import compose as compose_config
    from autoguide.apps.generate import run as generate_run
    from autoguide.apps.sampling_configs import GenerateConfig, read_config
    from autoguide.data.sample_files import to_uint8

    _model_pair(tmp_path)
    pair_path = tmp_path / "pair.json"
    write_pair(pair_path, SimsPair(tmp_path / "base.safetensors", tmp_path / "synth.safetensors", 64, 0.1, 0), tmp_path)

    def config(*overrides):
        cfg = compose_config(
            "generate",
            [
                f"pair={pair_path}",
                "seeds=0-3",
                "sampler.num_steps=3",
                "device=cpu",
                "progress=false",
                f"output.dir={tmp_path / 'out'}",
                "output.formats=[npz]",
                *overrides,
            ],
        )
        return cfg

    def paired(*overrides):
        return with_pair(read_config(GenerateConfig, config(*overrides)))

    settings = paired()
    assert settings.model == str((tmp_path / "base.safetensors").resolve())
    assert settings.guidance_settings.to_dict() == {
        "kind": "sims",
        "omega": 1.0,
        "interval": None,
        "model": str((tmp_path / "synth.safetensors").resolve()),
    }
    chosen = paired("guidance=sims", "guidance.omega=0.5", "guidance.model=ignored")
    (term,) = chosen.guidance_settings.terms
    assert term.options["omega"] == 0.5 and term.model is not None and term.model.endswith("synth.safetensors")

    out = generate_run(config("guidance=sims", "guidance.omega=0.5", "guidance.model=ignored"))
    written = np.load(out / "samples.npz")
    base, synth = load_denoiser(tmp_path / "base.safetensors"), load_denoiser(tmp_path / "synth.safetensors")
    sims = {"kind": "sims", "omega": 0.5, "model": str(tmp_path / "synth.safetensors")}
    terms = build_guidance(GuidanceSettings.from_mapping(sims), lambda p: synth)
    direct = generate_images(base, range(4), written["labels"].tolist(), terms, batch_size=4, num_steps=3)
    expected = to_uint8(direct)
    assert np.abs(written["images"].astype(int) - expected.astype(int)).max() <= 1  # uint8 rounding only

    with pytest.raises(ValueError, match="remove model="):
        paired(f"model={tmp_path / 'synth.safetensors'}")
    with pytest.raises(ValueError, match=r"guidance\.kind='cfg'"):
        paired("guidance=cfg", "guidance.weight=2")
