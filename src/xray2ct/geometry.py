"""Cone-beam geometry shared by the DRR projector and the model's lifting.

Frames (see DESIGN.md):
  volume index  (d, h, w): d head→feet, h anterior→posterior, w patient right→left.
  world_mm      the same axes in millimetres, origin at the volume centre (isocentre).
  detector_px   (row, col) of a view's detector; pixel centres at integers, row 0 at the top.

Views:
  pa   source posterior (+h), detector anterior; rows follow d, cols follow w
       (patient right on the image's left, as a chest film is read).
  lat  source on the patient's right (-w), detector on the left; rows follow d,
       cols follow h (anterior on the left).

The map from a world point to a detector pixel lives in `Geometry.project_points` and its
inverse, the point where a pixel's ray crosses a volume slice, in `Geometry.ray_in_slice`;
both use `Geometry.magnification`, the only place the cone-beam formula is written.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

VIEWS = ("pa", "lat")


@dataclass(frozen=True)
class View:
    """How a view sits on the volume axes (indices into (d, h, w))."""

    name: str
    depth_axis: int  # axis the central ray runs along
    col_axis: int  # axis the detector columns follow (rows always follow d)
    source_sign: int  # +1: source on the + side of depth_axis, -1: on the - side


_VIEW_SPECS = {
    "pa": View("pa", depth_axis=1, col_axis=2, source_sign=+1),  # source posterior
    "lat": View("lat", depth_axis=2, col_axis=1, source_sign=-1),  # source at patient right
}


def get_view(name: str) -> View:
    if name not in _VIEW_SPECS:
        raise ValueError(f"unknown view {name!r}; valid views: {', '.join(VIEWS)}")
    return _VIEW_SPECS[name]


def _triple(x, what: str) -> tuple:
    t = tuple(x) if isinstance(x, (tuple, list)) else (x, x, x)
    if len(t) != 3:
        raise ValueError(f"{what} must be one number or three (d, h, w), got {x!r}")
    return t


@dataclass(frozen=True)
class Geometry:
    """Volume grid, source and detector for the PA and lateral views.

    Args:
        volume_shape: (D, H, W) voxels.
        voxel_mm: voxel spacing, mm; one number (isotropic) or (d, h, w).
        source_iso_mm: source to isocentre distance, mm.
        source_det_mm: source to detector distance, mm.
        det_shape: detector (rows, cols); None: (n, n) with n = max(volume_shape).
        det_pixel_mm: detector pixel pitch, mm; None: the square detector just covers
            the magnified volume in both views.
    """

    volume_shape: tuple = (64, 64, 64)
    voxel_mm: float | tuple = 2.5
    source_iso_mm: float = 541.0
    source_det_mm: float = 949.0
    det_shape: tuple | None = None
    det_pixel_mm: float | None = None
    views: tuple = field(default=VIEWS)

    def __post_init__(self):
        shape = tuple(int(s) for s in _triple(self.volume_shape, "volume_shape"))
        spacing = tuple(float(s) for s in _triple(self.voxel_mm, "voxel_mm"))
        if min(shape) < 1 or min(spacing) <= 0:
            raise ValueError(f"volume_shape {shape} and voxel_mm {spacing} must be positive")
        if not 0 < self.source_iso_mm < self.source_det_mm:
            raise ValueError(
                f"need 0 < source_iso_mm ({self.source_iso_mm}) < source_det_mm ({self.source_det_mm})"
            )
        half = [n * s / 2 for n, s in zip(shape, spacing)]
        if max(half) >= self.source_iso_mm:
            raise ValueError(f"volume half-extent {max(half):.0f} mm reaches the source at {self.source_iso_mm} mm")
        n = max(shape)
        det = tuple(int(s) for s in (self.det_shape or (n, n)))
        if len(det) != 2 or min(det) < 1:
            raise ValueError(f"det_shape must be (rows, cols) > 0, got {self.det_shape!r}")
        pixel = self.det_pixel_mm
        if pixel is None:
            # Largest magnified half-extent over both views: nearest face to the source
            # has the largest magnification.
            cover = 0.0
            for v in (get_view(name) for name in self.views):
                m = self.source_det_mm / (self.source_iso_mm - half[v.depth_axis])
                cover = max(cover, half[0] * m, half[v.col_axis] * m)
            pixel = 2 * cover / min(det)
        for name in self.views:
            get_view(name)
        object.__setattr__(self, "volume_shape", shape)
        object.__setattr__(self, "voxel_mm", spacing)
        object.__setattr__(self, "det_shape", det)
        object.__setattr__(self, "det_pixel_mm", float(pixel))
        object.__setattr__(self, "views", tuple(self.views))

    # --- volume frame -------------------------------------------------------------
    def axis_mm(self, axis: int, device=None, dtype=torch.float32) -> torch.Tensor:
        """World coordinate (mm) of the voxel centres along one volume axis: (n,)."""
        n, s = self.volume_shape[axis], self.voxel_mm[axis]
        return (torch.arange(n, device=device, dtype=dtype) - (n - 1) / 2) * s

    def voxel_centers_mm(self, device=None, dtype=torch.float32) -> torch.Tensor:
        """World coordinates of every voxel centre: (D, H, W, 3) in (d, h, w) order."""
        axes = [self.axis_mm(a, device, dtype) for a in range(3)]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)

    def world_to_grid(self, points_mm: torch.Tensor) -> torch.Tensor:
        """World mm (..., 3) in (d, h, w) -> grid_sample coords (..., 3) in (x=w, y=h, z=d),
        align_corners=True (-1 and 1 are the first and last voxel centres)."""
        half = torch.tensor(
            [max((n - 1) / 2 * s, 1e-12) for n, s in zip(self.volume_shape, self.voxel_mm)],
            device=points_mm.device, dtype=points_mm.dtype,
        )
        return (points_mm / half).flip(-1)

    # --- detector frame -----------------------------------------------------------
    def detector_mm(self, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel-centre offsets from the detector centre, mm: rows (R,), cols (C,)."""
        rows, cols = self.det_shape
        r = (torch.arange(rows, device=device, dtype=dtype) - (rows - 1) / 2) * self.det_pixel_mm
        c = (torch.arange(cols, device=device, dtype=dtype) - (cols - 1) / 2) * self.det_pixel_mm
        return r, c

    def detector_to_grid(self, row: torch.Tensor, col: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
        """detector_px -> grid_sample coords (..., 2) = (x=col, y=row).

        align_corners=False (default) is resolution independent: the same coords sample a
        detector image or any strided feature map of it that covers the same area.
        """
        rows, cols = self.det_shape
        if align_corners:
            return torch.stack([col / max((cols - 1) / 2, 1e-12) - 1, row / max((rows - 1) / 2, 1e-12) - 1], -1)
        return torch.stack([(2 * col + 1) / cols - 1, (2 * row + 1) / rows - 1], dim=-1)

    # --- the cone-beam map --------------------------------------------------------
    def magnification(self, view: str, depth_mm: torch.Tensor) -> torch.Tensor:
        """Detector/object scale for points at `depth_mm` along the view's depth axis."""
        v = get_view(view)
        return self.source_det_mm / (self.source_iso_mm - v.source_sign * depth_mm)

    def project_points(self, points_mm: torch.Tensor, view: str):
        """World points (..., 3) -> (row_px, col_px, depth), each (...,).

        depth is the point's position along the view's depth axis as a fraction of the
        volume (0 at the first voxel centre, 1 at the last): anterior→posterior for PA,
        patient right→left for lateral.
        """
        v = get_view(view)
        along = points_mm[..., v.depth_axis]
        m = self.magnification(view, along)
        rows, cols = self.det_shape
        row = points_mm[..., 0] * m / self.det_pixel_mm + (rows - 1) / 2
        col = points_mm[..., v.col_axis] * m / self.det_pixel_mm + (cols - 1) / 2
        n, s = self.volume_shape[v.depth_axis], self.voxel_mm[v.depth_axis]
        depth = along / max((n - 1) * s, 1e-12) + 0.5
        return row, col, depth

    def ray_in_slice(self, view: str, device=None, dtype=torch.float32):
        """Where every pixel's ray crosses every volume slice along the view's depth axis.

        Returns (d_mm, c_mm, step_mm):
          d_mm (K, R, 1) and c_mm (K, 1, C): in-slice world coords along d and col_axis
              for slice k (K = slices along depth_axis), pixel row r, col c;
          step_mm (R, C): ray length between two neighbouring slices for each pixel.
        """
        v = get_view(view)
        r_mm, c_mm = self.detector_mm(device, dtype)
        m = self.magnification(view, self.axis_mm(v.depth_axis, device, dtype))  # (K,)
        d_in = r_mm[None, :, None] / m[:, None, None]
        c_in = c_mm[None, None, :] / m[:, None, None]
        # A ray to pixel (r, c) has direction (r_mm, c_mm, SDD); per unit of depth it
        # travels sqrt(r² + c² + SDD²) / SDD.
        obliquity = torch.sqrt(r_mm[:, None] ** 2 + c_mm[None, :] ** 2 + self.source_det_mm**2) / self.source_det_mm
        return d_in, c_in, obliquity * self.voxel_mm[v.depth_axis]

    def scaled(self, volume_shape, det_shape=None) -> "Geometry":
        """The same physical field of view sampled on another grid (and detector)."""
        extent = [n * s for n, s in zip(self.volume_shape, self.voxel_mm)]
        shape = _triple(volume_shape, "volume_shape")
        return Geometry(
            volume_shape=shape,
            voxel_mm=tuple(e / n for e, n in zip(extent, shape)),
            source_iso_mm=self.source_iso_mm,
            source_det_mm=self.source_det_mm,
            det_shape=det_shape,
            views=self.views,
        )
