"""``python -m ackbus.run MODULE:APP [flags]``: the same as ``ackbus run`` (docs/running.md)."""

from __future__ import annotations

import sys

from .app import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
