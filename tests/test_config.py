"""Typed JSON config: the shipped configs and the seed's file load, bad input is named."""
import dataclasses
import json
from pathlib import Path

import pytest

from xray2ct.config import (
    Config,
    ConfigError,
    ModelConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    override_config,
    save_config,
    validate_config,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {name: ROOT / "configs" / f"{name}.json" for name in ("optimized", "baseline", "cpu-small", "gpu-64",
                                                                          "gpu-128")}
SEED = Path("/work/shared/seed/config_optimized.json")
SWITCHES = {"attention", "layout", "use_learnable_priors", "use_cnn_branch", "use_multiscale", "use_conditioning",
            "ffn_ratio"}


def write(tmp_path, d, name="x.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(d))
    return path


def cpu_small_dict() -> dict:
    return json.loads(CONFIGS["cpu-small"].read_text())


def test_shipped_configs_load_with_their_values():
    opt, base, small = (load_config(CONFIGS[n]) for n in ("optimized", "baseline", "cpu-small"))
    assert (opt.model.volume_size, opt.model.xray_img_size, opt.model.voxel_dim) == (64, 512, 256)
    assert (opt.model.num_attn_blocks, opt.model.num_ffn_blocks, opt.model.num_heads) == (2, 4, 8)
    assert (opt.model.attention, opt.model.layout, opt.model.ffn_ratio) == ("cga", "sandwich", 2.0)
    assert opt.model.use_cnn_branch and opt.model.use_learnable_priors
    assert opt.model.use_multiscale and opt.model.use_conditioning
    assert (base.model.attention, base.model.layout, base.model.ffn_ratio) == ("mhsa", "standard", 4.0)
    assert not (base.model.use_cnn_branch or base.model.use_learnable_priors
                or base.model.use_multiscale or base.model.use_conditioning)
    assert (small.model.volume_size, small.model.xray_img_size, small.model.grid) == (32, 128, 8)
    assert not small.optimization.use_mixed_precision
    assert len(small.model.decoder_channels) == 2  # 8³ -> 16³ -> 32³


def test_gpu_64_is_the_optimized_model_with_the_cpu_small_recipe():
    opt, small, gpu = (config_to_dict(load_config(CONFIGS[n])) for n in ("optimized", "cpu-small", "gpu-64"))
    assert gpu["model"] == {**opt["model"], "subvoxel_detail": True}
    assert gpu["training"] == {**small["training"], "num_epochs": 30}
    assert gpu["loss"] == small["loss"] and gpu["geometry"] == opt["geometry"]
    assert gpu["optimization"]["use_mixed_precision"] and gpu["data"]["augment"]


def test_gpu_128_is_gpu_64_at_the_resolution_of_the_x2ct_preset():
    from xray2ct.data.presets import PRESETS

    g64, g128 = (config_to_dict(load_config(CONFIGS[n])) for n in ("gpu-64", "gpu-128"))
    assert g128["model"] == {**g64["model"], "volume_size": 128, "xray_img_size": 256, "token_grid": 16,
                             "decoder_channels": [128, 64, 32]}  # 16³ tokens, three x2 stages to 128³
    assert g128["training"] == {**g64["training"], "batch_size": 2, "learning_rate": 0.00025, "num_epochs": 100}
    assert g128["loss"] == g64["loss"] and g128["geometry"] == g64["geometry"] and g128["optimization"] == g64["optimization"]
    x2ct, cfg = PRESETS["x2ct"], load_config(CONFIGS["gpu-128"])
    assert (cfg.model.volume_size, cfg.geometry.fov_mm) == (x2ct.size, x2ct.fov_mm)  # 2.5 mm voxels, as prepared
    assert cfg.model.xray_img_size == x2ct.xray_size and cfg.data.max_patients >= 1018  # every LIDC-IDRI scan


def test_baseline_differs_from_optimized_only_in_the_switches():
    opt, base = (config_to_dict(load_config(CONFIGS[n])) for n in ("optimized", "baseline"))
    sections = [s for s in opt if s != "description"]
    assert sections == [s for s in base if s != "description"]
    diff = {k for s in sections for k in opt[s] if opt[s][k] != base[s][k]}
    assert diff == SWITCHES


def test_seed_file_loads_as_it_is():
    cfg = load_config(SEED)
    assert cfg.model.volume_size == 64  # given as [64, 64, 64]
    assert cfg.data.dataset_path == "/workspace/drr_patient_data"
    assert cfg.training.learning_rate == pytest.approx(1e-4)
    assert cfg.loss.projection_weight == Config().loss.projection_weight  # absent: default


def test_defaults_are_consistent_and_missing_sections_take_them():
    validate_config(Config())
    assert config_from_dict({}) == Config()
    assert config_from_dict({"model": {"voxel_dim": 128}}).model == ModelConfig(voxel_dim=128)


def test_misspelt_key_is_named_with_suggestion(tmp_path):
    d = cpu_small_dict()
    d["model"]["num_attn_blokcs"] = 2
    path = write(tmp_path, d)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "'model.num_attn_blokcs'" in msg and str(path) in msg and "did you mean 'num_attn_blocks'" in msg


def test_unknown_section_is_named_with_suggestion(tmp_path):
    path = write(tmp_path, {"trainig": {"num_epochs": 1}})
    with pytest.raises(ConfigError, match=r"unknown section 'trainig'.*did you mean 'training'"):
        load_config(path)


@pytest.mark.parametrize(
    "section, key, value, expected",
    [
        ("model", "voxel_dim", "256", "an int"),
        ("model", "num_heads", True, "an int"),  # true is not an int
        ("model", "voxel_dim", 256.0, "an int"),
        ("model", "use_cnn_branch", 1, "true or false"),
        ("training", "learning_rate", "fast", "a number"),
        ("data", "dataset_path", 3, "a string"),
        ("model", "encoder_channels", [16, "32"], "a list of ints"),
    ],
)
def test_wrong_type_names_key_expected_and_value(tmp_path, section, key, value, expected):
    d = cpu_small_dict()
    d[section][key] = value
    path = write(tmp_path, d)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert f"{section}.{key}" in msg and expected in msg and repr(value) in msg and str(path) in msg


def test_int_is_accepted_where_a_float_is_due(tmp_path):
    d = cpu_small_dict()
    d["model"]["ffn_ratio"] = 3
    cfg = load_config(write(tmp_path, d))
    assert cfg.model.ffn_ratio == 3.0 and isinstance(cfg.model.ffn_ratio, float)


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"voxel_dim": 100, "num_heads": 8}, ["voxel_dim (100)", "num_heads (8)"]),
        ({"volume_size": [32, 32, 16]}, ["volume_size", "cube"]),
        ({"volume_size": 48, "token_grid": 16}, ["power of two"]),  # 48 / 16 = 3
        ({"volume_size": 40, "token_grid": 16}, ["divisible by the token grid"]),
        ({"volume_size": 4}, ["token_grid resolves to 1"]),
        ({"decoder_channels": [64, 32, 16]}, ["decoder_channels", "2 entries, got 3"]),
        ({"attention": "flash"}, ["model.attention", "'mhsa'", "'cga'"]),
        ({"layout": "pyramid"}, ["model.layout", "'sandwich'"]),
        ({"xray_img_size": 100}, ["xray_img_size (100)", "16"]),
        ({"drop_path": 1.0}, ["drop_path"]),
        ({"voxel_dim": 0}, ["voxel_dim must be >= 1"]),
    ],
)
def test_impossible_values_are_named(tmp_path, changes, words):
    d = cpu_small_dict()
    d["model"].update(changes)
    path = write(tmp_path, d)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    for w in [*words, str(path)]:
        assert w in str(e.value)


def test_all_impossible_values_are_listed_at_once(tmp_path):
    d = cpu_small_dict()
    d["model"].update(attention="flash", layout="pyramid")
    d["training"]["batch_size"] = 0
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, d))
    assert all(k in str(e.value) for k in ("model.attention", "model.layout", "training.batch_size"))


def test_zero_loss_weights_everywhere_is_an_error():
    with pytest.raises(ConfigError, match="at least one loss weight"):
        config_from_dict({"loss": {"l1_weight": 0, "ssim_weight": 0, "uncertainty_reg_weight": 0,
                                   "projection_weight": 0}})


def test_overrides_parse_cli_strings():
    cfg = load_config(CONFIGS["cpu-small"], {
        "model.voxel_dim": "96", "training.num_epochs": "1", "training.learning_rate": "1e-4",
        "model.use_cnn_branch": "false", "model.volume_size": "[64,64,64]", "model.attention": "mhsa",
        "data.dataset_path": "/tmp/data", "model.decoder_channels": "[48, 24]", "model.ffn_ratio": "3",
    })
    m = cfg.model
    assert (m.voxel_dim, m.volume_size, m.attention, m.use_cnn_branch, m.decoder_channels) == (96, 64, "mhsa", False, (48, 24))
    assert cfg.training.num_epochs == 1 and cfg.training.learning_rate == pytest.approx(1e-4)
    assert m.ffn_ratio == 3.0 and cfg.data.dataset_path == "/tmp/data"
    assert cfg.model.grid == 16  # token_grid 0 follows the new volume size


def test_override_errors_name_the_override():
    with pytest.raises(ConfigError, match=r"unknown key 'model.voxel_dimm' in overrides.*did you mean 'voxel_dim'"):
        load_config(CONFIGS["cpu-small"], {"model.voxel_dimm": "64"})
    with pytest.raises(ConfigError, match=r"model.voxel_dim in overrides.* must be an int, got 'big'"):
        load_config(CONFIGS["cpu-small"], {"model.voxel_dim": "big"})
    with pytest.raises(ConfigError, match=r"'num_epochs' .* must be 'section.key'; did you mean 'training.num_epochs'"):
        load_config(CONFIGS["cpu-small"], {"num_epochs": "1"})
    with pytest.raises(ConfigError, match=r"voxel_dim \(128\) must be divisible by model.num_heads \(3\)"):
        load_config(CONFIGS["cpu-small"], {"model.num_heads": "3"})


def test_override_config_applies_to_a_loaded_config():
    cfg = load_config(CONFIGS["cpu-small"])
    new = override_config(cfg, {"training.batch_size": "2"})
    assert new.training.batch_size == 2 and new.model == cfg.model and cfg.training.batch_size != 2


@pytest.mark.parametrize("name", [*CONFIGS, "seed"])
def test_round_trip_dict_and_file(tmp_path, name):
    cfg = load_config(SEED if name == "seed" else CONFIGS[name])
    d = config_to_dict(cfg)
    json.dumps(d)  # JSON-ready
    assert config_from_dict(d) == cfg
    path = tmp_path / "sub" / "cfg.json"
    save_config(cfg, path)
    assert load_config(path) == cfg
    assert [p.name for p in path.parent.iterdir()] == ["cfg.json"]  # no temp file left


def test_comments_are_ignored_and_description_kept(tmp_path):
    d = cpu_small_dict()
    d["_comment"] = "top-level note"
    d["model"]["_comment"] = "why ffn_ratio is 2"
    cfg = load_config(write(tmp_path, d))
    assert cfg.description == d["description"]
    assert "_comment" not in json.dumps(config_to_dict(cfg))


def test_geometry_build_and_grid():
    cfg = load_config(CONFIGS["cpu-small"])
    g = cfg.geometry.build(volume_size=32, det_size=128)
    assert g.volume_shape == (32, 32, 32) and g.det_shape == (128, 128)
    assert g.voxel_mm == (10.0, 10.0, 10.0)  # fov 320 mm / 32
    assert (g.source_iso_mm, g.source_det_mm) == (541.0, 949.0)
    assert ModelConfig(volume_size=64).grid == 16 and ModelConfig(volume_size=64, token_grid=8).grid == 8


def test_file_errors_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": {"voxel_dim": 1,}}')
    with pytest.raises(ValueError, match=r"bad.json is not valid JSON.*line 1"):
        load_config(bad)


def test_configs_are_frozen():
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model.voxel_dim = 3


@pytest.mark.parametrize("key", ["training.learning_rate", "training.weight_decay", "loss.l1_weight",
                                 "model.ffn_ratio", "geometry.mu_water", "geometry.fov_mm"])
@pytest.mark.parametrize("value", ["Infinity", "NaN", "-Infinity"])
def test_every_float_must_be_finite(key, value):
    # JSON (and --set) accept Infinity and NaN; a NaN compares false with every bound
    with pytest.raises(ConfigError, match=rf"{key} must be a finite number"):
        load_config(CONFIGS["cpu-small"], {key: value})


@pytest.mark.parametrize("overrides, words", [
    ({"model.voxel_dim": "1000000000000"}, ["model.voxel_dim must be <= 4096", "GiB activation"]),
    ({"model.volume_size": "4096"}, ["model.volume_size must be <= 512"]),
    ({"training.batch_size": "100000000"}, ["training.batch_size must be <= 4096"]),
    ({"model.encoder_channels": "[16, 32, 64, 100000]"}, ["model.encoder_channels", "at most 4096"]),
    ({"model.volume_size": "512", "model.decoder_channels": "[4096, 4096]"}, ["volume_size³ × decoder width"]),
    ({"training.seed": str(2**40)}, ["training.seed must be <="]),
])
def test_huge_sizes_are_config_errors_not_allocations(overrides, words):
    with pytest.raises(ConfigError) as e:
        load_config(CONFIGS["cpu-small"], overrides)
    for w in words:
        assert w in str(e.value)


def test_info_refuses_a_huge_model_without_allocating(tmp_path):
    import resource
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "xray2ct"
    d = cpu_small_dict()
    d["model"]["voxel_dim"] = 10**12
    r = subprocess.run([str(exe), "info", "--config", str(write(tmp_path, d))], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "model.voxel_dim must be <= 4096" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([str(exe), "info", "--config", str(CONFIGS["cpu-small"]), "--set", "model.voxel_dim=1e12"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "model.voxel_dim" in r.stderr and "Traceback" not in r.stderr
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss < 2 * 2**20  # KiB: no attempt to allocate


@pytest.mark.slow
def test_gpu_128_fits_a_40_gb_gpu_at_batch_2():
    """What `xray2ct info` measures, at batch 2: the fp32 tensors autograd saves (bf16 saves
    fewer bytes) plus fp32 weights, gradients and AdamW's two moments, within half of 40 GB;
    the other half is headroom for temporaries, cuDNN workspace and allocator slack.

    Last in this file: it leaves the test process ~6 GB resident, and a child forked after it
    would count that against `test_info_refuses_a_huge_model_without_allocating`."""
    from xray2ct.models.summary import model_summary

    summary = model_summary(load_config(CONFIGS["gpu-128"]), batch_size=2)
    total = summary["activation_bytes"] + 4 * 4 * summary["params_total"]
    assert total < 0.5 * 40e9, f"{total / 2**30:.1f} GiB"


def test_acquisition_section_round_trips_and_takes_dotted_overrides(tmp_path):
    cfg = load_config(CONFIGS["cpu-small"], {"data.acquisition.render": "true", "data.view_dropout": "0.25",
                                             "data.acquisition.source_det_mm": "[1000, 1800]"})
    a = cfg.data.acquisition
    assert a.render and a.source_det_mm == (1000.0, 1800.0) and cfg.data.view_dropout == 0.25
    assert config_from_dict(config_to_dict(cfg)) == cfg
    raw = {"data": {"acquisition": {"render": True, "offset_mm": 10, "_comment": "ignored"}}}
    assert config_from_dict(raw).data.acquisition.offset_mm == 10.0


@pytest.mark.parametrize("override, message", [
    ({"data.acquisition.source_det_mm": [1900, 900]}, "data.acquisition.source_det_mm must be \\[low, high\\]"),
    ({"data.acquisition.detector_mm": [350]}, "data.acquisition.detector_mm must be \\[low, high\\]"),
    ({"data.acquisition.nominal_fraction": 1.5}, "data.acquisition.nominal_fraction must be in \\[0, 1\\]"),
    ({"data.acquisition.rotation_deg": -1}, "data.acquisition.rotation_deg must be in \\[0, 45\\]"),
    ({"data.acquisition.margin_mm": float("nan")}, "data.acquisition.margin_mm must be in"),
    ({"data.acquisition.patient_det_mm": [100, 900]}, "puts the source inside the rendered field"),
    ({"data.view_dropout": 2}, "data.view_dropout must be in \\[0, 1\\]"),
    ({"data.acquisition.pool_workers": -1}, "data.acquisition.pool_workers must be >= 0"),
    ({"data.acquisition.marginmm": 1}, "did you mean 'margin_mm'"),
    ({"data.acquisition.render": "yes"}, "data.acquisition.render .* must be true or false"),
    ({"data.acquisition.gamma": ["a", 1]}, "must be a list of numbers"),
    ({"data.acquisition.render": True, "optimization.cuda_graphs": True}, "turn optimization.compile_model and"),
])
def test_bad_acquisition_settings_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS["cpu-small"], override)


def test_cpu_small_acquisition_is_cpu_small_with_rendered_films():
    acq, small = (config_to_dict(load_config(ROOT / "configs" / f"{n}.json")) for n in ("cpu-small-acquisition",
                                                                                        "cpu-small"))
    assert {k: v for k, v in acq.items() if k not in ("data", "description")} == \
        {k: v for k, v in small.items() if k not in ("data", "description")}
    assert acq["data"]["acquisition"]["render"] and acq["data"]["view_dropout"] == 0.2
