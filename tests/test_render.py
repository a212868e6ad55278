"""On-the-fly films (data.acquisition.render): the sampler, the renderer, and that a rendered
training film is exactly what `reconstruct --sid --sod --pixel-mm` makes of the same film saved
as a 16-bit PNG."""
import dataclasses

import numpy as np
import pytest
import torch

from xray2ct.config import AcquisitionConfig, GeometryConfig, load_config
from xray2ct.data.acquisition_sampler import FilmAcquisition, sample_acquisition
from xray2ct.data.fields import fit_field, wide_phantom
import xray2ct
from xray2ct.data.render import SUPERSAMPLE, make_renderer, margin_voxels

N, S = 16, 32
CFG = load_config("configs/cpu-small.json", overrides={"model.volume_size": N, "model.xray_img_size": S,
                                                       "model.decoder_channels": [16, 8],
                                                       "data.acquisition.render": True})


def _fields(n: int) -> torch.Tensor:
    m = margin_voxels(CFG)
    return torch.stack([torch.from_numpy(wide_phantom(N, 100 + i, 320.0, m))[None] for i in range(n)])


def test_sampler_is_a_pure_function_of_seed_epoch_index():
    a, g = AcquisitionConfig(), GeometryConfig()
    first = [sample_acquisition(a, g, 3, 1, i, 0.25) for i in range(20)]
    assert first == [sample_acquisition(a, g, 3, 1, i, 0.25) for i in range(20)]
    assert first != [sample_acquisition(a, g, 3, 2, i, 0.25) for i in range(20)]  # another epoch
    assert first != [sample_acquisition(a, g, 4, 1, i, 0.25) for i in range(20)]  # another seed
    for x in first:
        if not x.nominal:
            assert 900 <= x.source_det_mm <= 1900 and 100 <= x.source_det_mm - x.source_iso_mm <= 250
            assert x.detector_mm is None or 350 <= x.detector_mm <= 430
            assert max(map(abs, x.offset_mm)) <= 30 and max(map(abs, x.rotation_deg)) <= 5


def test_sampler_shares_match_the_config():
    a = AcquisitionConfig(nominal_fraction=0.3, ap_fraction=0.5, covering_fraction=0.2, crop_fraction=0.4)
    g = GeometryConfig()
    draws = [sample_acquisition(a, g, 0, 0, i, view_dropout=0.25) for i in range(4000)]
    nominal = np.mean([x.nominal for x in draws])
    moving = [x for x in draws if not x.nominal]
    assert abs(nominal - 0.3) < 0.03
    assert abs(np.mean([x.frontal == "ap" for x in moving]) - 0.5) < 0.03
    assert abs(np.mean([x.detector_mm is None for x in moving]) - 0.2) < 0.03
    assert abs(np.mean([x.crop for x in moving]) - 0.4) < 0.03 and not any(x.crop for x in draws if x.nominal)
    dropped = [x.dropped for x in draws if x.dropped]
    assert abs(len(dropped) / len(draws) - 0.25) < 0.03
    assert abs(np.mean([d == "lat" for d in dropped]) - 0.8) < 0.04
    assert all(x.source_iso_mm == 541 and x.source_det_mm == 949 and x.frontal == "pa" for x in draws if x.nominal)


def test_centred_fraction_centres_a_share_of_the_moving_patients_and_changes_nothing_else():
    g = GeometryConfig()
    plain, centred = AcquisitionConfig(), AcquisitionConfig(centred_fraction=0.4)
    before = [sample_acquisition(plain, g, 0, 0, i, 0.25) for i in range(3000)]
    after = [sample_acquisition(centred, g, 0, 0, i, 0.25) for i in range(3000)]
    still = [(x, y) for x, y in zip(before, after) if not y.nominal]
    kept = [y.offset_mm == x.offset_mm and y.rotation_deg == x.rotation_deg for x, y in still]
    assert abs(1 - np.mean(kept) - 0.4) < 0.03
    assert all(y.offset_mm == (0.0,) * 3 and y.rotation_deg == (0.0,) * 3 for (_, y), k in zip(still, kept) if not k)
    # the other draws are the same numbers: old runs replay their films
    strip = dict(offset_mm=(0.0,) * 3, rotation_deg=(0.0,) * 3)
    assert [dataclasses.replace(x, **strip) for x in before] == [dataclasses.replace(y, **strip) for y in after]


def test_rendered_films_shape_range_and_dropout():
    r = make_renderer(CFG, augment=True)
    acqs = [sample_acquisition(CFG.data.acquisition, CFG.geometry, 0, 0, i) for i in range(4)]
    acqs[0] = dataclasses.replace(acqs[0], nominal=True, frontal="pa", source_iso_mm=541.0, source_det_mm=949.0,
                                  detector_mm=None)
    acqs[1] = dataclasses.replace(acqs[1], nominal=False, dropped="lat")
    acqs[2] = dataclasses.replace(acqs[2], nominal=False, dropped="pa", frontal="ap")
    x, geometries = r.render(_fields(4), acqs)
    assert x.shape == (4, 2, S, S) and torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1
    assert geometries[0] == r.nominal and geometries[2].views == ("ap", "lat")
    assert (x[1, 1] == 0).all() and x[1, 0].std() > 0.05
    assert (x[2, 0] == 0).all() and x[2, 1].std() > 0.05
    again, _ = r.render(_fields(4), acqs)
    assert torch.equal(x, again)  # the style's randomness comes from the acquisition alone


def test_fit_field_crops_and_pads_around_the_centre():
    cube = np.arange(4 ** 3, dtype=np.float32).reshape(4, 4, 4)
    wide = fit_field(cube, 4, 2)
    assert wide.shape == (8, 8, 8) and (wide[2:6, 2:6, 2:6] == cube).all() and wide[0].max() == -1000
    assert (fit_field(wide, 4, 1) == wide[1:7, 1:7, 1:7]).all()


@pytest.mark.parametrize("frontal", ["pa", "ap"])
def test_training_film_equals_reconstruct_of_the_saved_png(tmp_path, frontal):
    """The film rendered for training and the same acquisition saved as a 16-bit PNG, read by
    `load_study` with the --sid/--sod/--pixel-mm flags: the same model input and geometry."""
    from PIL import Image

    from xray2ct.acquisition import AcquisitionFlags, load_study

    r = make_renderer(CFG, augment=False)
    fields = _fields(1)
    a = FilmAcquisition(False, frontal, 1650.0, 1800.0, 430.0)
    x, (geometry,) = r.render(fields, [a])
    # the film as a user would make it (acceptance/lib/render.py): DRR of the field, percentile window, 16 bit
    det = SUPERSAMPLE * S
    g = xray2ct.Geometry(volume_shape=fields.shape[2:], voxel_mm=320.0 / N, source_iso_mm=1650.0,
                         source_det_mm=1800.0, det_shape=(det, det), det_pixel_mm=430.0 / det, views=(frontal, "lat"))
    mu = torch.clamp(0.02 * (1 + fields / 1000.0), min=0)
    li = xray2ct.project(mu, g)[0].numpy()
    paths = []
    for view, img in zip(("front", "lat"), li):
        lo, hi = np.percentile(img, 0.5), np.percentile(img, 99.5)
        path = tmp_path / f"{view}.png"
        Image.fromarray(np.rint(np.clip((img - lo) / (hi - lo), 0, 1) * 65535).astype(np.uint16)).save(path)
        paths.append(path)
    nominal = CFG.geometry.build(N, S)
    study = load_study(*paths, size=S, nominal=nominal,
                       flags=AcquisitionFlags(sid=1800.0, sod=1650.0, pixel_mm=430.0 / det, ap=frontal == "ap"))
    torch.testing.assert_close(x, study.xrays, atol=2e-3, rtol=0)  # 16-bit quantization, re-windowed
    assert geometry.views == study.geometry.views == (frontal, "lat")
    for view in geometry.views:
        mine, theirs = geometry.setup(view), study.geometry.setup(view)
        assert mine.det_pixel_mm == pytest.approx(theirs.det_pixel_mm, rel=1e-12)
        assert (mine.source_iso_mm, mine.source_det_mm) == (theirs.source_iso_mm, theirs.source_det_mm)
        assert mine.det_offset_mm == pytest.approx(theirs.det_offset_mm, abs=1e-12)


def test_nominal_films_are_the_stored_drrs():
    """A nominal sample is rendered as `xray2ct phantoms` renders its DRRs (layout.render_drrs)."""
    from xray2ct.data.layout import render_drrs

    r = make_renderer(CFG, augment=False)
    fields = _fields(1)
    x, _ = r.render(fields, [FilmAcquisition(True, "pa", 541.0, 949.0, None)])
    m = r.margin
    stored = render_drrs(fields[0, 0, m:-m, m:-m, m:-m].numpy(), (320.0 / N,) * 3, S)
    torch.testing.assert_close(x[0], torch.from_numpy(stored), atol=1e-6, rtol=0)


def test_cut_samples_see_the_cube_alone():
    """A `cut` film is the film of the cube with air around it, not of the wide field."""
    r = make_renderer(CFG, augment=False)
    fields = _fields(1)
    m = r.margin
    cube_only = torch.from_numpy(fit_field(fields[0, 0, m:-m, m:-m, m:-m].numpy(), N, m))[None, None]
    a = FilmAcquisition(False, "pa", 1650.0, 1800.0, 430.0, (5.0, 0.0, -5.0), (2.0, 0.0, 1.0))
    wide, _ = r.render(fields, [a])
    cut, _ = r.render(fields, [dataclasses.replace(a, cut=True)])
    padded, _ = r.render(cube_only, [a])
    torch.testing.assert_close(cut, padded, atol=1e-6, rtol=0)
    assert (cut - wide).abs().max() > 0.05


def test_cropped_training_film_equals_reconstruct_of_the_saved_dicom(tmp_path):
    """crop=True: the film is read as a DICOM file is. The cube alone at 430 mm leaves air borders;
    saved as DX DICOM and read by `load_study` (tags, not flags), borders cropped, the model input and
    geometry (pitch, the detector offset the crop makes) equal the training film's."""
    from xray2ct.acquisition import load_study
    from xray2ct.data.filmdicom import save_film_dicom
    from xray2ct.physics.hu import hu_to_mu
    from xray2ct.physics.radiograph import drr_to_radiograph

    r = make_renderer(CFG, augment=False)
    fields = _fields(1)
    a = FilmAcquisition(False, "pa", 1650.0, 1800.0, 430.0, cut=True, crop=True)
    x, (geometry,) = r.render(fields, [a])
    m, det = margin_voxels(CFG), SUPERSAMPLE * S
    cube_only = torch.full_like(fields, -1000.0)
    cube_only[..., m:-m, m:-m, m:-m] = fields[..., m:-m, m:-m, m:-m]
    g = xray2ct.Geometry(volume_shape=fields.shape[2:], voxel_mm=320.0 / N, source_iso_mm=1650.0,
                         source_det_mm=1800.0, det_shape=(det, det), det_pixel_mm=430.0 / det, views=("pa", "lat"))
    films = drr_to_radiograph(xray2ct.project(hu_to_mu(cube_only), g))[0].numpy()
    paths = [save_film_dicom(tmp_path / f"{v}.dcm", f, 430.0 / det, 1800.0, 1650.0, p, bits=16)
             for v, f, p in zip(("pa", "lat"), films, ("PA", "LL"))]
    study = load_study(*paths, size=S, nominal=CFG.geometry.build(N, S))
    torch.testing.assert_close(x, study.xrays, atol=2e-3, rtol=0)
    for view in geometry.views:
        mine, theirs = geometry.setup(view), study.geometry.setup(view)
        assert mine.det_pixel_mm == pytest.approx(theirs.det_pixel_mm, rel=1e-9)
        assert mine.det_offset_mm == pytest.approx(theirs.det_offset_mm, abs=1e-6)
    assert geometry.setup("pa").det_pixel_mm < 430.0 / S  # the air borders were cropped: a finer pitch
