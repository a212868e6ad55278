"""Checkpoints never hold or serve non-finite weights, and damaged metadata is a one-line error."""
from __future__ import annotations


import pytest
import torch
from safetensors.torch import load_file, save_file

from xray2ct.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from xray2ct.config import load_config
from xray2ct.models import build_model

from _tiny import TINY_MODEL, tiny_run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    ckpt, data = tiny_run(root, n_cases=1)
    return ckpt, data


def _rewrite(src, dst, weights=None, **meta_changes):
    """Copy a checkpoint with some weights or metadata entries replaced."""
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
    meta.update(meta_changes)
    save_file(weights if weights is not None else load_file(str(src)), str(dst), metadata=meta)
    return dst


def test_save_refuses_non_finite_weights_and_keeps_the_previous(tmp_path):
    cfg = load_config("configs/cpu-small.json", TINY_MODEL)
    model = build_model(cfg)
    good = save_checkpoint(tmp_path, "last", model, cfg, step=1, epoch=0)
    before = good.read_bytes()
    name, param = next(iter(model.named_parameters()))
    with torch.no_grad():
        param.view(-1)[0] = float("inf")
    with pytest.raises(CheckpointError, match=rf"not written.*{name}.*NaN or infinite.*previous checkpoint is intact"):
        save_checkpoint(tmp_path, "last", model, cfg, step=2, epoch=0, training_state={"x": 1})
    assert good.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors"]  # no state file, no temp


def test_load_refuses_non_finite_weights_naming_them(tiny, tmp_path):
    ckpt, _ = tiny
    weights = load_file(str(ckpt))
    names = sorted(k for k, v in weights.items() if v.is_floating_point())[:2]
    weights[names[0]] = weights[names[0]] * float("nan")
    weights[names[1]] = torch.full_like(weights[names[1]], float("inf"))
    bad = _rewrite(ckpt, tmp_path / "bad.safetensors", weights)
    with pytest.raises(CheckpointError, match="2 tensor") as e:
        load_checkpoint(bad)
    assert all(n in str(e.value) for n in names) and "bad.safetensors" in str(e.value)


@pytest.mark.parametrize("changes, words", [
    ({"config": "{not json"}, ["not valid JSON"]),
    ({"step": "abc"}, ["step='abc'", "integer"]),
    ({"epoch": "-1"}, ["epoch='-1'"]),
])
def test_damaged_metadata_is_a_clear_error(tiny, tmp_path, changes, words):
    ckpt, _ = tiny
    bad = _rewrite(ckpt, tmp_path / "m.safetensors", **changes)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(bad)
    assert all(w in str(e.value) for w in [*words, "m.safetensors"]), str(e.value)


def test_reconstruct_never_writes_a_volume_from_non_finite_output(tiny, tmp_path, monkeypatch):
    from xray2ct.engine import reconstruct as R

    ckpt, data = tiny
    pa, lat = (data / "phantom_0000" / f"phantom_0000_{v}_drr.png" for v in ("pa", "lat"))
    real = R.load_for_inference

    def nan_model(checkpoint, device="auto", cuda_graphs=False):
        model, cfg, dev = real(checkpoint, device, cuda_graphs)
        forward = model.forward
        model.forward = lambda x: {k: v * float("nan") if k == "volume" else v for k, v in forward(x).items()}
        return model, cfg, dev

    monkeypatch.setattr(R, "load_for_inference", nan_model)
    with pytest.raises(R.ReconstructionError, match="NaN or infinite.*no volume was written"):
        R.reconstruct(pa, lat, tmp_path / "o.nii.gz", checkpoint=ckpt, device="cpu", preview=tmp_path / "p.png")
    assert list(tmp_path.iterdir()) == []
