"""How each radiograph was taken, where that knowledge came from, and the geometry it gives.

An `Acquisition` is one view's record: source–isocentre and source–detector distances,
the detector pixel pitch of the file as given, an optional detector offset and the
patient position (PA / AP frontal, LL / RL lateral). Every value carries its source,
looked up in this order (the first that has it wins):

  1. "flag"     command-line flags (`--sid/--sod/--pixel-mm`, `--lat-*` for the lateral, `--ap`);
  2. "dicom"    the radiograph's DICOM header (DistanceSourceToDetector,
                DistanceSourceToPatient, ImagerPixelSpacing / PixelSpacing,
                EstimatedRadiographicMagnificationFactor, ViewPosition);
  3. "sidecar"  `{stem}.json` beside the image (`source_iso_mm`, `source_det_mm`,
                `pixel_mm`, optional `position`, `det_offset_mm`), as `phantoms` and
                `prepare` write for their DRRs;
  4. "default"  the model's training geometry (config `geometry` section) with a detector
                that just covers the volume; logged as assumed.

A known source–detector distance without the source–isocentre one (common in DICOM) keeps
the training geometry's isocentre–detector gap unless the magnification factor is given.

The model sees the file cropped to its exposed field, padded square and resized to
`size` (`xray2ct.data.xrayio`), so the pitch it sees is pixel_mm · max(rows, cols) / size
and an off-centre crop moves the detector centre: `Acquisition.view_setup` does that
arithmetic, and `study_geometry` turns the two views into the `Geometry` that both the
lifting (`XRay2CT.set_geometry`) and the refinement's projector use.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from xray2ct.errors import UserError
from xray2ct.geometry import Geometry, ViewSetup

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

POSITIONS = {"PA": ("frontal", "pa"), "AP": ("frontal", "ap"), "LL": ("lateral", "lat"), "RL": ("lateral", "rl")}
ROLE_POSITIONS = {"frontal": ("PA", "AP"), "lateral": ("LL", "RL")}
# PatientOrientation as the model reads a film: (direction of increasing column, of increasing row)
READ_AS = {"frontal": ("L", "F"), "lateral": ("P", "F")}
OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "H": "F", "F": "H"}
SOURCES = ("flag", "dicom", "sidecar", "default")


class AcquisitionError(UserError, ValueError):
    """An acquisition value is unusable; the message names the file or flag and the value."""


@dataclass(frozen=True)
class AcquisitionFlags:
    """What the user gave on the command line (None: not given)."""

    sid: float | None = None  # source–detector (source–image) distance, mm, both views
    sod: float | None = None  # source–isocentre (source–object) distance, mm, both views
    pixel_mm: float | None = None  # detector pitch of the files as given, mm, both views
    lat_sid: float | None = None  # the lateral's, where it differs
    lat_sod: float | None = None
    lat_pixel_mm: float | None = None
    ap: bool = False  # the frontal film is AP (source anterior)

    def for_role(self, role: str) -> dict:
        lat = role == "lateral"
        out = {"source_det_mm": (self.lat_sid if lat and self.lat_sid is not None else self.sid),
               "source_iso_mm": (self.lat_sod if lat and self.lat_sod is not None else self.sod),
               "pixel_mm": (self.lat_pixel_mm if lat and self.lat_pixel_mm is not None else self.pixel_mm)}
        for key, value in out.items():
            if value is not None and not value > 0:
                raise AcquisitionError(f"--{'lat-' if lat else ''}{_FLAG[key]} must be > 0 mm, got {value}")
        if self.ap and role == "frontal":
            out["position"] = "AP"
        return {k: v for k, v in out.items() if v is not None}


_FLAG = {"source_det_mm": "sid", "source_iso_mm": "sod", "pixel_mm": "pixel-mm"}


@dataclass(frozen=True)
class Acquisition:
    """One view's acquisition record.

    source_iso_mm / source_det_mm: mm. pixel_mm: detector pitch of the file as given (before
    any crop or resizing), mm; None: the detector is taken to just cover the volume.
    det_offset_mm: (row, col) of the image centre relative to the central ray, mm on the
    detector. position: PA | AP | LL | RL. sources: ((field, where it came from), ...).
    """

    position: str
    source_iso_mm: float
    source_det_mm: float
    pixel_mm: float | None = None
    det_offset_mm: tuple = (0.0, 0.0)
    sources: tuple = ()

    @property
    def view(self) -> str:
        """The Geometry view name: pa, ap, lat (LL) or rl."""
        return POSITIONS[self.position][1]

    def source_of(self, name: str) -> str:
        return dict(self.sources).get(name, "default")

    @property
    def assumed(self) -> tuple:
        """The fields that came from no input (the documented defaults)."""
        return tuple(k for k, v in self.sources if v == "default")

    def short(self) -> str:
        """e.g. 'SID1800 SOD1650 px0.168 PA' (px? when the pitch is assumed)."""
        px = "px?" if self.pixel_mm is None else f"px{self.pixel_mm:.3g}"
        return f"SID{self.source_det_mm:g} SOD{self.source_iso_mm:g} {px} {self.position}"

    def record(self) -> dict:
        """Every value with its source, for reports and logs."""
        return {"position": self.position, "source_iso_mm": self.source_iso_mm,
                "source_det_mm": self.source_det_mm, "pixel_mm": self.pixel_mm,
                "det_offset_mm": list(self.det_offset_mm), "sources": dict(self.sources)}

    def describe(self) -> str:
        """One log line: the values and where each came from."""
        src = ", ".join(f"{k} from {v}" for k, v in self.sources)
        return f"{self.short()} ({src})"

    def view_setup(self, shape: tuple, crop: tuple, size: int, nominal: Geometry,
                   flips: tuple = (False, False)) -> ViewSetup:
        """The ViewSetup of the model's `size`² image made from this file.

        shape: (rows, cols) decoded; crop: (top, bottom, left, right) removed; flips: (rows,
        cols) mirrored after the crop; nominal: the model's geometry (volume, detector size).
        """
        rows, cols = shape
        top, bottom, left, right = crop
        h, w = rows - top - bottom, cols - left - right
        side = max(h, w)
        pitch = self.pixel_mm
        if pitch is None:  # just covering: the model's pitch at `size`, back to the file's pixels
            cover = nominal.with_views((self.view,), {self.view: ViewSetup(self.source_iso_mm, self.source_det_mm)})
            pitch = cover.setup(self.view).det_pixel_mm * size / side
        # centre of the cropped image relative to the decoded one, in file pixels (down / right)
        shift = [(top - bottom) / 2, (left - right) / 2]
        shift = [-s if f else s for s, f in zip(shift, flips)]
        # xrayio pads (side - n) // 2 before: the padded centre sits half a pixel early when odd
        shift = [s + ((side - n) // 2 * 2 - (side - n)) / -2 for s, n in zip(shift, (h, w))]
        offset = tuple(o + s * pitch for o, s in zip(self.det_offset_mm, shift))
        return ViewSetup(self.source_iso_mm, self.source_det_mm, pitch * side / size, offset)


def sidecar_path(image: Path) -> Path:
    """`{stem}.json` beside the image."""
    return Path(image).with_suffix(".json")


def read_sidecar(image: Path) -> dict:
    """`{stem}.json` beside the image -> its acquisition fields ({} when there is none)."""
    path = sidecar_path(image)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise AcquisitionError(f"{path}: sidecar is not readable JSON ({e})") from e
    if not isinstance(data, dict):
        raise AcquisitionError(f"{path}: sidecar must be a JSON object, got {type(data).__name__}")
    out = {}
    for key in ("source_iso_mm", "source_det_mm", "pixel_mm"):
        if data.get(key) is not None:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise AcquisitionError(f"{path}: {key} must be a number > 0, got {value!r}")
            out[key] = float(value)
    if data.get("position") is not None:
        out["position"] = str(data["position"]).upper()
    if data.get("det_offset_mm") is not None:
        off = data["det_offset_mm"]
        if not isinstance(off, list) or len(off) != 2:
            raise AcquisitionError(f"{path}: det_offset_mm must be [row, col] in mm, got {off!r}")
        out["det_offset_mm"] = tuple(float(v) for v in off)
    return out


def write_sidecar(image: Path, geometry: Geometry, view: str) -> Path:
    """Write `{stem}.json` beside a DRR rendered with `geometry`'s `view`."""
    from xray2ct.fileio import atomic_path

    s = geometry.setup(view)
    position = {v: p for p, (_, v) in POSITIONS.items()}[view]
    data = {"source_iso_mm": s.source_iso_mm, "source_det_mm": s.source_det_mm, "pixel_mm": s.det_pixel_mm,
            "position": position, "det_offset_mm": list(s.det_offset_mm)}
    path = sidecar_path(image)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")
    return path


def _from_dicom(tags: dict) -> dict:
    out = {}
    if "DistanceSourceToDetector" in tags and tags["DistanceSourceToDetector"] > 0:
        out["source_det_mm"] = tags["DistanceSourceToDetector"]
    if "DistanceSourceToPatient" in tags and tags["DistanceSourceToPatient"] > 0:
        out["source_iso_mm"] = tags["DistanceSourceToPatient"]
    elif "source_det_mm" in out and tags.get("EstimatedRadiographicMagnificationFactor", 0) > 1:
        out["source_iso_mm"] = out["source_det_mm"] / tags["EstimatedRadiographicMagnificationFactor"]
    if tags.get("ViewPosition") in POSITIONS:
        out["position"] = tags["ViewPosition"]
    return out


def resolve(role: str, image: Path, flags: AcquisitionFlags, dicom_tags: dict | None, dicom_pixel_mm: float | None,
            nominal: Geometry) -> Acquisition:
    """One view's acquisition from flags, DICOM, sidecar and defaults (in that order).

    role: "frontal" or "lateral" (the --pa / --lat slot the file was given in).
    """
    dicom = _from_dicom(dicom_tags or {})
    if dicom_pixel_mm is not None:
        dicom["pixel_mm"] = dicom_pixel_mm
    layers = [("flag", flags.for_role(role)), ("dicom", dicom), ("sidecar", read_sidecar(image))]
    values, sources = {}, {}
    for key in ("position", "source_det_mm", "source_iso_mm", "pixel_mm", "det_offset_mm"):
        for name, layer in layers:
            if key in layer:
                values[key], sources[key] = layer[key], name
                break
    position = values.get("position", ROLE_POSITIONS[role][0])
    if position not in ROLE_POSITIONS[role]:
        where = sources.get("position", "default")
        raise AcquisitionError(f"{image}: position {position!r} (from {where}) is not a {role} view; "
                               f"the {'--pa' if role == 'frontal' else '--lat'} file must be "
                               f"{' or '.join(ROLE_POSITIONS[role])}")
    sources.setdefault("position", "default")
    gap = nominal.source_det_mm - nominal.source_iso_mm  # the training isocentre–detector gap
    sdd, sod = values.get("source_det_mm"), values.get("source_iso_mm")
    if sdd is None and sod is None:
        sdd, sod = nominal.source_det_mm, nominal.source_iso_mm
        sources["source_det_mm"] = sources["source_iso_mm"] = "default"
    elif sod is None:
        sod, sources["source_iso_mm"] = sdd - gap, "default"
    elif sdd is None:
        sdd, sources["source_det_mm"] = sod + gap, "default"
    if "pixel_mm" not in values:
        sources["pixel_mm"] = "default"
    if not 0 < sod < sdd:
        raise AcquisitionError(f"{image}: source–isocentre {sod:g} mm (from {sources['source_iso_mm']}) must be "
                               f"less than source–detector {sdd:g} mm (from {sources['source_det_mm']})")
    half = max(n * s for n, s in zip(nominal.volume_shape, nominal.voxel_mm)) / 2
    if sod <= half:
        raise AcquisitionError(f"{image}: source–isocentre {sod:g} mm (from {sources['source_iso_mm']}) puts the "
                               f"source inside the {2 * half:g} mm field of view")
    order = ("position", "source_det_mm", "source_iso_mm", "pixel_mm")
    return Acquisition(position, float(sod), float(sdd), values.get("pixel_mm"),
                       tuple(values.get("det_offset_mm", (0.0, 0.0))),
                       tuple((k, sources[k]) for k in order) + (
                           (("det_offset_mm", sources["det_offset_mm"]),) if "det_offset_mm" in sources else ()))


def orientation_flips(role: str, tags: dict | None) -> tuple[bool, bool]:
    """(flip rows, flip cols) that bring a film to the way the model reads it, from the
    DICOM PatientOrientation (e.g. ['R', 'F'] on a frontal film: patient right on the
    image's right -> mirror the columns). No tag, or an unexpected one: no flip."""
    orient = (tags or {}).get("PatientOrientation") or []
    if len(orient) != 2:
        return False, False
    want_col, want_row = READ_AS[role]
    col, row = (str(v)[:1].upper() for v in orient)
    return row == OPPOSITE[want_row], col == OPPOSITE[want_col]


def study_geometry(nominal: Geometry, setups: dict[str, ViewSetup]) -> Geometry:
    """The model's geometry with the study's views (frontal, lateral order) and setups."""
    return nominal.with_views(tuple(setups), setups)


def descrip(acquisitions) -> str:
    """The short form for a NIfTI header's 80-character description (a missing view is None)."""
    frontal, lateral = acquisitions
    if frontal is None or lateral is None:
        one = frontal or lateral
        return f"xray2ct {one.short()} only"[:80]
    same = (frontal.source_det_mm, frontal.source_iso_mm, frontal.pixel_mm) == (
        lateral.source_det_mm, lateral.source_iso_mm, lateral.pixel_mm)
    if same:
        text = f"xray2ct {frontal.short()}/{lateral.position}"
    else:
        text = f"xray2ct {frontal.short()}; {lateral.short()}"
    return text[:80]


MODES = {(True, True): "biplanar", (True, False): "frontal only", (False, True): "lateral only"}


@dataclass
class Study:
    """A frontal (PA/AP) and lateral pair, or one of them, as the model takes it, with how
    each view was acquired. A missing view is an all-zero image, as the model saw a dropped
    view in training (`data.view_dropout`), and its acquisition is None."""

    xrays: "torch.Tensor"  # (1, 2, S, S) frontal then lateral, [0, 1]; zeros for a missing view
    geometry: Geometry  # the model's volume and detector with the study's views and setups
    acquisitions: tuple  # (frontal, lateral) Acquisition or None

    @property
    def present(self) -> tuple[bool, bool]:
        """(frontal given, lateral given)."""
        return tuple(a is not None for a in self.acquisitions)

    @property
    def mode(self) -> str:
        """"biplanar", "frontal only" or "lateral only"."""
        return MODES[self.present]

    def details(self) -> dict:
        """Report lines: the mode, then one per view, values and their sources."""
        names = ("frontal", "lateral")
        lines = {"views": self.mode}
        lines.update({f"acquisition ({n})": a.describe() for n, a in zip(names, self.acquisitions) if a is not None})
        return lines

    def descrip(self) -> str:
        return descrip(self.acquisitions)


def load_view(path, role: str, size: int, flags: AcquisitionFlags, nominal: Geometry):
    """One radiograph file -> (image (size, size) in [0, 1], Acquisition, ViewSetup)."""
    from xray2ct.data.xrayio import prepare_xray, read_xray

    path = Path(path)
    f = read_xray(path, size)
    acq = resolve(role, path, flags, f.tags or None, f.pixel_mm, nominal)
    flips = orientation_flips(role, f.tags)
    pixels = f.pixels
    if flips[0]:
        pixels = pixels[::-1]
    if flips[1]:
        pixels = pixels[:, ::-1]
    if any(flips):
        log.info("%s: PatientOrientation %s: image mirrored (%s) to read as the model does", path,
                 f.tags.get("PatientOrientation"), " and ".join(n for n, x in zip(("rows", "columns"), flips) if x))
    if any(f.crop):
        log.info("%s: cropped uniform borders (top, bottom, left, right) %s px to the exposed field", path, f.crop)
    setup = acq.view_setup(f.shape, f.crop, size, nominal, flips)
    image = prepare_xray(pixels.copy(), size=size, name=str(path))
    log.info("%s view %s: %s", role, path.name, acq.describe())
    if acq.assumed:
        log.warning("%s: %s not known from flags, DICOM or a sidecar; assumed the model's training geometry "
                    "(%s)", path.name, ", ".join(acq.assumed), acq.short())
    return image, acq, setup


def load_study(pa, lat, size: int, nominal: Geometry, flags: AcquisitionFlags = AcquisitionFlags()) -> Study:
    """Frontal (PA or AP) and lateral files -> Study; either may be None (one view only, not
    both). `nominal`: the model's geometry (`cfg.geometry.build(volume_size, size)`).
    Warns when the views look swapped."""
    import warnings

    import torch

    from xray2ct.data.viewcheck import check_views

    if pa is None and lat is None:
        raise AcquisitionError("no X-ray given: pass a frontal (--pa) film, a lateral (--lat) one, or both")
    pa, lat = (None if f is None else Path(f) for f in (pa, lat))
    if pa is not None and lat is not None and pa.exists() and lat.exists() and pa.resolve() == lat.resolve():
        warnings.warn(f"{pa} is given as both the PA and the lateral X-ray", stacklevel=3)
    images, acquisitions, setups = [], [], {}
    for path, role, nominal_view in ((pa, "frontal", nominal.views[0]), (lat, "lateral", nominal.views[1])):
        if path is None:  # the view the model was trained to do without: zeros, at its nominal setup
            images.append(torch.zeros(size, size))
            acquisitions.append(None)
            setups[nominal_view] = nominal.setup(nominal_view)
            continue
        image, acq, setup = load_view(path, role, size, flags, nominal)
        images.append(image)
        acquisitions.append(acq)
        setups[acq.view] = setup
    if pa is not None and lat is not None:
        swapped = check_views(images[0], images[1], pa_name=f"--pa {pa}", lat_name=f"--lat {lat}")
        if swapped:
            warnings.warn(swapped, stacklevel=3)
    geometry = study_geometry(nominal, setups)
    return Study(torch.stack(images)[None], geometry, tuple(acquisitions))
