"""Bone surface of a reconstructed CT: marching cubes at a HU level -> triangle mesh.

Vertices are in millimetres in a display frame for 3D viewers (y up): x from patient right
to left, y from feet to head, z from posterior to anterior, origin at the volume centre,
so a viewer's default camera looks at the patient's front with the head up.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from xray2ct.errors import UserError
from xray2ct.fileio import atomic_path

log = logging.getLogger(__name__)

BONE_HU = 250.0  # cortical and dense trabecular bone; soft tissue and contrast-free vessels stay below


class NoSurfaceError(UserError, ValueError):
    """No voxel crosses the requested level: there is no surface to show."""


@dataclass(frozen=True)
class Mesh:
    vertices: np.ndarray  # (V, 3) float32, mm, display frame (see module docstring)
    faces: np.ndarray  # (F, 3) int32, counter-clockwise seen from outside

    @property
    def num_faces(self) -> int:
        return len(self.faces)

    def vertex_normals(self) -> np.ndarray:
        """(V, 3) unit normals, outward: the area-weighted sum of the adjacent faces' normals
        (viewers light a mesh by them; without them some, like Babylon.js, draw it black)."""
        a, b, c = (self.vertices[self.faces[:, i]] for i in range(3))
        face_normals = np.cross(b - a, c - a)  # length = 2 x area: larger faces weigh more
        normals = np.zeros_like(self.vertices)
        for i in range(3):
            np.add.at(normals, self.faces[:, i], face_normals)
        return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


def bone_surface(hu: np.ndarray, spacing_mm: tuple[float, float, float], level: float = BONE_HU,
                 upsample: int = 2) -> Mesh:
    """(D, H, W) HU volume (axes head->feet, anterior->posterior, right->left) -> the iso-surface at `level`.

    upsample: trilinear factor before marching cubes; a 32³ reconstruction otherwise gives a blocky mesh.
    """
    from scipy.ndimage import zoom
    from skimage.measure import marching_cubes

    vol = np.asarray(hu, dtype=np.float32)
    if vol.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {vol.shape}")
    if not (vol.min() < level < vol.max()):
        raise NoSurfaceError(f"no voxel crosses {level:g} HU (volume range {vol.min():.0f} to {vol.max():.0f} HU): "
                             "no bone surface to show")
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    if upsample > 1:
        vol = zoom(vol, upsample, order=1)
        spacing = spacing / upsample
    verts, faces, _, _ = marching_cubes(vol, level=level, spacing=tuple(spacing))  # verts (V, 3) in (d, h, w) mm
    centre = (np.asarray(vol.shape) - 1) * spacing / 2
    d, h, w = (verts - centre).T
    # (d, h, w) = (feet, posterior, left) -> display (x, y, z) = (left, head, anterior): a rotation
    vertices = np.stack([w, -d, -h], axis=1).astype(np.float32)
    # skimage winds the triangles clockwise seen from the bright side; viewers expect counter-clockwise
    return Mesh(vertices, np.ascontiguousarray(faces[:, ::-1]).astype(np.int32))


def try_bone_surface(hu: np.ndarray, spacing_mm, level: float = BONE_HU) -> tuple[Mesh | None, str]:
    """`bone_surface`, or (None, why) when no voxel crosses the level: a report or a viewer
    then goes on without a surface and can say why."""
    try:
        return bone_surface(hu, spacing_mm, level), ""
    except NoSurfaceError as e:
        log.info("no bone surface: %s", e)
        return None, str(e)


def write_obj(path: str | os.PathLike, mesh: Mesh) -> None:
    """Wavefront OBJ (what Gradio's Model3D, Slicer and Blender read), written atomically."""
    lines = [f"v {x:.3f} {y:.3f} {z:.3f}" for x, y, z in mesh.vertices]
    lines += [f"vn {x:.4f} {y:.4f} {z:.4f}" for x, y, z in mesh.vertex_normals()]
    # OBJ indices start at 1; vertex i has normal i
    lines += [f"f {a + 1}//{a + 1} {b + 1}//{b + 1} {c + 1}//{c + 1}" for a, b, c in mesh.faces]
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write("# xray2ct bone surface (mm; x right->left, y feet->head, z posterior->anterior)\n")
            f.write("\n".join(lines) + "\n")
