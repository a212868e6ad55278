"""Errors caused by the user's input (a file, a config value): the CLI prints their
message as one line instead of a traceback."""
from __future__ import annotations


class UserError(Exception):
    """Base class; the message names the file or value and the problem."""


USER_ERRORS = (UserError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)
