"""A tiny variant of configs/cpu-small.json (every component on) for fast engine tests."""
N, S = 16, 32  # volume side, X-ray side
TINY_MODEL = {"model.volume_size": N, "model.xray_img_size": S, "model.voxel_dim": 32, "model.num_heads": 2,
              "model.xray_feature_dim": 32, "model.encoder_channels": [8, 8, 16, 32],
              "model.decoder_channels": [16, 8], "model.num_attn_blocks": 1, "model.num_ffn_blocks": 1,
              "model.cnn_expand": 2}


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
