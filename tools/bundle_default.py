"""Bundle trained weights as the package's default model (maintainer tool).

    python tools/bundle_default.py --run /work/runs/default-v2 [--name cpu-default]

Copies RUN/best.safetensors (its config is inside) to src/xray2ct/assets/default/NAME.safetensors,
replacing what was there, and writes the config beside it as config.json. The examples are
written by tools/make_examples.py.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from xray2ct.checkpoint import load_checkpoint
from xray2ct.config import save_config

ASSETS = Path(__file__).resolve().parents[1] / "src" / "xray2ct" / "assets"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--name", default="cpu-default")
    args = ap.parse_args()

    default = ASSETS / "default"
    shutil.rmtree(default, ignore_errors=True)
    default.mkdir(parents=True)
    ckpt = load_checkpoint(args.run / "best.safetensors")
    shutil.copy(ckpt.path, default / f"{args.name}.safetensors")
    save_config(ckpt.config, default / "config.json")
    print(f"bundled {ckpt.path} (step {ckpt.step}) as {default / args.name}.safetensors")


if __name__ == "__main__":
    main()
