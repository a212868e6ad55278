"""The `loader` suite of `xray2ct benchmark`: training throughput with films rendered per step
(`data.acquisition.render`) against the stored-DRR loader, in one run on the same model.

Both paths train the same config's model (fresh weights, AdamW) on phantoms of the same
seeds: *stored* reads the dataset's PNG DRRs through `BiplanarDataset` (decoded once, cached,
film-style augmentation per item, as `xray2ct train` runs it), *rendered* reads wide fields
from a `phantom_pool` and renders both films of every sample at its random acquisition on the
training device (`engine.films.RenderedInputs`), lifting with per-sample geometries. A turn is
one full training step (data, forward, backward, optimizer) of each path as `train` runs it
(rendered films of the next batch prepared in a background thread on a CPU), interleaved so
load from other processes biases neither; the data part alone (rendered synchronously: its
whole cost) is timed the same way.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from xray2ct.timing import interleaved, table


def _cycle(loader):
    while True:
        yield from loader


def loader_suite(device: str = "cpu", config: str = "configs/cpu-small.json", n: int = 16, repeats: int = 10,
                 overrides: dict | None = None):
    """Samples/s of a training step and of its data alone, stored DRRs vs rendered films."""
    from xray2ct.benchmark import SuiteResult
    from xray2ct.config import load_config
    from xray2ct.data.fields import phantom_pool
    from xray2ct.data.prepare import make_phantom_dataset
    from xray2ct.data.render import margin_voxels
    from xray2ct.engine.train import make_dataset, make_inputs, make_optimizer, run_model
    from xray2ct.losses import ReconstructionLoss
    from xray2ct.models import build_model

    dev = torch.device(device)
    cfgs = {name: load_config(config, overrides={**(overrides or {}), "data.acquisition.render": name == "rendered",
                                                  "data.view_dropout": 0.25 if name == "rendered" else 0.0})
            for name in ("stored", "rendered")}
    cfg = cfgs["stored"]
    n_vox, s, batch = cfg.model.volume_size, cfg.model.xray_img_size, cfg.training.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        make_phantom_dataset(Path(tmp) / "drrs", n=n, size=n_vox, xray_size=s, progress=False)
        pool = phantom_pool(Path(tmp) / "pool", n=n, size=n_vox, margin=margin_voxels(cfgs["rendered"]), seed=0,
                            version=cfgs["rendered"].data.acquisition.phantom_version)
        steps, data_only = {}, {}
        for name, root in (("stored", Path(tmp) / "drrs"), ("rendered", pool)):
            c = cfgs[name]
            ds = make_dataset(c, root, None, train=True)
            batches, data_batches = (_cycle(DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True,
                                                       num_workers=min(c.data.num_workers, 2))) for _ in range(2))
            inputs = make_inputs(c, dev, train=True)
            torch.manual_seed(0)
            model = build_model(c).to(dev).train()
            optimizer, loss_fn = make_optimizer(model, c), ReconstructionLoss.from_config(c).to(dev)

            stream = inputs.stream(batches)  # as `train` runs: rendered films prefetched on a CPU

            def step(stream=stream, model=model, optimizer=optimizer, loss_fn=loss_fn):
                xrays, ct, geometry = next(stream)
                loss, _ = loss_fn(run_model(model, xrays, geometry), ct)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            steps[name] = step
            data_only[name] = lambda batches=data_batches, inputs=inputs: inputs(next(batches))
        step_t = interleaved(steps, device, repeats)
        data_t = interleaved(data_only, device, repeats)
    rows, data = [], {}
    for name in steps:
        rows.append([name, str(step_t[name]), f"{batch * 1e3 / step_t[name].median_ms:.2f}", str(data_t[name]),
                     f"{batch * 1e3 / data_t[name].median_ms:.1f}"])
        data[name] = {"step": step_t[name], "data": data_t[name]}
    ratio = step_t["stored"].median_ms / step_t["rendered"].median_ms
    data["ratio"] = ratio
    md = (f"`{config}` ({n_vox}³ / {s}², batch {batch}, {torch.get_num_threads()} threads), {n} phantoms per "
          f"path, median ± IQR/2 of {repeats} interleaved turns. *step*: data + forward + backward + AdamW; "
          f"*data*: the batch and its films on the device alone.\n\n"
          + table(["path", "train step ms", "samples/s", "data ms", "data samples/s"], rows)
          + f"\n\nRendered / stored training throughput: **{ratio:.2f}×** (issue #14 asks for ≥ 1.0×).")
    return SuiteResult(md, data)
