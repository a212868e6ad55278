"""The films of a training or validation step rendered on the training device
(`data.acquisition.render`), at acquisitions that are pure functions of their sample.

Training: sample `index` of epoch `e` is filmed at `sample_acquisition(seed, e, index)`, film
style and view dropout included, so a resumed run replays the same films. Validation: a fixed
set, the same every epoch so its numbers compare across epochs: even-numbered cases at the
nominal geometry, odd-numbered ones at a random acquisition drawn with VAL_SEED; plain DRRs
(no film style, no dropout), as the stored-DRR validation had.
"""
from __future__ import annotations

import contextlib
import dataclasses
from concurrent.futures import ThreadPoolExecutor

import torch

from xray2ct.data.acquisition_sampler import FilmAcquisition, sample_acquisition
from xray2ct.data.render import make_renderer

VAL_SEED = 7_777_777  # validation acquisitions: fixed, apart from every training seed's stream


class RenderedInputs:
    """batch {"field", "ct", "index"} -> (xrays (B, 2, S, S), ct (B, 1, N, N, N), B geometries) on `device`."""

    def __init__(self, cfg, device: torch.device, train: bool):
        self.cfg, self.device, self.train, self.epoch = cfg, device, train, 0
        self.renderer = make_renderer(cfg, augment=train and cfg.data.augment)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def acquisition(self, index: int) -> FilmAcquisition:
        cfg = self.cfg
        a, g = cfg.data.acquisition, cfg.geometry
        if self.train:
            return sample_acquisition(a, g, cfg.training.seed, self.epoch, index, cfg.data.view_dropout)
        if index % 2 == 0:
            return FilmAcquisition(True, "pa", g.source_iso_mm, g.source_det_mm, None)
        return sample_acquisition(dataclasses.replace(a, nominal_fraction=0.0), g, VAL_SEED, 0, index)

    def __call__(self, batch: dict):
        acquisitions = [self.acquisition(int(i)) for i in batch["index"]]
        fields = batch["field"].to(self.device, non_blocking=True)
        with one_cpu_thread(self.device):
            xrays, geometries = self.renderer.render(fields, acquisitions)
        return xrays, batch["ct"].to(self.device, non_blocking=True), geometries

    def stream(self, loader):
        """(xrays, ct, geometries) for each batch of `loader`, in order.

        On a CPU the next batch's films are rendered in a background thread while the caller
        trains on this one. Rendering runs with one intra-op thread (thread-local in torch) and
        is many small ops, while the model's step leaves part of the second core idle at 32³;
        overlapped, most of the render's cost disappears from the step (`benchmark --suite
        loader`). Films depend only on (seed, epoch, index), so the overlap changes no number.
        On a GPU the renders are queued on the device stream anyway: no thread.
        """
        if self.device.type != "cpu":
            yield from map(self, loader)
            return
        batches = iter(loader)

        def following():
            batch = next(batches, None)
            return None if batch is None else self(batch)

        with ThreadPoolExecutor(1, thread_name_prefix="xray2ct-films") as pool:
            pending = pool.submit(following)
            while (ready := pending.result()) is not None:
                pending = pool.submit(following)  # a caller that stops early waits for this one at exit
                yield ready


@contextlib.contextmanager
def one_cpu_thread(device: torch.device):
    """On a CPU, run the block with one intra-op thread. Rendering is many small ops; on a
    shared 2-core machine with two threads each op's barrier waits on a busy core: a batch of
    four took 1.4-13 s instead of 0.2-0.5 s with one thread (measured under load 5)."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
