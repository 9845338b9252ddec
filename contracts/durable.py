"""Durability helpers shared by every package (standard library only, so the edge install stays light)."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the directory entries of `path` durable (a rename or a new file in it survives a power cut
    once this returns). POSIX only: a directory cannot be opened for fsync on Windows."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
