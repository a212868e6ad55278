"""User-facing errors for bad input files."""
from __future__ import annotations

from xray2ct.errors import UserError


class XRay2CTInputError(UserError, ValueError):
    """A file or folder given by the user cannot be used; the message names it and the problem."""
