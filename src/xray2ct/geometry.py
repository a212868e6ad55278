"""Cone-beam geometry shared by the DRR projector and the model's lifting.

Frames (see DESIGN.md):
  volume index  (d, h, w): d head→feet, h anterior→posterior, w patient right→left.
  world_mm      the same axes in millimetres, origin at the volume centre (isocentre).
  detector_px   (row, col) of a view's detector; pixel centres at integers, row 0 at the top.

Views:
  pa   source posterior (+h), detector anterior; rows follow d, cols follow w
       (patient right on the image's left, as a chest film is read).
  lat  source on the patient's right (-w), detector on the left; rows follow d,
       cols follow h (anterior on the left). A DICOM "LL" (left side to the detector).
  ap   source anterior (-h), detector posterior; read like a PA film (patient right on
       the image's left), so only the magnification differs from pa.
  rl   source on the patient's left (+w), detector on the right; read like lat
       (anterior on the left). A DICOM "RL".

Each view may carry its own acquisition (`ViewSetup`: source and detector distances,
detector pitch, detector offset); a view without one uses the Geometry's shared values.

The map from a world point to a detector pixel lives in `Geometry.project_points` and its
inverse, the point where a pixel's ray crosses a volume slice, in `Geometry.ray_in_slice`;
both use `Geometry.magnification`, the only place the cone-beam formula is written.
"""
from __future__ import annotations

import dataclasses
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
    "ap": View("ap", depth_axis=1, col_axis=2, source_sign=-1),  # source anterior
    "rl": View("rl", depth_axis=2, col_axis=1, source_sign=+1),  # source at patient left
}


def get_view(name: str) -> View:
    if name not in _VIEW_SPECS:
        raise ValueError(f"unknown view {name!r}; valid views: {', '.join(_VIEW_SPECS)}")
    return _VIEW_SPECS[name]


@dataclass(frozen=True)
class ViewSetup:
    """One view's acquisition, when it differs from the Geometry's shared one.

    Args:
        source_iso_mm: source to isocentre (the volume centre), mm.
        source_det_mm: source to detector, mm.
        det_pixel_mm: detector pixel pitch at the Geometry's det_shape, mm; None: the
            detector just covers the magnified volume in this view.
        det_offset_mm: (row, col) of the detector's centre pixel relative to the point
            where the central ray (source through isocentre) meets the detector, mm on the
            detector; (0, 0): centred. A film cropped off-centre, or a patient placed
            off-centre (approximately: m_iso times the patient's shift), moves it.
    """

    source_iso_mm: float
    source_det_mm: float
    det_pixel_mm: float | None = None
    det_offset_mm: tuple = (0.0, 0.0)

    def __post_init__(self):
        off = tuple(float(v) for v in self.det_offset_mm)
        if len(off) != 2:
            raise ValueError(f"det_offset_mm must be (row, col) in mm, got {self.det_offset_mm!r}")
        if not 0 < self.source_iso_mm < self.source_det_mm:
            raise ValueError(
                f"need 0 < source_iso_mm ({self.source_iso_mm}) < source_det_mm ({self.source_det_mm})"
            )
        if self.det_pixel_mm is not None and not self.det_pixel_mm > 0:
            raise ValueError(f"det_pixel_mm must be > 0, got {self.det_pixel_mm}")
        object.__setattr__(self, "source_iso_mm", float(self.source_iso_mm))
        object.__setattr__(self, "source_det_mm", float(self.source_det_mm))
        object.__setattr__(self, "det_offset_mm", off)


def _triple(x, what: str) -> tuple:
    t = tuple(x) if isinstance(x, (tuple, list)) else (x, x, x)
    if len(t) != 3:
        raise ValueError(f"{what} must be one number or three (d, h, w), got {x!r}")
    return t


def _covering_pixel(source_iso_mm, source_det_mm, half, views, det) -> float:
    """Pitch at which a det (rows, cols) detector just covers the magnified volume in `views`."""
    # Largest magnified half-extent over the views: the face nearest to the source has
    # the largest magnification.
    cover = 0.0
    for v in (get_view(name) for name in views):
        m = source_det_mm / (source_iso_mm - half[v.depth_axis])
        cover = max(cover, half[0] * m, half[v.col_axis] * m)
    return 2 * cover / min(det)


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
        views: view names (see `get_view`), e.g. ("ap", "lat") for an AP frontal film.
        per_view: {view: ViewSetup} for views acquired differently from the shared
            source_iso_mm / source_det_mm / det_pixel_mm; stored as a tuple aligned with
            `views` (None: shared). Empty (the default) is exactly the shared geometry.
    """

    volume_shape: tuple = (64, 64, 64)
    voxel_mm: float | tuple = 2.5
    source_iso_mm: float = 541.0
    source_det_mm: float = 949.0
    det_shape: tuple | None = None
    det_pixel_mm: float | None = None
    views: tuple = field(default=VIEWS)
    per_view: tuple | dict = ()

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
        for name in self.views:
            get_view(name)
        pixel = self.det_pixel_mm
        if pixel is None:
            pixel = _covering_pixel(self.source_iso_mm, self.source_det_mm, half, self.views, det)
        setups = self.per_view
        if isinstance(setups, dict):
            unknown = set(setups) - set(self.views)
            if unknown:
                raise ValueError(f"per_view names {sorted(unknown)}, not among the views {self.views}")
            setups = tuple(setups.get(name) for name in self.views)
        setups = tuple(setups)
        if setups and len(setups) != len(self.views):
            raise ValueError(f"per_view has {len(setups)} entries for {len(self.views)} views {self.views}")
        resolved = []
        for name, setup in zip(self.views, setups):
            if setup is not None:
                if not isinstance(setup, ViewSetup):
                    raise ValueError(f"per_view[{name!r}] must be a ViewSetup, got {setup!r}")
                if max(half) >= setup.source_iso_mm:
                    raise ValueError(f"{name}: volume half-extent {max(half):.0f} mm reaches the source "
                                     f"at {setup.source_iso_mm} mm")
                if setup.det_pixel_mm is None:
                    cover = _covering_pixel(setup.source_iso_mm, setup.source_det_mm, half, (name,), det)
                    setup = ViewSetup(setup.source_iso_mm, setup.source_det_mm, cover, setup.det_offset_mm)
            resolved.append(setup)
        object.__setattr__(self, "volume_shape", shape)
        object.__setattr__(self, "voxel_mm", spacing)
        object.__setattr__(self, "det_shape", det)
        object.__setattr__(self, "det_pixel_mm", float(pixel))
        object.__setattr__(self, "views", tuple(self.views))
        # all-shared is stored as (), so a default Geometry compares equal to one built without per_view
        object.__setattr__(self, "per_view", tuple(resolved) if any(r is not None for r in resolved) else ())

    def setup(self, view: str) -> ViewSetup:
        """The view's acquisition: its own ViewSetup, or the shared values (offset 0)."""
        if self.per_view:
            own = self.per_view[self.views.index(view)] if view in self.views else None
            if own is not None:
                return own
        return ViewSetup(self.source_iso_mm, self.source_det_mm, self.det_pixel_mm)

    def with_views(self, views, per_view=()) -> "Geometry":
        """The same volume and detector grid with other views and per-view acquisitions."""
        return dataclasses.replace(self, views=tuple(views), per_view=per_view)

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
    def detector_mm(self, device=None, dtype=torch.float32, view: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel-centre offsets from the detector centre, mm: rows (R,), cols (C,).

        view: use that view's pitch (None: the shared det_pixel_mm)."""
        pitch = self.det_pixel_mm if view is None else self.setup(view).det_pixel_mm
        rows, cols = self.det_shape
        r = (torch.arange(rows, device=device, dtype=dtype) - (rows - 1) / 2) * pitch
        c = (torch.arange(cols, device=device, dtype=dtype) - (cols - 1) / 2) * pitch
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
        v, s = get_view(view), self.setup(view)
        return s.source_det_mm / (s.source_iso_mm - v.source_sign * depth_mm)

    def project_points(self, points_mm: torch.Tensor, view: str):
        """World points (..., 3) -> (row_px, col_px, depth), each (...,).

        depth is the point's position along the view's depth axis as a fraction of the
        volume (0 at the first voxel centre, 1 at the last): anterior→posterior for PA,
        patient right→left for lateral.
        """
        v, s = get_view(view), self.setup(view)
        along = points_mm[..., v.depth_axis]
        m = self.magnification(view, along)
        rows, cols = self.det_shape
        off_r, off_c = s.det_offset_mm  # (0, 0) unless the view says otherwise: exactly the centred map
        row = (points_mm[..., 0] * m - off_r) / s.det_pixel_mm + (rows - 1) / 2
        col = (points_mm[..., v.col_axis] * m - off_c) / s.det_pixel_mm + (cols - 1) / 2
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
        v, s = get_view(view), self.setup(view)
        r_mm, c_mm = self.detector_mm(device, dtype, view)
        # pixel positions relative to the central ray, mm on the detector
        r_mm, c_mm = r_mm + s.det_offset_mm[0], c_mm + s.det_offset_mm[1]
        m = self.magnification(view, self.axis_mm(v.depth_axis, device, dtype))  # (K,)
        d_in = r_mm[None, :, None] / m[:, None, None]
        c_in = c_mm[None, None, :] / m[:, None, None]
        # A ray to pixel (r, c) has direction (r_mm, c_mm, SDD); per unit of depth it
        # travels sqrt(r² + c² + SDD²) / SDD.
        obliquity = torch.sqrt(r_mm[:, None] ** 2 + c_mm[None, :] ** 2 + s.source_det_mm**2) / s.source_det_mm
        return d_in, c_in, obliquity * self.voxel_mm[v.depth_axis]

    def scaled(self, volume_shape, det_shape=None) -> "Geometry":
        """The same physical field of view sampled on another grid (and detector)."""
        extent = [n * s for n, s in zip(self.volume_shape, self.voxel_mm)]
        shape = _triple(volume_shape, "volume_shape")
        new_det = tuple(det_shape) if det_shape is not None else (max(shape),) * 2
        # per-view pitches are physical: the same detector width over the new pixel count
        ratio = min(self.det_shape) / min(new_det)
        per_view = tuple(
            None if s is None else dataclasses.replace(s, det_pixel_mm=s.det_pixel_mm * ratio)
            for s in self.per_view
        )
        return Geometry(
            volume_shape=shape,
            voxel_mm=tuple(e / n for e, n in zip(extent, shape)),
            source_iso_mm=self.source_iso_mm,
            source_det_mm=self.source_det_mm,
            det_shape=det_shape,
            views=self.views,
            per_view=per_view,
        )
