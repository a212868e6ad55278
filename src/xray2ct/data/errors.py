"""User-facing errors for bad input files."""
from __future__ import annotations


class XRay2CTInputError(ValueError):
    """A file or folder given by the user cannot be used; the message names it and the problem."""
