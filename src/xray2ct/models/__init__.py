"""The reconstruction network and its parts; `build_model(config)` is the entry point."""

from xray2ct.models.net import XRay2CT, build_model

__all__ = ["XRay2CT", "build_model"]
