"""Model files: round trip, card, clear errors, atomic writes."""

import pytest
import torch

from autoguide import load_denoiser
from autoguide.apps.config_tree import get_preset
from autoguide.io import ModelFileError, read_card, save_model
from autoguide.nets import build_network


def test_round_trip(tmp_path):
    net = build_network(get_preset("mnist-xs"))
    with torch.no_grad():
        net.unet.out_gain.fill_(0.7)
    path = tmp_path / "m.safetensors"
    save_model(path, net, {"network": net.config, "nimg": 1234, "ema_std": 0.1, "source": "test"})
    card = read_card(path)
    assert card["nimg"] == 1234 and card["format"] == "autoguide-model/1"
    loaded = load_denoiser(path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    x = torch.randn(2, 1, 32, 32)
    labels = torch.eye(10)[:2]
    torch.testing.assert_close(loaded(x, 1.0, labels), net.eval()(x, 1.0, labels))
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left


def test_errors_name_the_file(tmp_path):
    with pytest.raises(ModelFileError, match=r"missing.safetensors"):
        load_denoiser(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelFileError, match=r"bad.safetensors"):
        load_denoiser(bad)
    net = build_network(get_preset("toy-mlp"))
    good = tmp_path / "good.safetensors"
    save_model(good, net, {"network": net.config})
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(ModelFileError, match=r"trunc.safetensors"):
        load_denoiser(truncated)
    wrong = tmp_path / "wrong.safetensors"
    save_model(wrong, net, {"network": {**net.config, "width": 32}})
    with pytest.raises(ModelFileError, match="do not match"):
        load_denoiser(wrong)


def test_atomic_write_uses_umask_permissions(tmp_path):
    import os
    import stat

    from autoguide.io import write_text_atomic

    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
