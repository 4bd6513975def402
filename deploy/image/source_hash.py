#!/usr/bin/env python3
"""Print a SHA-256 over everything that goes into the hfl image, so a build can be matched to a source tree.

build.sh stores it in the image label ``org.hfl.source-hash``; the container tests rebuild the image when the
label differs from the current tree. Covers hfl/, services/ (every file except caches), pyproject.toml,
requirements/runtime.txt and deploy/Dockerfile. Runs on any Python 3.8+ with no packages.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

INPUTS = ("hfl", "services", "pyproject.toml", "requirements/runtime.txt", "deploy/Dockerfile")
SKIP_DIRS = {"__pycache__", ".mypy_cache", ".pytest_cache"}


def source_files(root: Path) -> list[Path]:
    files: list[Path] = []
    for name in INPUTS:
        p = root / name
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files.extend(
                f
                for f in p.rglob("*")
                if f.is_file()
                and not SKIP_DIRS.intersection(f.parts)
                and f.suffix not in {".pyc", ".pyo"}
                and not any(x.endswith(".egg-info") for x in f.parts)
            )
    return sorted(files, key=lambda f: f.relative_to(root).as_posix())


def source_hash(root: Path) -> str:
    h = hashlib.sha256()
    for f in source_files(root):
        rel = f.relative_to(root).as_posix().encode()
        data = f.read_bytes()
        h.update(len(rel).to_bytes(4, "big") + rel + len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2]
    print(source_hash(root))
