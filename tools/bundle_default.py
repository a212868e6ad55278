"""Bundle trained weights as the package's default model (maintainer tool).

    python tools/bundle_default.py --run RUN [--name cpu-default] [--recipe configs/cpu-default.json]

Copies RUN/best.safetensors (its config is inside) to src/xray2ct/assets/default/NAME.safetensors,
replacing what was there, and writes the config beside it as config.json. With --recipe, the
bundle's description is the recipe file's (written after the run, it says how the run went).
The examples are written by tools/make_examples.py.
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
from pathlib import Path

from set_bundled_refine import store_config  # tools/, beside this script

from xray2ct.checkpoint import load_checkpoint
from xray2ct.config import load_config, save_config

ASSETS = Path(__file__).resolve().parents[1] / "src" / "xray2ct" / "assets"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--name", default="cpu-default")
    ap.add_argument("--recipe", type=Path, help="take the description from this config file")
    args = ap.parse_args()

    default = ASSETS / "default"
    shutil.rmtree(default, ignore_errors=True)
    default.mkdir(parents=True)
    ckpt = load_checkpoint(args.run / "best.safetensors")
    target = default / f"{args.name}.safetensors"
    config = ckpt.config
    if args.recipe is None:
        shutil.copy(ckpt.path, target)
    else:
        config = dataclasses.replace(config, description=load_config(args.recipe).description)
        store_config(ckpt.path, target, config)
    save_config(config, default / "config.json")
    print(f"bundled {ckpt.path} (step {ckpt.step}) as {default / args.name}.safetensors")


if __name__ == "__main__":
    main()
