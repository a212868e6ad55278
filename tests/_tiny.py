"""A tiny variant of configs/cpu-small.json (every component on) for fast engine tests."""
N, S = 16, 32  # volume side, X-ray side
TINY_MODEL = {"model.volume_size": N, "model.xray_img_size": S, "model.voxel_dim": 32, "model.num_heads": 2,
              "model.xray_feature_dim": 32, "model.encoder_channels": [8, 8, 16, 32],
              "model.decoder_channels": [16, 8], "model.num_attn_blocks": 1, "model.num_ffn_blocks": 1,
              "model.cnn_expand": 2}
