"""A tiny variant of configs/cpu-small.json (every component on) for fast engine tests:
the model of the quality benchmark's smoke run (`quality.QUICK_OVERRIDES`)."""
from xray2ct.quality import QUICK_OVERRIDES

TINY_MODEL = {k: v for k, v in QUICK_OVERRIDES.items() if k.startswith("model.")}
N, S = TINY_MODEL["model.volume_size"], TINY_MODEL["model.xray_img_size"]  # volume side, X-ray side


def tiny_run(root, n_cases: int, step: int = 1):
    """A freshly initialised tiny model saved as `root/run/best.safetensors`, and
    `n_cases` phantoms at N³ / S² in `root/data` -> (checkpoint path, data folder)."""
    import torch

    from xray2ct.checkpoint import save_checkpoint
    from xray2ct.config import load_config
    from xray2ct.data.prepare import make_phantom_dataset
    from xray2ct.models import build_model

    cfg = load_config("configs/cpu-small.json", TINY_MODEL)
    torch.manual_seed(0)
    ckpt = save_checkpoint(root / "run", "best", build_model(cfg), cfg, step=step, epoch=1)
    make_phantom_dataset(root / "data", n=n_cases, size=N, xray_size=S, progress=False)
    return ckpt, root / "data"
