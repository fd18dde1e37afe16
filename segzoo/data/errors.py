"""The errors segzoo raises for unusable data files (kept apart so every data module can raise them)."""

from __future__ import annotations


class DataError(ValueError):
    """Training data that would silently give wrong results; the message says how to fix it."""


class ImageFileError(DataError):
    """An image or mask file that cannot be read as one (corrupt, truncated, unsupported); names the file."""
