"""Where the patient stood: the network reconstructs the patient's own frame (its training
target is the patient-centred cube, whatever the film's offset), while the films were taken
in the room's frame, around the isocentre. A patient placed 20 mm off the beam's centre
makes the two disagree by two voxels, and refinement, which explains the films, then blends
the two positions into a doubled, blurred body.

`shifted` places a patient-frame volume into the room's frame: moved by a translation
t = (d, h, w) mm, on a grid padded with air across the beam (h and w) so nothing leaves the
field, and with the original top and bottom slices continued along d (the body goes on
above and below the field). It is linear in the volume and differentiable in t (trilinear
resampling), so refinement can fit t and then the volume through it. `padded` is the
geometry of that larger grid: the same voxels, detectors and distances; `in_room` both.

`placed` tells the network's lifting where the films show the patient, so it samples each
film where a patient-centred voxel actually cast its shadow (`engine.refining.refine_placed`).
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from xray2ct.geometry import Geometry, get_view


def pad_voxels(max_shift_mm: float, geometry: Geometry) -> int:
    """Voxels of air to add on each side of h and w so a shift up to max_shift_mm stays inside."""
    return int(math.ceil(max_shift_mm / min(geometry.voxel_mm[1:]))) + 1


def padded(geometry: Geometry, pad: int) -> Geometry:
    """The geometry of the volume padded by `pad` voxels on each side of h and w."""
    d, h, w = geometry.volume_shape
    return dataclasses.replace(geometry, volume_shape=(d, h + 2 * pad, w + 2 * pad))


def shifted(volume: torch.Tensor, shift_mm: torch.Tensor, geometry: Geometry, pad: int) -> torch.Tensor:
    """(B, 1, D, H, W) patient frame, shift (B, 3) or (3,) mm as (d, h, w) -> (B, 1, D, H+2p, W+2p) room frame.

    The patient's point x appears at x + shift. Differentiable in both the volume and the shift.
    """
    out = F.pad(volume, (pad, pad, pad, pad, 0, 0))  # air (0) across the beam
    d, h, w = out.shape[2:]
    half = torch.tensor([w * geometry.voxel_mm[2], h * geometry.voxel_mm[1], d * geometry.voxel_mm[0]],
                        dtype=volume.dtype, device=volume.device) / 2  # (x, y, z) = (w, h, d), mm
    # affine_grid maps each output (room) point to the input (patient) point it samples: x - shift,
    # in the [-1, 1] coordinates of the grid.
    move = -shift_mm.to(volume.dtype).reshape(-1, 3).flip(-1) / half  # (B or 1, 3) as (w, h, d)
    eye = torch.eye(3, dtype=volume.dtype, device=volume.device).expand(move.shape[0], 3, 3)
    theta = torch.cat([eye, move[:, :, None]], dim=2).expand(out.shape[0], 3, 4)
    grid = F.affine_grid(theta, list(out.shape), align_corners=False)
    # border: the padded air across the beam, and the first / last slice continued along d
    return F.grid_sample(out, grid, mode="bilinear", padding_mode="border", align_corners=False)


def in_room(volume: torch.Tensor, geometry: Geometry, shift_mm: torch.Tensor | None,
            max_shift_mm: float | None = None) -> tuple[torch.Tensor, Geometry]:
    """The patient-frame volume as the films saw it, shifted by shift_mm (B, 3), and its
    geometry; unchanged (no padding, today's exact path) when there is no shift."""
    if shift_mm is None or not bool(shift_mm.any()):
        return volume, geometry
    pad = pad_voxels(max_shift_mm or float(shift_mm.abs().max()), geometry)
    return shifted(volume, shift_mm.to(volume.device), geometry, pad), padded(geometry, pad)


def placed(geometry: Geometry, shift_mm: torch.Tensor) -> Geometry:
    """The geometry under which a patient-centred volume projects where the films show a
    patient shifted by shift_mm (3,) (d, h, w): each view's detector offset by the shadow's
    move at the isocentre's magnification (`ViewSetup.det_offset_mm`).

    The component along a view's rays only magnifies that film by ~1 % per 10 mm and is left
    out, as `refine.fit_shift` leaves it to the film that shows it side-on. Across the rays
    it is exact at the isocentre's depth; a voxel ±160 mm along the beam is off by
    (m(z) / m_iso − 1) times the shift: at 1800 mm under a quarter voxel for a 20 mm shift,
    at the 541 mm training distance most of one. Good enough for the network to see the
    patient where they are; the refinement then projects through the exact shift (`in_room`).
    """
    per_view = {}
    for view in geometry.views:
        setup, spec = geometry.setup(view), get_view(view)
        m = setup.source_det_mm / setup.source_iso_mm
        row, col = setup.det_offset_mm
        # project_points subtracts the offset: a shadow moved by +m·t needs an offset of -m·t
        per_view[view] = dataclasses.replace(setup, det_offset_mm=(row - m * float(shift_mm[0]),
                                                                   col - m * float(shift_mm[spec.col_axis])))
    return geometry.with_views(geometry.views, per_view)
