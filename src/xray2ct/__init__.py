"""xray2ct: reconstruct a 3D CT volume from a PA and a lateral X-ray.

Only torch/numpy are imported here so that `xray2ct.models`, `xray2ct.physics` and the
benchmarks run on machines without MONAI, nibabel or SimpleITK.
"""
from xray2ct.geometry import Geometry
from xray2ct.physics.projector import project

__version__ = "0.1.0"
__all__ = ["Geometry", "project", "__version__"]
