"""Import of released EDM2 pickles (restricted unpickling) and export back to reference names.

The pickles here are built like the released ones (NVlabs/edm2 ``torch_utils.persistence``:
each network object pickles as ``_reconstruct_persistent_obj(meta)`` with ``module_src``,
``class_name`` and ``state``; the top level is a ``dnnlib.util.EasyDict``), from our own
classes and fake modules registered only while pickling. The fake reconstruct function and
every ``module_src`` would leave a sentinel file (and raise) if anything ever ran them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle

import pytest
import torch
from edm2_pickles import (
    GUIDE_NAME,
    TINY,
    fake_edm2_modules,
    fp16_state,
    reference_tree,
    tiny_net,
    write_release,
)
from safetensors import safe_open

from autoguide.apps.config_tree import get_preset
from autoguide.apps.export_edm2 import main as export_main
from autoguide.apps.import_edm2 import main as import_main
from autoguide.io import load_denoiser, read_model_file, save_model
from autoguide.io.edm2_export import export_edm2
from autoguide.io.edm2_import import EDM2ImportError, import_edm2, read_edm2_pickle, release_nimg_and_std
from autoguide.nets import build_network


@pytest.fixture
def sentinel(tmp_path):
    """A path that exists only if code from a pickle was executed."""
    path = tmp_path / "code-was-executed"
    yield path
    assert not path.exists(), "code embedded in the pickle was executed"


@pytest.fixture
def fake_release(sentinel):
    """Fake ``torch_utils.persistence`` / ``dnnlib.util`` modules registered for the test."""
    with fake_edm2_modules(sentinel) as fake:
        yield fake


def test_import_latent_model_matches_released_weights(fake_release, tmp_path):
    net = tiny_net()
    pkl = write_release(fake_release, tmp_path / GUIDE_NAME, net)
    card = import_edm2(pkl, tmp_path / "guide.safetensors")
    state, stored = read_model_file(tmp_path / "guide.safetensors")
    expected = fp16_state(net)
    assert sorted(state) == sorted(expected)
    assert all(state[k].dtype == torch.float32 and torch.equal(state[k], expected[k]) for k in expected)
    assert stored == {"format": "autoguide-model/1", **card, "sha256": stored["sha256"]}  # digest: test_integrity.py
    assert {k: card["network"][k] for k in TINY} == TINY
    assert card["nimg"] == 128 * 2**20 and card["ema_std"] == 0.125
    assert card["latent"] == {
        "type": "stability_vae",
        "vae_name": "stabilityai/sd-vae-ft-mse",
        "raw_mean": [5.81, 3.25, 0.12, -2.15],
        "raw_std": [4.17, 4.62, 3.71, 3.28],
        "final_mean": 0.0,
        "final_std": 0.5,
    }
    # The imported denoiser computes what our network computes with the fp16-rounded weights.
    net.load_state_dict(expected)
    loaded = load_denoiser(tmp_path / "guide.safetensors")
    x, sigma = torch.randn(2, 4, 16, 16), torch.tensor([0.3, 5.0])
    labels = torch.eye(10)[[3, 7]]
    with torch.no_grad():
        assert torch.allclose(loaded(x, sigma, labels), net.eval()(x, sigma, labels), atol=1e-5)


def test_import_unconditional_pixel_model_with_nondefault_widths(fake_release, tmp_path):
    net = tiny_net(
        label_dim=0,
        img_channels=3,
        channel_mult=[2, 3],
        channel_mult_emb=4,
        clip_act=None,
        dropout=0.0,
        logvar_channels=64,
    )
    pkl = write_release(fake_release, tmp_path / "edm2-img64-xs-uncond-2147483-0.045.pkl", net, encoder="rgb")
    card = import_edm2(pkl, tmp_path / "m.safetensors")
    cfg = card["network"]
    assert (cfg["label_dim"], cfg["img_channels"], cfg["channel_mult_emb"], cfg["clip_act"]) == (0, 3, 4, None)
    assert cfg["channel_mult"] == [2, 3] and cfg["attn_resolutions"] == [8] and cfg["logvar_channels"] == 64
    assert card["latent"] is None and card["nimg"] == 2**31 and card["ema_std"] == 0.045
    assert "unet.emb_label.weight" not in read_model_file(tmp_path / "m.safetensors")[0]


def test_protocol_2_pickle_with_numpy_1_names(fake_release, tmp_path):
    """Older writers: protocol 2 (``__builtin__.set``, bytes as ``_codecs.encode``) and numpy 1.x paths."""
    pkl = write_release(fake_release, tmp_path / "old.pkl", tiny_net(), protocol=2)
    data = pkl.read_bytes()
    assert b"cnumpy._core.multiarray\n" in data and b"c__builtin__\nset\n" in data and b"c_codecs\nencode\n" in data
    # Protocol 2 has no framing, so the global's text can be swapped in place.
    pkl.write_bytes(data.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n"))
    assert b"numpy.core.multiarray" in pkl.read_bytes()
    card = import_edm2(pkl, tmp_path / "old.safetensors")
    assert card["latent"]["raw_std"] == [4.17, 4.62, 3.71, 3.28]


def test_released_names_give_training_length_and_ema():
    assert release_nimg_and_std("edm2-img512-xs-0134217-0.125.pkl") == (134217728, 0.125)
    assert release_nimg_and_std("/x/edm2-img512-s-2147483-0.070.pkl") == (2147483648, 0.07)
    assert release_nimg_and_std("edm2-img512-xxl-0939524-0.015.pkl") == (896 * 2**20, 0.015)
    assert release_nimg_and_std("network-snapshot-0008388-0.050.pkl") == (8 * 2**20, 0.05)
    assert release_nimg_and_std("my-net.pkl") == (None, None)


def _evil(reducer):
    class Evil:
        def __reduce__(self):
            return reducer

    return Evil()


@pytest.mark.parametrize(
    "reducer_name", ["os.system", "builtins.eval", "builtins.exec", "builtins.__import__", "subprocess.call"]
)
def test_malicious_globals_are_refused_before_running(tmp_path, sentinel, reducer_name):
    import builtins
    import subprocess

    module, name = reducer_name.split(".")
    func = getattr({"os": os, "builtins": builtins, "subprocess": subprocess}[module], name)
    command = f"touch {sentinel}"
    args = {"system": (command,), "call": (command.split(),), "__import__": ("ctypes",)}.get(
        name, (f"__import__('os').system({command!r})",)
    )
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"ema": _evil((func, args))}))
    with pytest.raises(EDM2ImportError, match=r"evil\.pkl.*refusing global (posix|os|builtins|subprocess)\."):
        read_edm2_pickle(path)


def test_poisoned_payloads_inside_the_network_are_refused(fake_release, tmp_path):
    # A global hidden in the constructor arguments of the network.
    bad_kwargs = tmp_path / "b.pkl"
    with open(bad_kwargs, "wb") as f:
        pickle.dump(
            fake_release.EasyDict(
                ema=fake_release.Persistent("Precond", {"_init_kwargs": {"x": _evil((os.system, ("true",)))}})
            ),
            f,
        )
    with pytest.raises(EDM2ImportError, match=r"refusing global posix.system"):
        read_edm2_pickle(bad_kwargs)
    # The protocol-2 bytes helper accepts latin1 only, not other codecs.
    import _codecs

    rot13 = tmp_path / "rot13.pkl"
    rot13.write_bytes(pickle.dumps({"ema": _evil((_codecs.encode, ("payload", "rot13")))}))
    with pytest.raises(EDM2ImportError, match="only protocol-2 bytes"):
        read_edm2_pickle(rot13)
    # A tensor storage whose torch.save payload runs code: refused by weights_only=True.
    payload = io.BytesIO()
    torch.save(_evil((os.system, (f"touch {tmp_path / 'never'}",))), payload, _use_new_zipfile_serialization=False)
    storage_bomb = _evil((torch.storage._load_from_bytes, (payload.getvalue(),)))
    path = tmp_path / "c.pkl"
    path.write_bytes(pickle.dumps({"ema": storage_bomb}))
    with pytest.raises(EDM2ImportError, match="weights_only"):
        read_edm2_pickle(path)
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("class_name", ["SongUNet", "DhariwalUNet", "Evil"])
def test_unknown_persistent_classes_are_refused_without_running_their_source(fake_release, tmp_path, class_name):
    path = tmp_path / "x.pkl"
    with open(path, "wb") as f:
        pickle.dump(fake_release.EasyDict(ema=fake_release.Persistent(class_name, {})), f)
    with pytest.raises(
        EDM2ImportError, match=f"persistent class '{class_name}' is not part of the EDM2 release format"
    ):
        read_edm2_pickle(path)


def test_loading_the_fake_release_normally_would_run_its_code(fake_release, tmp_path, sentinel):
    """Control: the fake pickles are armed, so the importer's silence above means something."""
    path = write_release(fake_release, tmp_path / "armed.pkl", tiny_net())
    with pytest.raises(AssertionError, match="called the pickle's reconstruct"):
        pickle.loads(path.read_bytes())
    assert sentinel.exists()
    sentinel.unlink()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"augment_pipe": None}, r"unexpected top-level key\(s\) \['augment_pipe'\]"),
        ({"ema": None}, "'ema' is NoneType, expected an EDM2 Precond network"),
    ],
)
def test_wrong_top_level_is_a_clear_error(fake_release, tmp_path, extra, message):
    path = write_release(fake_release, tmp_path / "x.pkl", tiny_net(), **extra)
    with pytest.raises(EDM2ImportError, match=message):
        read_edm2_pickle(path)


def test_not_a_pickle_and_missing_file(tmp_path):
    path = tmp_path / "junk.pkl"
    path.write_bytes(b"PK\x03\x04 not a pickle")
    with pytest.raises(EDM2ImportError, match=r"junk.pkl: not a readable EDM2 network pickle"):
        read_edm2_pickle(path)
    with pytest.raises(EDM2ImportError, match="not found"):
        read_edm2_pickle(tmp_path / "absent.pkl")


def test_weights_that_do_not_fit_the_attributes_are_refused(fake_release, tmp_path):
    net = tiny_net()
    with torch.no_grad():
        net.unet.dec["8x8_block0"].conv_res1.weight = torch.nn.Parameter(torch.zeros(32, 31, 3, 3))
    pkl = write_release(fake_release, tmp_path / "x.pkl", net)
    with pytest.raises(
        EDM2ImportError,
        match=r"x\.pkl: weights do not match.*wrong shape \['unet\.dec\.8x8_block0\.conv_res1\.weight'\]",
    ):
        import_edm2(pkl, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_init_kwargs_that_disagree_with_the_network_are_refused(fake_release, tmp_path):
    net = tiny_net()
    pkl = tmp_path / "x.pkl"
    data = fake_release.EasyDict(ema=reference_tree(fake_release, net, {"model_channels": 16, "num_blocks": 2}))
    pkl.write_bytes(pickle.dumps(data))
    with pytest.raises(EDM2ImportError, match=r"init_kwargs num_blocks=2 disagrees with the stored network \(1\)"):
        import_edm2(pkl, tmp_path / "out.safetensors")


def test_cli_import_with_vae_records_its_identity(fake_release, tmp_path, capsys):
    vae = tmp_path / "sd-vae-ft-mse"
    vae.mkdir()
    (vae / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", "latent_channels": 4}))
    (vae / "diffusion_pytorch_model.safetensors").write_bytes(b"stand-in weights")
    pkl = write_release(fake_release, tmp_path / GUIDE_NAME, tiny_net())
    import_main([str(pkl), str(tmp_path / "g.safetensors"), "--vae", str(vae)])
    latent = read_model_file(tmp_path / "g.safetensors")[1]["latent"]
    assert latent["vae_name"] == "stabilityai/sd-vae-ft-mse" and latent["vae"]["folder"] == "sd-vae-ft-mse"
    assert latent["vae"]["weights_sha256"] == hashlib.sha256(b"stand-in weights").hexdigest()
    capsys.readouterr()
    pixel = write_release(
        fake_release, tmp_path / "edm2-img64-xs-2147483-0.045.pkl", tiny_net(img_channels=3), encoder="rgb"
    )
    with pytest.raises(SystemExit):
        import_main([str(pixel), str(tmp_path / "p.safetensors"), "--vae", str(vae)])
    assert "a pixel-space model has no VAE; import it without --vae" in capsys.readouterr().err


def test_cli_import_then_export_restores_reference_names(fake_release, tmp_path, capsys):
    net = tiny_net()
    pkl = write_release(fake_release, tmp_path / GUIDE_NAME, net)
    import_main([str(pkl), str(tmp_path / "g.safetensors")])
    assert json.loads(capsys.readouterr().out)["nimg"] == 134217728
    export_main([str(tmp_path / "g.safetensors"), str(tmp_path / "g.pt"), "--fp16"])
    kwargs = json.loads(capsys.readouterr().out)["precond_kwargs"]
    exported = torch.load(tmp_path / "g.pt", weights_only=True)
    original = {k: v.half() for k, v in net.state_dict().items()}
    assert sorted(exported) == sorted(original)
    assert all(exported[k].dtype == torch.float16 and torch.equal(exported[k], original[k]) for k in original)
    assert kwargs == {k: v for k, v in read_model_file(tmp_path / "g.safetensors")[1]["network"].items() if k != "arch"}
    # Names and shapes of the reference network (networks_edm2.py wiring) for this config.
    reference = {
        "unet.emb_fourier.freqs": (16,),
        "unet.emb_noise.weight": (32, 16),
        "unet.emb_label.weight": (32, 10),
        "unet.enc.16x16_conv.weight": (16, 5, 3, 3),
        "unet.enc.8x8_down.conv_res0.weight": (16, 16, 3, 3),
        "unet.enc.8x8_block0.conv_skip.weight": (32, 16, 1, 1),
        "unet.enc.8x8_block0.attn_qkv.weight": (96, 32, 1, 1),
        "unet.dec.8x8_in0.attn_proj.weight": (32, 32, 1, 1),
        "unet.dec.8x8_block1.conv_res0.weight": (32, 48, 3, 3),
        "unet.dec.16x16_up.emb_gain": (),
        "unet.dec.16x16_block1.conv_skip.weight": (16, 32, 1, 1),
        "unet.out_conv.weight": (4, 16, 3, 3),
        "unet.out_gain": (),
        "logvar_fourier.phases": (128,),
        "logvar_linear.weight": (1, 128),
    }
    assert {k: tuple(exported[k].shape) for k in reference} == reference


def test_export_safetensors_carries_reference_kwargs(tmp_path):
    net = tiny_net()
    save_model(tmp_path / "m.safetensors", net, {"network": TINY, "nimg": 0, "ema_std": None, "source": "test"})
    kwargs = export_edm2(tmp_path / "m.safetensors", tmp_path / "out.safetensors")
    with safe_open(str(tmp_path / "out.safetensors"), framework="pt") as f:
        assert (
            json.loads(f.metadata()["edm2.precond_kwargs"]) == kwargs == {k: v for k, v in TINY.items() if k != "arch"}
        )
        assert torch.equal(f.get_tensor("unet.enc.16x16_conv.weight"), net.state_dict()["unet.enc.16x16_conv.weight"])


def test_export_refuses_models_without_a_reference_counterpart(tmp_path):
    mlp = {"arch": "mlp", "img_channels": 2, "label_dim": 0}
    save_model(
        tmp_path / "toy.safetensors", build_network(mlp), {"network": mlp, "nimg": 0, "ema_std": None, "source": "test"}
    )
    with pytest.raises(ValueError, match="only EDM2 UNet models have a reference counterpart"):
        export_edm2(tmp_path / "toy.safetensors", tmp_path / "toy.pt")
    with pytest.raises(ValueError, match=r"must end in \.pt, \.pth or \.safetensors"):
        export_edm2(tmp_path / "toy.safetensors", tmp_path / "toy.pkl")


@pytest.mark.slow
def test_import_of_a_full_size_xs_release(fake_release, tmp_path):
    net = build_network(get_preset("img512-xs"))
    pkl = write_release(fake_release, tmp_path / GUIDE_NAME, net)
    card = import_edm2(pkl, tmp_path / "xs.safetensors")
    assert {k: card["network"][k] for k in get_preset("img512-xs")} == get_preset("img512-xs")
    assert sum(p.numel() for p in load_denoiser(tmp_path / "xs.safetensors").parameters()) == 124_713_253
