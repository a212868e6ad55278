"""Checkpoints: weights as safetensors carrying their config, training state beside them.

  {name}.safetensors   model weights; metadata: format, config (JSON), step, epoch
  {name}.state-{step}.pt  optimizer / scheduler / scaler / RNG states (torch.save, loaded
                       with weights_only=True so loading never runs pickled code)

Each file is written atomically (temp file, then rename): a crash or a full disk leaves
the previous checkpoint intact, never a half-written file under the final name. The
state file is named by step and written before the weights, and older ones are removed
only after the weights are in place, so a kill between the two writes still leaves the
state that matches the weights on disk.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from xray2ct.errors import UserError
from xray2ct.fileio import atomic_path

FORMAT = "xray2ct-checkpoint-v1"


class CheckpointError(UserError, ValueError):
    """A checkpoint is missing, corrupt or does not fit the model; the message says which."""


@dataclass
class Checkpoint:
    weights: dict[str, torch.Tensor]
    config: "object"  # xray2ct.config.Config
    step: int
    epoch: int
    path: Path


def rng_state() -> dict:
    """Every RNG the training loop draws from, in a weights_only-loadable form."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_checkpoint(folder: str | Path, name: str, model: nn.Module, config, step: int, epoch: int,
                    training_state: dict | None = None) -> Path:
    """Write {folder}/{name}.safetensors (+ {name}.state.pt when training_state is given)."""
    from safetensors.torch import save_file

    from xray2ct.config import config_to_dict

    folder = Path(folder)
    weights = {k: v.detach().contiguous().cpu() for k, v in _unwrap(model).state_dict().items()}
    bad = non_finite(weights)
    if bad:  # a diverged model must not replace the last good checkpoint
        raise CheckpointError(f"{folder / name}.safetensors not written: {_names(bad)} hold NaN or infinite values "
                              "(training diverged; lower the learning rate). The previous checkpoint is intact")
    meta = {"format": FORMAT, "config": json.dumps(config_to_dict(config)), "step": str(step), "epoch": str(epoch)}
    state_path = _state_path(folder / f"{name}.safetensors", step)
    if training_state is not None:
        with atomic_path(state_path) as tmp:
            torch.save({"step": step, "epoch": epoch, **training_state}, tmp)
    with atomic_path(folder / f"{name}.safetensors") as tmp:
        save_file(weights, str(tmp), metadata=meta)
    for old in folder.glob(f"{name}.state-*.pt"):
        if old != state_path:
            old.unlink(missing_ok=True)
    return folder / f"{name}.safetensors"


def non_finite(weights: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    return [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def _names(items: list[str], shown: int = 6) -> str:
    return f"{len(items)} tensor(s) ({', '.join(items[:shown])}{' …' if len(items) > shown else ''})"


def _state_path(weights_path: Path, step: int) -> Path:
    return weights_path.with_name(f"{weights_path.name.removesuffix('.safetensors')}.state-{step:09d}.pt")


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or a run folder (its best, else last, checkpoint)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (path / name).is_file():
                return path / name
        found = sorted(path.rglob("*.safetensors"))
        if not found:
            raise CheckpointError(f"{path}: no .safetensors checkpoint in this folder")
        return found[-1]
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read weights and their config; never executes pickled code."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from xray2ct.config import config_from_dict

    path = resolve(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        weights = load_file(str(path))
    except Exception as e:  # safetensors raises several types for a damaged header/body
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint ({e})") from e
    if meta.get("format") != FORMAT or "config" not in meta:
        raise CheckpointError(f"{path}: not an xray2ct checkpoint (no '{FORMAT}' metadata with a config)")
    try:
        raw = json.loads(meta["config"])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: the config in its metadata is not valid JSON ({e.msg} at character "
                              f"{e.pos}); the file is damaged or was not written by xray2ct") from None
    config = config_from_dict(raw, source=f"the config in {path}")
    counters = {}
    for key in ("step", "epoch"):
        value = meta.get(key, "0")
        if not (value.isascii() and value.isdigit()):  # metadata is text; anything but a count is damage
            raise CheckpointError(f"{path}: metadata {key}={value!r} is not a non-negative integer")
        counters[key] = int(value)
    bad = non_finite(weights)
    if bad:
        raise CheckpointError(f"{path}: {_names(bad)} hold NaN or infinite values; these weights would "
                              "reconstruct nothing. Use an earlier checkpoint (e.g. best.safetensors)")
    return Checkpoint(weights, config, counters["step"], counters["epoch"], path)


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Strict load whose error names the mismatched layers."""
    own = _unwrap(model).state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = [f"{k}: checkpoint {tuple(weights[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own.keys() & weights.keys() if own[k].shape != weights[k].shape]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing in checkpoint", missing), ("not in model", unexpected), ("shape mismatch", shapes)):
            if items:
                parts.append(f"{label} ({len(items)}): {', '.join(items[:6])}{' …' if len(items) > 6 else ''}")
        raise CheckpointError(f"{source} does not fit this architecture; " + "; ".join(parts))
    _unwrap(model).load_state_dict(weights, strict=True)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, "object", Checkpoint]:
    """Build the checkpoint's architecture from its own config and load its weights (eval mode)."""
    from xray2ct.models import build_model

    ckpt = load_checkpoint(path)
    model = build_model(ckpt.config)
    load_weights(model, ckpt.weights, str(ckpt.path))
    return model.to(device).eval(), ckpt.config, ckpt


def load_training_state(weights_path: str | Path) -> dict:
    """The training state saved with a weights file at the same step (weights_only=True)."""
    p = Path(weights_path)
    state_path = _state_path(p, load_checkpoint(p).step)
    if not state_path.is_file():
        raise CheckpointError(f"{state_path}: training state missing; cannot resume from {p}")
    try:
        return torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{state_path}: unreadable training state ({e})") from e
