"""Bone surface: marching cubes in mm, in the display frame, closed, written as OBJ."""
import numpy as np
import pytest

from xray2ct.surface import Mesh, NoSurfaceError, bone_surface, write_obj


def _ball(n=32, centre=(16, 16, 16), radius=6.0, spacing=2.0):
    d, h, w = np.meshgrid(*(np.arange(n),) * 3, indexing="ij")
    r = np.sqrt((d - centre[0]) ** 2 + (h - centre[1]) ** 2 + (w - centre[2]) ** 2)
    # a smooth edge (1 voxel) so the 250 HU level lies at the radius, up to interpolation
    return np.clip(1000.0 * (radius - r), -1000.0, 1000.0) + 0.0, (spacing,) * 3


def test_sphere_surface_radius_in_mm_and_closed():
    hu, spacing = _ball(centre=(15.5, 15.5, 15.5))
    mesh = bone_surface(hu, spacing, upsample=1)
    # level 250 HU on a 1000 HU/voxel ramp sits 0.25 voxel inside the radius
    dist = np.linalg.norm(mesh.vertices, axis=1) / spacing[0]
    assert abs(dist.mean() - 5.75) < 0.1 and dist.std() < 0.15
    edges = np.sort(np.concatenate([mesh.faces[:, [0, 1]], mesh.faces[:, [1, 2]], mesh.faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert (counts == 2).all()  # watertight: every edge borders two triangles


@pytest.mark.parametrize("centre, axis, sign", [
    ((6, 16, 16), 1, +1),   # near the head (small d) -> up (+y)
    ((16, 6, 16), 2, +1),   # anterior (small h) -> towards the viewer (+z)
    ((16, 16, 26), 0, +1),  # patient left (large w) -> +x
])
def test_display_frame(centre, axis, sign):
    hu, spacing = _ball(centre=centre, radius=3)
    mesh = bone_surface(hu, spacing)
    offset = mesh.vertices.mean(axis=0)
    assert sign * offset[axis] > 15  # 10 voxels of 2 mm from the centre
    others = [i for i in range(3) if i != axis]
    assert np.abs(offset[others]).max() < 2


def test_no_bone_is_a_clear_error():
    with pytest.raises(NoSurfaceError, match="250 HU"):
        bone_surface(np.full((8, 8, 8), 40.0), (1.0, 1.0, 1.0))


def test_obj_round_trip(tmp_path):
    mesh = Mesh(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32), np.array([[0, 1, 2]], np.int32))
    write_obj(tmp_path / "m.obj", mesh)
    lines = (tmp_path / "m.obj").read_text().splitlines()
    assert [ln.split()[0] for ln in lines if not ln.startswith("#")] == ["v", "v", "v", "vn", "vn", "vn", "f"]
    assert lines[-1] == "f 1//1 2//2 3//3"
    np.testing.assert_allclose(mesh.vertex_normals(), [[0, 0, 1]] * 3)  # counter-clockwise in xy: +z


def test_vertex_normals_point_out_of_a_sphere():
    hu, spacing = _ball(centre=(15.5, 15.5, 15.5))
    mesh = bone_surface(hu, spacing)
    radial = mesh.vertices / np.linalg.norm(mesh.vertices, axis=1, keepdims=True)
    assert np.einsum("ij,ij->i", mesh.vertex_normals(), radial).min() > 0.8


def test_faces_wind_counter_clockwise_seen_from_outside():
    hu, spacing = _ball(centre=(15.5, 15.5, 15.5))
    mesh = bone_surface(hu, spacing)
    a, b, c = (mesh.vertices[mesh.faces[:, i]] for i in range(3))
    normals = np.cross(b - a, c - a)
    outward = np.einsum("ij,ij->i", normals, (a + b + c) / 3)
    assert (outward > 0).mean() > 0.99  # viewers light and cull by this winding
