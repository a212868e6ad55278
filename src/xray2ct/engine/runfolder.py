"""A training run's folder: never overwritten by accident, resumed only with a compatible config.

`xray2ct train --out RUN` writes checkpoints, metrics.csv, TensorBoard logs and run info
into RUN. Starting again into a folder that already holds a run would replace its
checkpoints and metrics without a word, so that needs `--resume` (continue it) or
`--overwrite` (start over, the old run's files removed first so nothing of it mixes into
the new one). A resume continues the same model on the same data: only the settings in
SAFE_ON_RESUME may differ from the run's own config, and the log says which did.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import fields
from pathlib import Path

from xray2ct.errors import UserError

log = logging.getLogger(__name__)

# Settings that change neither the model, nor the data, nor the optimizer's state, so a
# resumed run is still the same run. num_epochs lengthens (or shortens) it; the cosine
# schedule is recomputed for the new length.
SAFE_ON_RESUME = ("training.num_epochs", "training.max_bad_steps", "training.time_budget_s", "data.num_workers",
                  "data.prefetch_factor", "data.dataset_path", "logging.*", "optimization.compile_model",
                  "optimization.cuda_graphs", "description")


class RunFolderError(UserError, ValueError):
    """The run folder does not fit the request (exists, or holds a run of another config)."""


def _run_files(out: Path) -> list[Path]:
    """What a training run leaves in `out` (checkpoints, training states, metrics, logs, info)."""
    if not out.is_dir():
        return []
    names = ("*.safetensors", "*.state-*.pt", "metrics.csv", "config.json", "run_info.json", "tensorboard")
    return sorted({p for pattern in names for p in out.glob(pattern)})


def has_run(out: str | Path) -> bool:
    """True when `out` holds a checkpoint or metrics of an earlier run (not just an empty or killed start)."""
    return any(p.suffix == ".safetensors" or p.name == "metrics.csv" for p in _run_files(Path(out)))


def prepare_fresh_run(out: str | Path, overwrite: bool = False) -> None:
    """Refuse to start a new run over an existing one; with overwrite, remove the old run's files first."""
    out = Path(out)
    if not has_run(out):
        return
    if not overwrite:
        raise RunFolderError(f"{out}: already holds a training run (checkpoints/metrics.csv); pass --resume to "
                             "continue it, --overwrite to replace it, or choose another --out folder")
    for path in _run_files(out):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    log.info("--overwrite: removed the previous run's files from %s", out)


def _flat(cfg) -> dict[str, object]:
    from xray2ct.config import SECTIONS

    out = {f"{s}.{f.name}": getattr(getattr(cfg, s), f.name) for s in SECTIONS for f in fields(getattr(cfg, s))}
    out["description"] = cfg.description
    return out


def _is_safe(key: str) -> bool:
    return any(key == s or (s.endswith(".*") and key.startswith(s[:-1])) for s in SAFE_ON_RESUME)


def check_resume_config(run_cfg, new_cfg, out: str | Path) -> list[str]:
    """Changes new_cfg makes to the run's own config, as 'key: old -> new' lines; refuses any
    outside SAFE_ON_RESUME (a different model, data, loss or optimizer would mix two runs)."""
    old, new = _flat(run_cfg), _flat(new_cfg)
    changes = {k: f"{k}: {old[k]!r} -> {new[k]!r}" for k in old if old[k] != new[k]}
    unsafe = [line for k, line in changes.items() if not _is_safe(k)]
    if unsafe:
        raise RunFolderError(
            f"{out}: --resume with a config that differs from the run's own ({'; '.join(unsafe)}). A resumed run "
            f"must keep its model, data, loss and optimizer; resume with --config {Path(out) / 'config.json'} "
            f"(only {', '.join(SAFE_ON_RESUME)} may change), or start a new run in another --out folder")
    return [line for k, line in changes.items() if k != "description"]
