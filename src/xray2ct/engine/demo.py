"""`xray2ct demo`: the main job on the embedded default, with no download."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator


def run_demo(out: str | Path, size: int = 64, xray_size: int = 256, seed: int = 0) -> Iterator[str]:
    """Phantom -> PA + lateral DRRs -> montage; yields progress lines for the CLI."""
    import numpy as np
    from PIL import Image

    from xray2ct.data.layout import write_case
    from xray2ct.data.phantoms import chest_phantom
    from xray2ct.viz import ct_and_drr_montage

    out = Path(out)
    yield f"generating a {size}³ chest phantom (seed {seed}) …"
    hu = chest_phantom(size=size, seed=seed)
    spacing = (320.0 / size,) * 3
    yield f"rendering PA and lateral DRRs ({xray_size}² detector) …"
    case_dir = write_case(out, "demo", hu, spacing, xray_size=xray_size)
    pa = np.asarray(Image.open(case_dir / "demo_pa_drr.png"), dtype=np.float32) / 65535
    lat = np.asarray(Image.open(case_dir / "demo_lat_drr.png"), dtype=np.float32) / 65535
    montage = out / "demo_montage.png"
    ct_and_drr_montage(montage, hu, pa, lat, title="xray2ct demo: phantom CT and its DRRs")
    yield f"volume:  {case_dir / 'demo.nii.gz'}"
    yield f"DRRs:    {case_dir / 'demo_pa_drr.png'}, {case_dir / 'demo_lat_drr.png'}"
    yield f"montage: {montage}"
