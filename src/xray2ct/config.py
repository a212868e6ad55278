"""Typed configuration: JSON files with the seed's sections become frozen dataclasses.

A config file is a JSON object with the sections `model`, `training`, `loss`, `data`,
`optimization`, `logging` and `geometry` (the seed's `config_optimized.json` plus
`geometry`). A missing section or key takes the default below. JSON has no comments, so:

  * a top-level `"description"` string is kept (`Config.description`) and saved back;
  * any key starting with `_` (e.g. `"_comment"`), at the top level or inside a section,
    is a comment and is ignored.

Everything else is checked where it enters: an unknown or misspelt key, a value of the
wrong type or an impossible combination raises `ConfigError` naming the file, the key,
the expected form and, for a misspelt key, the closest valid one.
"""
from __future__ import annotations

import difflib
import json
import math
import os
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from xray2ct.errors import UserError
from xray2ct.geometry import Geometry

ATTENTION_KINDS = ("mhsa", "cga")
LAYOUTS = ("sandwich", "standard")
XRAY_STRIDE = 16  # the 2D encoder downsamples X-rays by 16; their side must divide by it

# Upper bounds on sizes, so a typo (an extra zero, 1e12) is a config error naming the key
# instead of an attempt to allocate terabytes. Each is far above any model this package
# can train: optimized.json uses 64³ volumes, 512² X-rays and 256-wide tokens.
MAX_INT = {
    "model.volume_size": 512, "model.xray_img_size": 4096, "model.voxel_dim": 4096, "model.num_heads": 256,
    "model.num_attn_blocks": 64, "model.num_ffn_blocks": 64, "model.xray_feature_dim": 4096,
    "model.token_grid": 512, "model.key_dim": 1024, "model.kv_pool": 64, "model.cnn_expand": 16,
    "training.num_epochs": 100_000, "training.batch_size": 4096, "training.warmup_epochs": 100_000,
    "training.grad_accum_steps": 4096, "training.seed": 2**32 - 1, "training.max_bad_steps": 1_000_000,
    "data.max_patients": 10**9, "data.num_workers": 256, "data.prefetch_factor": 1024,
    "refine.steps": 100_000, "refine.patience": 100_000, "refine.fog_order": 6, "refine.image_pool": 64,
    "refine.shift_steps": 10_000, "refine.relift_rounds": 16,
}
MAX_CHANNELS = 4096  # each entry of model.encoder_channels / decoder_channels
MAX_STAGES = 8  # entries of model.encoder_channels / decoder_channels
MAX_FFN_RATIO = 16.0
MAX_ACTIVATION = 2**31  # elements of the largest activation of one sample (8 GiB in float32)


class ConfigError(UserError, ValueError):
    """A config file or override is invalid; the message names the file and key."""


# --- sections -----------------------------------------------------------------------
@dataclass(frozen=True)
class ModelConfig:
    volume_size: int = 64  # CT side N (N³ voxels); JSON may give [N, N, N]
    xray_img_size: int = 512  # side of each square input X-ray, px
    voxel_dim: int = 256  # token width of the ViT / fusion
    num_attn_blocks: int = 2  # attention blocks in the transformer stack
    num_ffn_blocks: int = 4  # FFN-only blocks (sandwich); standard uses attn+FFN pairs of both counts
    num_heads: int = 8  # attention heads; must divide voxel_dim
    xray_feature_dim: int = 512  # width of the X-ray encoder's deepest features
    use_cnn_branch: bool = True  # 3D MBConv+SE branch beside the ViT
    use_learnable_priors: bool = True  # learned (vs fixed) depth priors in the lifting
    attention: str = "cga"  # "mhsa" (plain multi-head) | "cga" (cascaded group attention)
    layout: str = "sandwich"  # "sandwich" (EfficientViT) | "standard" ([attn -> FFN] x L)
    use_multiscale: bool = True  # grouped multi-scale K/V pooling inside attention
    use_conditioning: bool = True  # hierarchical adaptive conditioning of the blocks
    token_grid: int = 0  # ViT token grid side G; 0 -> volume_size // 4
    key_dim: int = 16  # CGA query/key dim per head
    ffn_ratio: float = 2.0  # FFN hidden = ffn_ratio * voxel_dim (EfficientViT: 2, ViT: 4)
    kv_pool: int = 2  # K/V average-pool factor per axis for multi-scale/pooled attention
    encoder_channels: tuple[int, ...] = (32, 64, 128, 256)  # 2D encoder stage widths
    # 3D decoder width per x2 upsampling stage, G³ -> N³: log2(N / G) entries. Two for the
    # default grid N // 4 (the contract's sketch listed three, which would decode to 2N).
    decoder_channels: tuple[int, ...] = (128, 64)
    cnn_expand: int = 4  # MBConv expansion ratio
    drop_path: float = 0.0  # stochastic depth rate in the transformer stack
    # geometry-aware skips: lift a finer encoder map of both views into every decoder stage
    lifted_skips: bool = False
    # decoder stages add a learned value per 2x2x2 child voxel to trilinear upsampling (voxel shuffle)
    subvoxel_detail: bool = False

    def __post_init__(self):
        _lists_to_tuples(self)

    @property
    def grid(self) -> int:
        """Resolved token grid side G (token_grid, or volume_size // 4 when it is 0)."""
        return self.token_grid or self.volume_size // 4


@dataclass(frozen=True)
class TrainingConfig:
    num_epochs: int = 15  # passes over the training split
    batch_size: int = 2  # volumes per optimizer micro-step
    learning_rate: float = 1e-4  # AdamW peak learning rate (after warmup)
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    grad_clip_max_norm: float = 1.0  # global gradient-norm clip; 0 disables clipping
    warmup_epochs: int = 2  # linear LR warmup before cosine decay
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    seed: int = 0  # RNG seed for init, shuffling and augmentation
    deterministic: bool = False  # torch deterministic algorithms (slower)
    max_bad_steps: int = 5  # non-finite losses in a row before training stops
    time_budget_s: float = 0.0  # stop (with a checkpoint) after this much wall time per call; 0: none. --time-budget overrides
    # size the cosine schedule to the budget: after each epoch, num_epochs (then a cap) becomes the
    # epochs that end inside time_budget_s at the rate measured so far, so the LR anneals before the
    # budget stops the run on a slow machine, and a fast machine trains longer
    fit_schedule_to_budget: bool = False


@dataclass(frozen=True)
class LossConfig:
    l1_weight: float = 1.0  # L1 on normalized CT
    mse_weight: float = 0.0  # squared error on normalized CT: what PSNR measures (L1 favours the median)
    ssim_weight: float = 0.5  # 1 - 3D SSIM
    uncertainty_reg_weight: float = 0.01  # Gaussian NLL calibrating log_var
    projection_weight: float = 0.1  # L1 between DRRs of prediction and target


@dataclass(frozen=True)
class AcquisitionConfig:
    """`data.acquisition`: films rendered from the CT on the fly at a random acquisition
    per sample (`xray2ct.data.acquisition_sampler`, `xray2ct.data.render`). Ranges are
    [low, high], drawn uniformly."""

    render: bool = False  # true: render the films per training step; false: the dataset's stored X-rays
    nominal_fraction: float = 0.3  # share of samples at the training geometry (covering detector, PA, centred)
    source_det_mm: tuple[float, ...] = (900.0, 1900.0)  # source–detector distance, mm
    patient_det_mm: tuple[float, ...] = (100.0, 250.0)  # isocentre (patient centre)–detector distance, mm
    detector_mm: tuple[float, ...] = (350.0, 430.0)  # side of the square cassette, mm
    covering_fraction: float = 0.3  # share of non-nominal samples whose detector just covers the 320 mm cube
    offset_mm: float = 30.0  # patient offset, uniform in ±offset along each axis, mm
    rotation_deg: float = 5.0  # patient rotation, uniform in ±rotation about each axis, degrees
    centred_fraction: float = 0.0  # share of non-nominal samples with the patient centred and unturned
    ap_fraction: float = 0.3  # share of non-nominal samples with an AP (not PA) frontal film
    margin_mm: float = 80.0  # the wide field rendered around the cube, per side on every axis, mm
    # share of non-nominal samples filmed from the cube alone (air around it): how films rendered
    # from a 320 mm CT look (the acceptance check, the robustness suite), beside real, wide films
    cut_fraction: float = 0.5
    # share of non-nominal films read as a DICOM file is: uniform borders (air, collimation)
    # cropped to the exposed field (`xrayio.exposed_field`) and the geometry moved with the crop
    crop_fraction: float = 0.5
    phantoms: int = 400  # phantoms in the pool when no dataset_path is given
    phantom_version: int = 2  # generator of the pool's phantoms (`chest_phantom(version=...)`), as `xray2ct phantoms`
    # processes generating the pool on first use (0: one per CPU core); more than one spawns
    # processes, so a script calling `train` needs the `if __name__ == "__main__":` guard
    pool_workers: int = 1
    # film style (`RadiographStyle`), applied when data.augment is true
    scatter: float = 0.15  # max fraction of broad low-pass fog (scatter)
    blur_px: float = 1.0  # max focal-spot/detector blur, Gaussian sigma in pixels of the rendered film
    noise: float = 0.02  # max std of additive noise on the [0, 1] film
    gamma: tuple[float, ...] = (0.8, 1.25)  # display gamma range (processing curve)
    contrast: tuple[float, ...] = (0.85, 1.15)  # contrast stretch range about the mean (exposure)

    def __post_init__(self):
        _lists_to_tuples(self)


@dataclass(frozen=True)
class DataConfig:
    dataset_path: str = ""  # ROOT with ROOT/{id}/{id}.nii.gz and the two DRR PNGs
    max_patients: int = 1000  # use at most this many cases
    num_workers: int = 4  # DataLoader worker processes (0: load in the main process)
    prefetch_factor: int = 2  # batches prefetched per worker
    augment: bool = True  # radiograph-style augmentation of the training X-rays
    # probability that a training sample loses one view (an all-zero image), so the same
    # weights take a PA alone; 80 % of the drops remove the lateral, 20 % the PA
    view_dropout: float = 0.0
    acquisition: AcquisitionConfig = field(default_factory=AcquisitionConfig)  # on-the-fly films


@dataclass(frozen=True)
class OptimizationConfig:
    use_mixed_precision: bool = True  # bf16/fp16 autocast on CUDA (ignored on CPU)
    compile_model: bool = False  # torch.compile the model
    # CUDA graphs for the training step's forward and backward (torch.compile mode="reduce-overhead");
    # falls back, with a warning, where capture is impossible (CPU, DDP). Unmeasured on a GPU so far.
    cuda_graphs: bool = False


@dataclass(frozen=True)
class LoggingConfig:
    log_interval: int = 10  # steps between training log lines
    val_interval: int = 1  # epochs between validations
    save_checkpoint_interval: int = 1  # epochs between checkpoints
    checkpoint_every_steps: int = 0  # also save `last` every this many steps (0: only per epoch)


@dataclass(frozen=True)
class GeometryConfig:
    fov_mm: float = 320.0  # side of the cubic field of view, mm
    source_iso_mm: float = 541.0  # source to isocentre, mm (X2CT-GAN)
    source_det_mm: float = 949.0  # source to detector, mm (X2CT-GAN)
    mu_water: float = 0.02  # attenuation of water, 1/mm

    def build(self, volume_size: int, det_size: int) -> Geometry:
        """The cone-beam geometry for an N³ volume over fov_mm and a det_size² detector."""
        n = int(volume_size)
        return Geometry(
            volume_shape=(n, n, n),
            voxel_mm=self.fov_mm / n,
            source_iso_mm=self.source_iso_mm,
            source_det_mm=self.source_det_mm,
            det_shape=(int(det_size), int(det_size)),
        )


@dataclass(frozen=True)
class RefineConfig:
    """Physics-consistent refinement (`xray2ct.refine`); chosen on held-out phantoms per model."""

    steps: int = 200  # most Adam steps per case
    lr: float = 0.3  # Adam step in whitened units (z = (v - μ) / σ)
    prior_weight: float = 1e-4  # λ: weight of the network prior (v - μ)² / σ² against the image term
    # Films the grid cannot fully explain (finer anatomy, noise, a film's processing curve): when the
    # image error e left after refining at prior_weight is above explained_error, refinement reruns
    # with λ × (1 + (e - explained_error) / error_floor), at most prior_weight_max: the excess is noise
    # to the grid, and λ scales with the noise variance, from error_floor, the typical error of the
    # films λ was chosen on (xray2ct.refine); explained_error 0: λ stays fixed. λ = 1 already keeps
    # the network's volume nearly as it is (the image term is below 0.05 on any film)
    explained_error: float = 0.0
    error_floor: float = 1e-6
    prior_weight_max: float = 1.0
    sigma_scale: float = 1.0  # calibration temperature of the network's σ (also scales saved uncertainty)
    fog_order: int = 1  # polynomial degree of the fitted fog over the detector (0: an offset only)
    image_pool: int = 1  # compare images in pool x pool pixel means (1: pixel by pixel)
    patience: int = 25  # early stopping: steps without the image term improving ...
    tol: float = 1e-3  # ... by this relative amount
    shift_steps: int = 25  # Adam steps per image scale fitting where the patient stood (0: assume centred)
    shift_min_mm: float = 12.0  # a shift component below this is left to the volume: the network's own
    #   placement error is about a voxel, and a patient shift smaller than that blurs little
    shift_min_gain: float = 1.6  # ... and a shift must explain the coarse images this many times better than none
    shift_max_mm: float = 40.0  # a shift is clamped to this (the training acquisitions' offsets reach 30 mm)
    shift_search_mm: float = 5.0  # with a shift kept (one case), refine again at ±1 and ±2 of this step along
    #   its axes and keep the placement whose refined volume explains the films best (0: off)
    relift: bool = True  # with a shift found, run the network again lifting where the films show the patient
    # ... also below shift_min_mm: where the raw fitted placement (gates off) reaches relift_min_mm, for up to
    # relift_rounds passes, each kept only when its refinement explains the films better (a network that
    # half-follows a shifted patient leaves a volume whose own fit stays under the gate)
    relift_rounds: int = 2
    relift_min_mm: float = 5.0  # half a 32³ voxel


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimization: OptimizationConfig = field(default_factory=OptimizationConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    description: str = ""  # free text, kept from the file's top-level "description"


SUBSECTIONS: dict[str, type] = {"data.acquisition": AcquisitionConfig}  # sections nested in a section
SECTIONS: dict[str, type] = {
    "model": ModelConfig, "training": TrainingConfig, "loss": LossConfig, "data": DataConfig,
    "optimization": OptimizationConfig, "logging": LoggingConfig, "geometry": GeometryConfig, "refine": RefineConfig,
}


def _lists_to_tuples(obj) -> None:
    # JSON gives lists; tuples keep the frozen dataclasses hashable and comparable.
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, list):
            object.__setattr__(obj, f.name, tuple(value))


# --- type checking --------------------------------------------------------------------
def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _suggest(name: str, valid) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(sorted(valid))}"


def _coerce(key: str, value: Any, typ: Any, source: str) -> Any:
    """Check one value against its field type; ints become floats where floats are due."""
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{key} in {source} must be {expected}, got {value!r} ({type(value).__name__})")

    if key == "model.volume_size" and isinstance(value, (list, tuple)):
        # The seed writes [64, 64, 64]; only cubes are supported.
        if len(value) != 3 or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            raise bad("an int or a list of three equal ints")
        if len(set(value)) != 1:
            raise ConfigError(f"{key} in {source} must be a cube, got {list(value)}; use e.g. [{value[0]}, {value[0]}, {value[0]}]")
        return value[0]
    if typ is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an int")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if typing.get_origin(typ) is tuple:
        if typing.get_args(typ)[0] is float:
            if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                                           for v in value):
                raise bad("a list of numbers")
            return tuple(float(v) for v in value)
        if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            raise bad("a list of ints")
        return tuple(value)
    if typ in SUBSECTIONS.values():
        return _fields_from_dict(key, typ, value, source)
    raise AssertionError(f"unhandled field type {typ!r} for {key}")  # internal: a new field type


def _section_from_dict(name: str, raw: Any, source: str):
    return _fields_from_dict(name, SECTIONS[name], raw, source)


def _fields_from_dict(name: str, cls, raw: Any, source: str):
    """A (sub)section dataclass from its JSON object; `name` is its dotted key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"section {name!r} in {source} must be a JSON object, got {raw!r}")
    types = _field_types(cls)
    values = {}
    for key, value in raw.items():
        if key.startswith("_"):
            continue  # comment
        if key not in types:
            raise ConfigError(f"unknown key '{name}.{key}' in {source}{_suggest(key, types)}")
        values[key] = _coerce(f"{name}.{key}", value, types[key], source)
    return cls(**values)


# --- dict <-> Config ------------------------------------------------------------------
def config_from_dict(d: dict, source: str = "<dict>") -> Config:
    """Build and validate a Config from a dict shaped like the JSON file."""
    if not isinstance(d, dict):
        raise ConfigError(f"{source} must hold a JSON object with sections {', '.join(SECTIONS)}, got {type(d).__name__}")
    sections, description = {}, ""
    for name, raw in d.items():
        if name.startswith("_"):
            continue  # comment
        if name == "description":
            if not isinstance(raw, str):
                raise ConfigError(f"description in {source} must be a string, got {raw!r}")
            description = raw
            continue
        if name not in SECTIONS:
            raise ConfigError(f"unknown section {name!r} in {source}{_suggest(name, [*SECTIONS, 'description'])}")
        sections[name] = _section_from_dict(name, raw, source)
    cfg = Config(**sections, description=description)
    validate_config(cfg, source)
    return cfg


def config_to_dict(cfg: Config) -> dict:
    """Config -> JSON-ready dict (tuples as lists); config_from_dict inverts it."""
    out = {}
    for name in SECTIONS:
        section = getattr(cfg, name)
        out[name] = {f.name: _jsonable(getattr(section, f.name)) for f in fields(section)}
    if cfg.description:
        out["description"] = cfg.description
    return out


def _jsonable(value):
    if type(value) in SUBSECTIONS.values():
        return {f.name: _jsonable(getattr(value, f.name)) for f in fields(value)}
    return list(value) if isinstance(value, tuple) else value


# --- validation -----------------------------------------------------------------------
def validate_config(cfg: Config, source: str = "<config>") -> None:
    """Raise ConfigError listing every impossible value or combination in cfg."""
    m, t, lo, d, lg, g = cfg.model, cfg.training, cfg.loss, cfg.data, cfg.logging, cfg.geometry
    errors: list[str] = []

    def need(ok: bool, msg: str) -> None:
        if not ok:
            errors.append(msg)

    for key in ("volume_size", "xray_img_size", "voxel_dim", "num_heads", "xray_feature_dim", "key_dim",
                "kv_pool", "cnn_expand"):
        need(getattr(m, key) >= 1, f"model.{key} must be >= 1, got {getattr(m, key)}")
    for key in ("num_attn_blocks", "num_ffn_blocks", "token_grid"):
        need(getattr(m, key) >= 0, f"model.{key} must be >= 0, got {getattr(m, key)}")
    need(m.num_attn_blocks + m.num_ffn_blocks >= 1, "model.num_attn_blocks + model.num_ffn_blocks must be >= 1")
    need(m.ffn_ratio > 0, f"model.ffn_ratio must be > 0, got {m.ffn_ratio}")
    need(0.0 <= m.drop_path < 1.0, f"model.drop_path must be in [0, 1), got {m.drop_path}")
    need(m.attention in ATTENTION_KINDS, f"model.attention must be one of {ATTENTION_KINDS}, got {m.attention!r}")
    need(m.layout in LAYOUTS, f"model.layout must be one of {LAYOUTS}, got {m.layout!r}")
    need(len(m.encoder_channels) >= 1 and min(m.encoder_channels, default=0) >= 1,
         f"model.encoder_channels must be a non-empty list of positive ints, got {list(m.encoder_channels)}")
    need(min(m.decoder_channels, default=1) >= 1,
         f"model.decoder_channels must be positive ints, got {list(m.decoder_channels)}")
    if m.num_heads >= 1:
        need(m.voxel_dim % m.num_heads == 0,
             f"model.voxel_dim ({m.voxel_dim}) must be divisible by model.num_heads ({m.num_heads})")
    if m.xray_img_size >= 1:
        need(m.xray_img_size % XRAY_STRIDE == 0,
             f"model.xray_img_size ({m.xray_img_size}) must be divisible by {XRAY_STRIDE} (encoder stride)")
    if m.volume_size >= 1 and m.token_grid >= 0:
        _check_grid(m, need)

    for key in ("num_epochs", "batch_size", "grad_accum_steps"):
        need(getattr(t, key) >= 1, f"training.{key} must be >= 1, got {getattr(t, key)}")
    need(t.learning_rate > 0, f"training.learning_rate must be > 0, got {t.learning_rate}")
    for key in ("weight_decay", "grad_clip_max_norm", "warmup_epochs"):
        need(getattr(t, key) >= 0, f"training.{key} must be >= 0, got {getattr(t, key)}")
    need(t.seed >= 0, f"training.seed must be >= 0, got {t.seed}")
    need(t.time_budget_s >= 0, f"training.time_budget_s must be >= 0 (0: no budget), got {t.time_budget_s}")

    weights = {f.name: getattr(lo, f.name) for f in fields(lo)}
    for key, w in weights.items():
        need(not w < 0, f"loss.{key} must be >= 0, got {w}")  # NaN/inf: _check_bounds names them
    need(any(w > 0 for w in weights.values()), "at least one loss weight must be > 0")

    need(d.max_patients >= 1, f"data.max_patients must be >= 1, got {d.max_patients}")
    need(d.num_workers >= 0, f"data.num_workers must be >= 0, got {d.num_workers}")
    need(d.prefetch_factor >= 1, f"data.prefetch_factor must be >= 1, got {d.prefetch_factor}")
    need(0 <= d.view_dropout <= 1, f"data.view_dropout must be in [0, 1], got {d.view_dropout}")
    _check_acquisition(d.acquisition, g, need)
    o = cfg.optimization
    need(not (d.acquisition.render and (o.compile_model or o.cuda_graphs)),
         "data.acquisition.render gives every sample its own geometry, a new input object per step that "
         "torch.compile and CUDA graphs would recompile for: turn optimization.compile_model and "
         "optimization.cuda_graphs off, or data.acquisition.render off")
    for f in fields(lg):
        low = 0 if f.name == "checkpoint_every_steps" else 1  # 0 turns step checkpoints off
        need(getattr(lg, f.name) >= low, f"logging.{f.name} must be >= {low}, got {getattr(lg, f.name)}")
    need(t.max_bad_steps >= 1, f"training.max_bad_steps must be >= 1, got {t.max_bad_steps}")

    need(g.fov_mm > 0 and g.mu_water > 0, f"geometry.fov_mm ({g.fov_mm}) and geometry.mu_water ({g.mu_water}) must be > 0")
    need(0 < g.source_iso_mm < g.source_det_mm,
         f"need 0 < geometry.source_iso_mm ({g.source_iso_mm}) < geometry.source_det_mm ({g.source_det_mm})")
    # The volume must not reach the source (Geometry checks the same).
    need(g.fov_mm / 2 < g.source_iso_mm,
         f"geometry.fov_mm/2 ({g.fov_mm / 2}) must be smaller than geometry.source_iso_mm ({g.source_iso_mm})")

    r = cfg.refine
    need(min(r.steps, r.fog_order) >= 0 and min(r.patience, r.image_pool) >= 1,
         f"refine.steps ({r.steps}) and refine.fog_order ({r.fog_order}) must be >= 0, refine.patience "
         f"({r.patience}) and refine.image_pool ({r.image_pool}) >= 1")
    need(r.lr > 0 and r.prior_weight >= 0 and r.sigma_scale > 0 and 0 <= r.tol < 1,
         f"need refine.lr ({r.lr}) > 0, refine.prior_weight ({r.prior_weight}) >= 0, "
         f"refine.sigma_scale ({r.sigma_scale}) > 0 and 0 <= refine.tol ({r.tol}) < 1")
    need(r.explained_error >= 0 and r.error_floor > 0 and r.prior_weight_max > 0,
         f"need refine.explained_error ({r.explained_error}) >= 0, refine.error_floor ({r.error_floor}) > 0 "
         f"and refine.prior_weight_max ({r.prior_weight_max}) > 0")
    need(r.shift_min_gain >= 1, f"refine.shift_min_gain ({r.shift_min_gain}) must be >= 1")
    need(r.relift_rounds >= 0 and r.relift_min_mm >= 0,
         f"need refine.relift_rounds ({r.relift_rounds}) >= 0 and refine.relift_min_mm ({r.relift_min_mm}) >= 0")
    need(r.shift_steps >= 0 and 0 <= r.shift_min_mm <= r.shift_max_mm and 0 < r.shift_max_mm <= 200,
         f"need refine.shift_steps ({r.shift_steps}) >= 0 and 0 <= refine.shift_min_mm ({r.shift_min_mm}) "
         f"<= refine.shift_max_mm ({r.shift_max_mm}), which is in (0, 200] mm (it pads the refined grid)")
    need(0 <= r.shift_search_mm <= r.shift_max_mm,
         f"need 0 <= refine.shift_search_mm ({r.shift_search_mm}) <= refine.shift_max_mm ({r.shift_max_mm})")

    _check_bounds(cfg, need)
    if errors:
        raise ConfigError(f"invalid config {source}:\n  - " + "\n  - ".join(errors))


def _check_bounds(cfg: Config, need) -> None:
    """Every float finite; sizes below MAX_INT and friends; no activation beyond MAX_ACTIVATION."""
    for name in SECTIONS:
        section = getattr(cfg, name)
        for f in fields(section):
            value, key = getattr(section, f.name), f"{name}.{f.name}"
            if isinstance(value, float):
                need(math.isfinite(value), f"{key} must be a finite number, got {value}")
            elif key in MAX_INT:
                need(value <= MAX_INT[key], f"{key} must be <= {MAX_INT[key]}, got {value}")
    m = cfg.model
    need(m.ffn_ratio <= MAX_FFN_RATIO, f"model.ffn_ratio must be <= {MAX_FFN_RATIO:g}, got {m.ffn_ratio}")
    for key in ("encoder_channels", "decoder_channels"):
        widths = getattr(m, key)
        need(len(widths) <= MAX_STAGES and max(widths, default=0) <= MAX_CHANNELS,
             f"model.{key} must have at most {MAX_STAGES} entries of at most {MAX_CHANNELS}, got {list(widths)}")
    # Each size may be sane while their product is not: bound the largest tensors of one
    # sample (the token grid at full width, the decoder's full-resolution volume, the
    # encoder's first, stride-2 feature maps of both views).
    biggest = {
        "token grid³ × max(voxel_dim, xray_feature_dim)": max(m.grid, 1) ** 3 * max(m.voxel_dim, m.xray_feature_dim),
        "volume_size³ × decoder width": m.volume_size**3 * max(m.decoder_channels, default=1),
        "(xray_img_size/2)² × encoder width × 2 views": (m.xray_img_size // 2) ** 2 * max(m.encoder_channels,
                                                                                           default=1) * 2,
    }
    for what, elements in biggest.items():
        need(elements <= MAX_ACTIVATION, f"model sizes imply a {elements * 4 / 2**30:,.0f} GiB activation per sample "
             f"({what}); the limit is {MAX_ACTIVATION * 4 / 2**30:.0f} GiB: reduce the sizes")


def _check_acquisition(a: AcquisitionConfig, g: GeometryConfig, need) -> None:
    """Ranges [low, high] inside physical bounds; shares in [0, 1]; the source outside the wide field."""
    key = "data.acquisition."
    bounds = {"source_det_mm": (300.0, 5000.0), "patient_det_mm": (0.0, 1000.0), "detector_mm": (50.0, 1000.0),
              "gamma": (0.1, 10.0), "contrast": (0.1, 10.0)}
    for name, (low, high) in bounds.items():
        r = getattr(a, name)
        need(len(r) == 2 and all(math.isfinite(v) for v in r) and low <= r[0] <= r[1] <= high,
             f"{key}{name} must be [low, high] with {low:g} <= low <= high <= {high:g}, got {list(r)}")
    for name in ("nominal_fraction", "covering_fraction", "ap_fraction", "cut_fraction", "crop_fraction",
                 "centred_fraction", "scatter"):
        need(0 <= getattr(a, name) <= 1, f"{key}{name} must be in [0, 1], got {getattr(a, name)}")
    limits = {"offset_mm": 100.0, "rotation_deg": 45.0, "margin_mm": 500.0, "blur_px": 10.0, "noise": 0.5}
    for name, high in limits.items():
        need(0 <= getattr(a, name) <= high, f"{key}{name} must be in [0, {high:g}], got {getattr(a, name)}")
    need(1 <= a.phantoms <= 100_000, f"{key}phantoms must be in [1, 100000], got {a.phantoms}")
    need(a.phantom_version >= 1, f"{key}phantom_version must be >= 1, got {a.phantom_version}")
    need(a.pool_workers >= 0, f"{key}pool_workers must be >= 0, got {a.pool_workers}")
    if len(a.source_det_mm) == 2 and len(a.patient_det_mm) == 2:
        # the nearest source must stay outside the wide field, turned corners included
        half = (g.fov_mm / 2 + a.margin_mm) * math.sqrt(3)
        nearest = a.source_det_mm[0] - a.patient_det_mm[1]
        need(nearest > half, f"{key}source_det_mm low - patient_det_mm high = {nearest:g} mm puts the source "
             f"inside the rendered field (its corners reach {half:.0f} mm from the centre); raise "
             f"source_det_mm, or lower patient_det_mm or margin_mm")


def _check_grid(m: ModelConfig, need) -> None:
    """Token grid G and decoder: G³ tokens are upsampled x2 per decoder stage up to N³."""
    n, grid = m.volume_size, m.grid
    need(grid >= 2, f"model.token_grid resolves to {grid} (volume_size {n}); it must be >= 2")
    if grid < 2:
        return
    if n % grid:
        need(False, f"model.volume_size ({n}) must be divisible by the token grid ({grid})")
        return
    ratio = n // grid
    stages = int(math.log2(ratio)) if ratio & (ratio - 1) == 0 else None
    need(stages is not None,
         f"model.volume_size / token grid = {n}/{grid} = {ratio} must be a power of two (the decoder upsamples x2 per stage)")
    if stages is not None:
        need(len(m.decoder_channels) == stages,
             f"model.decoder_channels needs one width per x2 upsampling stage from {grid}³ to {n}³: "
             f"{stages} entries, got {len(m.decoder_channels)} ({list(m.decoder_channels)})")
    need(m.kv_pool <= grid, f"model.kv_pool ({m.kv_pool}) must not exceed the token grid ({grid})")


# --- files and overrides --------------------------------------------------------------
def _parse_override(key: str, value: Any, source: str) -> tuple[str, str, Any]:
    """'section.key' and a value (maybe a CLI string) -> (section, key, JSON value)."""
    section, dot, name = key.partition(".")
    if not dot:  # a bare key: point at the section that has it
        owners = [f"{s}.{key}" for s, cls in SECTIONS.items() if key in _field_types(cls)]
        hint = f"; did you mean {owners[0]!r}?" if owners else ", e.g. 'model.voxel_dim'"
        raise ConfigError(f"override key {key!r} in {source} must be 'section.key'{hint}")
    if section not in SECTIONS:
        raise ConfigError(f"unknown section {section!r} in {source} key {key!r}{_suggest(section, SECTIONS)}")
    types = _field_types(SECTIONS[section])
    sub, dot, leaf = name.partition(".")
    if dot and f"{section}.{sub}" in SUBSECTIONS:  # e.g. data.acquisition.render
        leaves = _field_types(SUBSECTIONS[f"{section}.{sub}"])
        if leaf not in leaves:
            raise ConfigError(f"unknown key {key!r} in {source}{_suggest(leaf, leaves)}")
        if isinstance(value, str) and leaves[leaf] is not str:
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        return section, name, value
    if not name or name not in types:
        raise ConfigError(f"unknown key {key!r} in {source}{_suggest(name, types)}")
    if isinstance(value, str) and types[name] is not str:
        try:  # "1", "true", "1e-4", "[32,32,32]" from the command line
            value = json.loads(value)
        except json.JSONDecodeError:
            pass  # left a string: _coerce reports the expected type
    return section, name, value


def apply_overrides(d: dict, overrides: dict | None, source: str = "overrides") -> dict:
    """Return a copy of the config dict d with dotted-key overrides applied."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    for key, value in (overrides or {}).items():
        section, name, value = _parse_override(str(key), value, source)
        sub, dot, leaf = name.partition(".")
        types = _field_types(SUBSECTIONS[f"{section}.{sub}"] if dot else SECTIONS[section])
        _coerce(key, value, types[leaf if dot else name], source)  # fail here so the message names the override
        out.setdefault(section, {})
        if not isinstance(out[section], dict):
            raise ConfigError(f"section {section!r} must be a JSON object to override {key!r}")
        if dot:
            out[section] = {**out[section], sub: dict(out[section].get(sub) or {}, **{leaf: value})}
        else:
            out[section][name] = value
    return out


def load_config(path: str | os.PathLike, overrides: dict | None = None) -> Config:
    """Read a JSON config (sections may be partial) and apply dotted-key overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    if overrides:
        if not isinstance(raw, dict):
            raise ConfigError(f"{path} must hold a JSON object, got {type(raw).__name__}")
        raw = apply_overrides(raw, overrides, source=f"overrides to {path}")
    source = f"{path} with overrides {', '.join(map(str, overrides))}" if overrides else str(path)
    return config_from_dict(raw, source=source)


def override_config(cfg: Config, overrides: dict | None, source: str = "overrides") -> Config:
    """A Config with dotted-key overrides applied (e.g. to a checkpoint's config)."""
    if not overrides:
        return cfg
    return config_from_dict(apply_overrides(config_to_dict(cfg), overrides, source), source=source)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write cfg as JSON atomically (temp file in the same folder, then rename)."""
    from xray2ct.fileio import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(config_to_dict(cfg), indent=2) + "\n")


__all__ = [
    "Config", "ModelConfig", "TrainingConfig", "LossConfig", "DataConfig", "AcquisitionConfig", "OptimizationConfig",
    "LoggingConfig", "GeometryConfig", "ConfigError", "load_config", "save_config", "config_to_dict",
    "config_from_dict", "validate_config", "apply_overrides", "override_config",
]
