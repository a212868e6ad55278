"""Store refinement settings (chosen by `xray2ct benchmark --suite refine`) in a safetensors
checkpoint's config, tensors untouched: by default the bundled weights (their metadata and
assets/default/config.json), or `--checkpoint PATH` (its metadata only).

    .venv/bin/python tools/set_bundled_refine.py prior_weight=1e-4 lr=0.3 image_pool=1
    .venv/bin/python tools/set_bundled_refine.py --checkpoint run/best.safetensors sigma_scale=0.7
"""
import dataclasses
import json
import sys
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from xray2ct.config import RefineConfig, config_from_dict, config_to_dict, save_config, validate_config
from xray2ct.engine.inference import default_checkpoint
from xray2ct.fileio import atomic_path


def store_config(src: Path, dst: Path, cfg) -> None:
    """Write src's tensors and metadata to dst (atomically; dst may be src) with `cfg` as its config."""
    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata())
    meta["config"] = json.dumps(config_to_dict(cfg))
    tensors = load_file(str(src))
    with atomic_path(dst) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def set_refine(ckpt: Path, pairs: list[str], bundled: bool) -> None:
    with safe_open(str(ckpt), "pt") as f:
        cfg = config_from_dict(json.loads(f.metadata()["config"]), source=str(ckpt))
    fields = {f.name: f.type for f in dataclasses.fields(RefineConfig)}
    values = {k: (int if fields[k] == "int" else float)(v) for k, v in (p.split("=", 1) for p in pairs)}
    cfg = dataclasses.replace(cfg, refine=dataclasses.replace(cfg.refine, **values))
    validate_config(cfg, "refine settings")
    store_config(ckpt, ckpt, cfg)
    if bundled:
        save_config(cfg, ckpt.parent / "config.json")  # as tools/bundle_default.py writes it
    print(f"{ckpt.name}: refine = {cfg.refine}")


def main(args: list[str]) -> None:
    if args[:1] == ["--checkpoint"]:
        set_refine(Path(args[1]), args[2:], bundled=False)
    else:
        set_refine(default_checkpoint(), args, bundled=True)


if __name__ == "__main__":
    main(sys.argv[1:])
