"""segzoo's version (the lowest layer: checkpoints record it)."""

__version__ = "0.1.0"
