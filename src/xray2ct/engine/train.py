"""`xray2ct train`: AdamW + warmup/cosine, clipping, accumulation, mixed precision, DDP,
validation with DESIGN.md metrics, atomic checkpoints, exact resume.

Exact resume: the data order of epoch e is a pure function of (seed, e) (`EpochSampler`),
augmentation is a pure function of (seed, epoch, index) — so are the films rendered per step
with `data.acquisition.render` (`engine.films`) — and the checkpoint carries the
optimizer, scheduler, scaler and RNG states plus the step. Resuming at step k therefore
replays the remaining batches of that epoch exactly as an uninterrupted run would.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Sampler

from xray2ct.checkpoint import load_checkpoint, load_training_state, load_weights, rng_state, save_checkpoint, set_rng_state
from xray2ct.config import Config, save_config
from xray2ct.engine import distributed as D
from xray2ct.engine.graphs import step_begin, with_cuda_graphs
from xray2ct.engine.runfolder import check_resume_config, prepare_fresh_run
from xray2ct.errors import UserError

log = logging.getLogger(__name__)


class TrainingStopped(UserError, RuntimeError):
    """Training cannot go on (e.g. repeated non-finite losses); the message says why."""


# --- data ------------------------------------------------------------------------
class EpochSampler(Sampler):
    """Shuffled indices from (seed, epoch), split across ranks, resumable mid-epoch.

    Rank r of R takes positions r, r+R, … of the epoch's permutation, so the union of one
    step's micro-batches over ranks is the same set of cases a single process with the
    global batch would see. `skip` drops the first `skip` samples of this rank (resume).
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        self.n, self.seed, self.rank, self.world, self.shuffle = n, seed, rank, world_size, shuffle
        self.epoch, self.skip = 0, 0
        self.per_rank = n // world_size  # drop the tail so every rank takes the same number of steps

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        mine = order[self.rank : self.per_rank * self.world : self.world]
        return iter(mine[self.skip :])

    def __len__(self) -> int:
        return self.per_rank - self.skip


def default_data_dir(cfg: Config, n: int = 200, seed: int = 0) -> Path:
    """Phantom dataset in a cache folder, generated on first use (the embedded default)."""
    from xray2ct.data.prepare import make_phantom_dataset

    root = Path(os.environ.get("XRAY2CT_CACHE", Path.home() / ".cache" / "xray2ct"))
    version = 2  # the generator make_phantom_dataset uses; in the name, so a v1 cache is never reused
    folder = root / f"phantoms-{cfg.model.volume_size}-n{n}-s{seed}-v{version}"
    if not (folder / "splits.json").is_file():
        log.info("no data given: generating %d phantoms into %s", n, folder)
        make_phantom_dataset(folder, n=n, size=cfg.model.volume_size, seed=seed,
                             xray_size=cfg.model.xray_img_size, progress=True, version=version)
    return folder


def phantom_pool_dir(cfg: Config, seed: int = 0) -> Path:
    """Wide-field phantoms in the cache folder, generated on first use (`data.acquisition.render`
    without a dataset: the films are rendered from them, so no DRR files are written)."""
    from xray2ct.data.fields import phantom_pool
    from xray2ct.data.render import margin_voxels

    a = cfg.data.acquisition
    root = Path(os.environ.get("XRAY2CT_CACHE", Path.home() / ".cache" / "xray2ct"))
    return phantom_pool(root, a.phantoms, cfg.model.volume_size, margin_voxels(cfg), seed, cfg.geometry.fov_mm,
                        a.phantom_version, workers=a.pool_workers or os.cpu_count() or 1)


def make_dataset(cfg: Config, root: Path, split: str, train: bool):
    from xray2ct.data.dataset import BiplanarDataset
    from xray2ct.physics.radiograph import RadiographStyle

    if cfg.data.acquisition.render:  # CTs only: the films are rendered per step (engine.films)
        from xray2ct.data.fields import FieldDataset
        from xray2ct.data.render import margin_voxels

        ds = FieldDataset(root, split, cfg.model.volume_size, margin_voxels(cfg), seed=cfg.training.seed)
        ds.ids, ds.files = ds.ids[: cfg.data.max_patients], ds.files[: cfg.data.max_patients]
        return ds
    ds = BiplanarDataset(root, split=split, xray_size=cfg.model.xray_img_size, volume_size=cfg.model.volume_size,
                         augment=RadiographStyle() if (train and cfg.data.augment) else None,
                         cache=True, seed=cfg.training.seed)
    if len(ds) > cfg.data.max_patients:
        ds.cases = ds.cases[: cfg.data.max_patients]
    return ds


def batch_to(batch: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """-> xrays (B, 2, S, S) PA then lateral, ct (B, 1, N, N, N)."""
    xrays = torch.cat([batch["pa"], batch["lat"]], dim=1).to(device, non_blocking=True)
    return xrays, batch["ct"].to(device, non_blocking=True)


class StoredInputs:
    """batch -> (xrays, ct, None): the dataset's own X-rays at the model's geometry."""

    def __init__(self, device: torch.device):
        self.device = device

    def set_epoch(self, epoch: int) -> None:
        """The dataset draws its augmentation per epoch itself."""

    def __call__(self, batch: dict):
        return (*batch_to(batch, self.device), None)

    def stream(self, loader):
        """(xrays, ct, None) for each batch of `loader`."""
        return map(self, loader)


def make_inputs(cfg: Config, device: torch.device, train: bool):
    """The step's input maker: stored X-rays, or films rendered per step (data.acquisition.render)."""
    if not cfg.data.acquisition.render:
        return StoredInputs(device)
    from xray2ct.engine.films import RenderedInputs

    return RenderedInputs(cfg, device, train)


def run_model(model, xrays: torch.Tensor, geometry) -> dict:
    """model(xrays), with per-sample geometries when the films have their own."""
    return model(xrays) if geometry is None else model(xrays, geometry)


# --- optimisation ----------------------------------------------------------------
def make_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """AdamW; no weight decay on norms, biases and other 1-D parameters (standard practice)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.training.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel over all parameters instead of a Python loop of ~10 ops per tensor
    # (on the CPU, 2.1 against 10.3 ms per step for cpu-default's 257 tensors, measured)
    return torch.optim.AdamW(groups, lr=cfg.training.learning_rate, fused=True)


def epochs_in_budget(budget_s: float, spent_s: float, epochs_run: float, epochs_done: int,
                     max_epochs: int) -> int:
    """The epochs a run can end with inside budget_s: those done plus the whole epochs the
    rest of the budget holds at this call's mean rate (spent_s over the epochs_run, a
    fraction when a resumed call began mid-epoch; validation included), within
    [epochs_done, max_epochs]. Like the budget, spent_s and epochs_run count this call only."""
    per_epoch = spent_s / epochs_run if epochs_run > 0 else 0.0
    more = int(max(0.0, budget_s - spent_s) // per_epoch) if per_epoch > 0 else max_epochs
    return max(epochs_done, min(max_epochs, epochs_done + more))


def replan(planned: int, fitted: int, epochs_done: int) -> int:
    """The schedule's new length in epochs. It shrinks whenever the budget requires (an
    annealed end beats a cut one) but grows only in its first quarter, where the cosine is
    still near its peak (factor >= 0.85), so a longer plan never lifts an annealing LR."""
    if fitted < planned or epochs_done * 4 <= planned:
        return fitted
    return planned


def lr_factor(step: int, warmup_steps: int, total_steps: int, floor: float = 0.02) -> float:
    """Linear warmup to 1, then cosine decay to `floor` at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def autocast_for(device: torch.device, enabled: bool):
    """bf16 autocast on CPU and on CUDA GPUs that support it, fp16 (with a GradScaler) otherwise."""
    if not enabled:
        return nullcontext(), None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16), None


# --- the run ---------------------------------------------------------------------
@dataclass
class TrainResult:
    out: Path
    step: int
    epoch: int
    best_psnr: float
    history: list = field(default_factory=list)
    stopped_early: str = ""
    samples_s: float = float("nan")  # training samples per second in this call (all ranks), no validation
    peak_gib: float = float("nan")  # peak_memory_gib() at the end
    stop_signal: str = ""  # "SIGTERM" / "SIGINT" when a signal stopped the run (after its checkpoint)


class _StopSignal:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint and exits cleanly."""

    def __init__(self):
        self.received: str = ""
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside a test runner thread)
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _run_info(argv: list[str], dev: torch.device) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    versions = {}
    for pkg in ("xray2ct", "torch", "numpy", "monai", "nibabel", "safetensors"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    device = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{dev.type}, {torch.get_num_threads()} threads"
    return {"command": argv, "git_commit": commit or None, "versions": versions, "python": sys.version.split()[0],
            "device": device, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}


def peak_memory_gib(dev: torch.device) -> float:
    """Peak memory, GiB: CUDA max allocated on a GPU (since the last reset of its peak stats),
    else this process's peak RSS (Linux)."""
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**30
    try:
        import resource
    except ImportError:  # Windows has no resource module
        return float("nan")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class _NoWriter:
    """Stands in for SummaryWriter where tensorboard is not installed: metrics.csv still has the numbers."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def _summary_writer(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("tensorboard is not installed: no TensorBoard logs in %s (metrics.csv has the numbers); "
                    "pip install tensorboard to get them", path)
        return _NoWriter()
    return SummaryWriter(str(path))


def _atomic_json(path: Path, obj) -> None:
    from xray2ct.fileio import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2))


@torch.no_grad()
def validate(model, loader, device, amp, info: D.DistInfo = D.DistInfo(), inputs=None) -> dict[str, float]:
    """Mean PSNR, 3D SSIM and MAE (HU) over the loader's cases on all ranks.

    `model` must be the unwrapped module: DDP's forward broadcasts buffers, a collective
    that would hang when ranks hold different numbers of validation cases. inputs: batch ->
    (xrays, ct, geometry) (default: the stored X-rays, `StoredInputs`).
    """
    from xray2ct.metrics import mae_hu, psnr, ssim3d

    model.eval()
    sums, n = {"psnr": 0.0, "ssim3d": 0.0, "mae_hu": 0.0}, 0
    inputs = inputs or StoredInputs(device)
    for batch in loader:
        xrays, ct, geometry = inputs(batch)
        with amp:
            pred = run_model(model, xrays, geometry)["volume"].float().clamp(0, 1)
        for k, fn in (("psnr", psnr), ("ssim3d", ssim3d), ("mae_hu", mae_hu)):
            sums[k] += fn(pred, ct).sum().item()
        n += ct.shape[0]
    model.train()
    totals = torch.tensor([*sums.values(), n], dtype=torch.float64, device=device)
    if info.enabled:
        torch.distributed.all_reduce(totals)
    return {k: (v / max(totals[-1], 1)).item() for k, v in zip(sums, totals)}


def train(cfg: Config, out: str | Path, data_dir: str | Path | None = None, resume: bool = False,
          device: str = "auto", progress: bool = True, max_steps: int | None = None,
          time_budget_s: float | None = None, argv: list[str] | None = None,
          schedule_steps: int | None = None, overwrite: bool = False) -> TrainResult:
    """Train cfg's model; write checkpoints, metrics.csv, TensorBoard logs and run info to `out`.

    max_steps: stop after this many optimizer steps in total (counting resumed ones).
    time_budget_s: stop (with a checkpoint) when this much wall time has passed.
    schedule_steps: the run's length in optimizer steps instead of num_epochs × steps per
        epoch; the warmup + cosine schedule ends there (warmup keeps its fraction
        warmup_epochs / num_epochs), so a run of any length anneals fully.
    resume / overwrite: continue the run in `out` (its config may differ only in
        `runfolder.SAFE_ON_RESUME`) / replace it; without either, a folder that holds a run
        is refused.
    """
    from xray2ct.losses import ReconstructionLoss
    from xray2ct.models import build_model

    out = Path(out)
    dev = D.resolve_device(device, int(os.environ.get("LOCAL_RANK", 0)))
    info = D.init_distributed(dev)
    try:
        return _train(cfg, out, data_dir, resume, dev, info, progress, max_steps, time_budget_s, argv or sys.argv,
                      build_model, ReconstructionLoss, schedule_steps, overwrite)
    finally:
        D.shutdown()


def _train(cfg, out, data_dir, resume, dev, info, progress, max_steps, time_budget_s, argv, build_model, Loss,
           schedule_steps=None, overwrite=False):
    tc = cfg.training
    # the run folder first, before any data is loaded or anything written
    ckpt = None
    if resume and overwrite:
        raise UserError("--resume continues the run in --out and --overwrite replaces it: give one of them")
    if resume:
        last = out / "last.safetensors"
        if not last.is_file():
            raise UserError(f"{out}: nothing to resume (no last.safetensors); drop --resume to start fresh")
        ckpt = load_checkpoint(last)
        changed = check_resume_config(ckpt.config, cfg, out)
        if changed:
            log.info("resuming %s with changed settings: %s", out, "; ".join(changed))
    elif info.is_main or not overwrite:  # every rank refuses; only rank 0 removes
        prepare_fresh_run(out, overwrite)
    if tc.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(tc.seed)  # same init on every rank; DDP also broadcasts rank 0's weights

    default_data = phantom_pool_dir if cfg.data.acquisition.render else default_data_dir
    if not (data_dir or cfg.data.dataset_path):
        if info.is_main:
            default_data(cfg, seed=tc.seed)  # generated once, by rank 0
        if info.enabled:
            torch.distributed.barrier()
    data_dir = Path(data_dir or cfg.data.dataset_path or default_data(cfg, seed=tc.seed))
    train_ds = make_dataset(cfg, data_dir, "train", train=True)
    val_ds = make_dataset(cfg, data_dir, "val", train=False)
    sampler = EpochSampler(len(train_ds), tc.seed, info.rank, info.world_size)
    if sampler.per_rank < tc.batch_size:
        raise UserError(f"{data_dir}: the train split has {len(train_ds)} case(s), fewer than "
                        f"batch_size {tc.batch_size} × {info.world_size} process(es)")
    workers = min(cfg.data.num_workers, os.cpu_count() or 1)
    loader_kw = dict(num_workers=workers, persistent_workers=False,
                     prefetch_factor=cfg.data.prefetch_factor if workers else None)
    train_loader = DataLoader(train_ds, batch_size=tc.batch_size, sampler=sampler, drop_last=True, **loader_kw)
    val_sampler = EpochSampler(len(val_ds), 0, info.rank, info.world_size, shuffle=False)
    val_sampler.per_rank = -(-len(val_ds) // info.world_size)  # keep every case; last rank may take fewer
    val_loader = DataLoader(val_ds, batch_size=tc.batch_size, sampler=val_sampler, **loader_kw)
    train_inputs, val_inputs = make_inputs(cfg, dev, train=True), make_inputs(cfg, dev, train=False)

    model = build_model(cfg).to(dev)
    raw_model = model
    if info.enabled:
        # BatchNorm over the global batch, so N processes train like one with N× the batch
        model = (torch.nn.SyncBatchNorm.convert_sync_batchnorm(model) if dev.type == "cuda"
                 else D.convert_batchnorm(model))
        raw_model = model
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    graphs = False
    if cfg.optimization.cuda_graphs:
        model, graphs = with_cuda_graphs(model, dev, distributed=info.enabled)  # warns when it cannot
    if cfg.optimization.compile_model and not graphs:
        model = torch.compile(model)
    loss_fn = Loss.from_config(cfg).to(dev)
    optimizer = make_optimizer(raw_model, cfg)
    steps_per_epoch = len(train_loader) // tc.grad_accum_steps
    if steps_per_epoch == 0:
        raise UserError(f"{data_dir}: too few training cases for batch_size × grad_accum_steps")
    time_budget_s = time_budget_s or tc.time_budget_s or None  # the flag, else the config's
    fit = tc.fit_schedule_to_budget
    if fit and not time_budget_s:
        raise UserError("training.fit_schedule_to_budget sizes the schedule to a time budget: set "
                        "training.time_budget_s or pass --time-budget")
    if fit and schedule_steps:
        raise UserError("schedule_steps fixes the schedule's length; training.fit_schedule_to_budget fits it "
                        "to the time budget: use one of them")
    total_steps = steps_per_epoch * tc.num_epochs
    warmup = max(1, tc.warmup_epochs * steps_per_epoch)
    if schedule_steps:
        total_steps, warmup = schedule_steps, max(1, round(schedule_steps * tc.warmup_epochs / tc.num_epochs))
    plan = {"total": total_steps}  # the cosine's end; fit_schedule_to_budget moves it after each epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, plan["total"]))
    amp, scaler = autocast_for(dev, cfg.optimization.use_mixed_precision)

    # step: optimizer steps taken (drives the LR schedule); slot: accumulation groups
    # consumed, including skipped non-finite ones (drives the data position).
    step, slot, best, history, elapsed_before = 0, 0, -math.inf, [], 0.0
    if ckpt is not None:
        last = ckpt.path
        load_weights(raw_model, ckpt.weights, str(last))
        state = load_training_state(last)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        set_rng_state(rng[info.rank] if isinstance(rng, list) else rng)
        step, slot, best, history = state["step"], state["slot"], state["best_psnr"], state["history"]
        elapsed_before = state.get("elapsed_s", 0.0)
        if fit and state.get("planned_epochs"):
            total_steps = plan["total"] = min(total_steps, state["planned_epochs"] * steps_per_epoch)
        log.info("resumed %s at step %d", out, step)

    writer = None
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.json")
        _atomic_json(out / "run_info.json", _run_info(argv, dev))
        writer = _summary_writer(out / "tensorboard")

    def checkpoint(name: str) -> None:
        # every rank's RNG state, so each resumes its own stream; rank 0 writes
        rngs = [rng_state()]
        if info.enabled:
            rngs = [None] * info.world_size
            torch.distributed.all_gather_object(rngs, rng_state())
        if info.is_main:
            save_checkpoint(out, name, raw_model, cfg, step, slot // steps_per_epoch, training_state={
                "slot": slot, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": rngs if info.enabled else rngs[0], "best_psnr": best, "history": history,
                "elapsed_s": elapsed_before + time.monotonic() - started,
                "planned_epochs": plan["total"] // steps_per_epoch})

    limit = min(total_steps, max_steps) if max_steps else total_steps
    bar = None
    if info.is_main and progress:
        from tqdm import tqdm

        bar = tqdm(total=limit, initial=step, desc="train", unit="step", dynamic_ncols=True)
    bad_in_a_row, skipped, stopped = 0, 0, ""
    # A non-finite batch has already run BatchNorm's forward: restore the running stats
    # of the last good step so one bad batch cannot poison evaluation or a checkpoint.
    good_buffers = [b.detach().clone() for b in raw_model.buffers()]
    started = time.monotonic()
    slot_at_start = slot  # the fitted schedule's rate counts this call's steps, as the budget does
    train_s, samples = 0.0, 0  # this call's time in the training loop and samples seen there
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)  # peak of this run, not of whatever ran before in the process
    model.train()
    with _StopSignal() as stop:
        while slot < total_steps and step < limit and not stopped:
            epoch = slot // steps_per_epoch
            sampler.set_epoch(epoch, skip=(slot - epoch * steps_per_epoch) * tc.grad_accum_steps * tc.batch_size)
            train_ds.set_epoch(epoch)
            train_inputs.set_epoch(epoch)
            micro, t0, seen = 0, time.monotonic(), 0
            for xrays, ct, geometry in train_inputs.stream(train_loader):
                micro += 1
                if graphs:
                    step_begin()
                last_micro = micro % tc.grad_accum_steps == 0
                sync = nullcontext() if (last_micro or not info.enabled) else model.no_sync()
                with sync:
                    with amp:
                        loss, parts = loss_fn(run_model(model, xrays, geometry), ct)
                    finite = bool(torch.isfinite(loss))
                    if finite:
                        ((scaler.scale(loss) if scaler else loss) / tc.grad_accum_steps).backward()
                seen += ct.shape[0] * info.world_size
                if not last_micro:
                    continue
                slot += 1
                # every rank must agree to skip, or DDP's collectives would hang
                if D.broadcast_flag(not finite, info, dev):
                    optimizer.zero_grad(set_to_none=True)
                    with torch.no_grad():
                        for b, good in zip(raw_model.buffers(), good_buffers):
                            b.copy_(good)
                    bad_in_a_row += 1
                    skipped += 1
                    log.warning("non-finite loss at step %d: batch skipped (%d in a row)", step, bad_in_a_row)
                    if bad_in_a_row >= tc.max_bad_steps:
                        stopped = (f"{bad_in_a_row} non-finite losses in a row at step {step}; training stopped. "
                                   f"The last good checkpoint in {out} is intact; lower the learning rate "
                                   "or turn off mixed precision.")
                        break
                    continue
                bad_in_a_row = 0
                good_buffers = [b.detach().clone() for b in raw_model.buffers()]
                if scaler:
                    scaler.unscale_(optimizer)
                if tc.grad_clip_max_norm > 0:
                    torch.nn.utils.clip_grad_norm_(raw_model.parameters(), tc.grad_clip_max_norm)
                if scaler:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                loss_value = D.all_reduce_mean(loss.detach(), info).item()
                if info.is_main:
                    if bar:
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss_value:.4f}", epoch=epoch,
                                        samples_s=f"{seen / max(time.monotonic() - t0, 1e-9):.1f}")
                    if step % cfg.logging.log_interval == 0:
                        writer.add_scalar("train/loss", loss_value, step)
                        writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
                        for k, v in parts.items():
                            writer.add_scalar(f"train/{k}", v.item(), step)
                every = cfg.logging.checkpoint_every_steps
                if every and step % every == 0:
                    checkpoint("last")
                if D.broadcast_flag(bool(stop.received), info, dev):
                    stopped = f"received {stop.received or 'a stop signal'} at step {step}; checkpoint saved"
                    break
                if time_budget_s and D.broadcast_flag(time.monotonic() - started > time_budget_s, info, dev):
                    stopped = f"time budget of {time_budget_s:.0f} s reached at step {step}"
                    break
                if step >= limit:
                    break
            epoch_s = time.monotonic() - t0
            train_s, samples = train_s + epoch_s, samples + seen
            if slot % steps_per_epoch == 0 and slot // steps_per_epoch == epoch + 1 and not stopped:
                done = epoch + 1  # epochs completed
                # before validation, so a schedule that now ends here gets its final validation
                if fit and slot < total_steps:
                    planned = total_steps // steps_per_epoch
                    fitted = epochs_in_budget(time_budget_s, time.monotonic() - started,
                                              (slot - slot_at_start) / steps_per_epoch, done, tc.num_epochs)
                    new_plan = D.broadcast_int(replan(planned, fitted, done), info, dev)  # rank 0's clock decides
                    if new_plan != planned:
                        total_steps = plan["total"] = new_plan * steps_per_epoch
                        limit = min(total_steps, max_steps) if max_steps else total_steps
                        if bar:
                            bar.total = limit
                            bar.refresh()
                        log.info("schedule fitted to the %.0f s budget: %d epochs (%d steps), was %d",
                                 time_budget_s, new_plan, total_steps, planned)
                if done % cfg.logging.val_interval == 0 or slot >= total_steps or step >= limit:
                    samples_s = seen / max(epoch_s, 1e-9)  # this epoch's training, no validation
                    metrics = validate(raw_model, val_loader, dev, amp, info, val_inputs)
                    elapsed = round(elapsed_before + time.monotonic() - started, 1)  # training wall time
                    history.append({"step": step, "epoch": done, "elapsed_s": elapsed, **metrics,
                                    "samples_s": round(samples_s, 2), "peak_gib": round(peak_memory_gib(dev), 3)})
                    if info.is_main:
                        for k, v in metrics.items():
                            writer.add_scalar(f"val/{k}", v, step)
                        _write_metrics_csv(out / "metrics.csv", history)
                        _log_slices(writer, raw_model, val_ds, dev, amp, step, val_inputs)
                        log.info("epoch %d: val %s", done, ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
                    if metrics["psnr"] > best:
                        best = metrics["psnr"]
                        checkpoint("best")
                if done % cfg.logging.save_checkpoint_interval == 0 or slot >= total_steps:
                    checkpoint("last")
        diverged = stopped.startswith(f"{bad_in_a_row} non-finite") and bad_in_a_row > 0
        if not diverged and (stopped or slot % steps_per_epoch):
            checkpoint("last")  # interrupted mid-epoch: keep the exact state
    if bar:
        bar.close()
    if writer:
        writer.close()
    if skipped:
        log.warning("%d batch(es) with non-finite loss were skipped", skipped)
    if diverged:
        raise TrainingStopped(stopped)
    return TrainResult(out, step, slot // steps_per_epoch, best, history, stopped,
                       samples / train_s if train_s > 0 else float("nan"), peak_memory_gib(dev),
                       stop_signal=stop.received)


def _write_metrics_csv(path: Path, history: list[dict]) -> None:
    from xray2ct.fileio import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        fields = list(dict.fromkeys(k for row in history for k in row))  # rows of older runs may lack a column
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(history)


@torch.no_grad()
def _log_slices(writer, model, ds, dev, amp, step: int, inputs) -> None:
    """Mid-plane slices of ground truth and prediction of the first val case, side by side."""
    from torch.utils.data import default_collate

    xrays, ct, geometry = inputs(default_collate([ds[0]]))
    model.eval()
    with amp:
        pred = run_model(model, xrays, geometry)["volume"].float().clamp(0, 1)[0, 0].cpu()
    model.train()
    gt = ct[0, 0].cpu()
    n = gt.shape[0] // 2
    for plane, sl in (("axial", (n, slice(None), slice(None))), ("coronal", (slice(None), n, slice(None))),
                      ("sagittal", (slice(None), slice(None), n))):
        writer.add_image(f"val/{plane}", torch.cat([gt[sl], pred[sl]], dim=1)[None], step)
