"""A local file registry of model bundles: ``<root>/<name>/v0001/``, ``v0002/`` …

Versions are assigned by the registry (max + 1) and bundles are immutable: a new
version is written to a temporary directory and renamed into place, so a reader
never sees a half-written bundle and two writers never get the same version.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from contracts.durable import fsync_dir
from contracts.manifest import MANIFEST_FILE, ModelManifest
from models.bundle import write_bundle
from models.errors import BundleError, ModelError

CHAMPION_FILE = "CHAMPION"
_VERSION_DIR = re.compile(r"^v(\d{4,})$")


class Registry:
    """Bundles under one root directory."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def versions(self, name: str) -> list[int]:
        d = self.root / name
        if not d.is_dir():
            return []
        out = []
        for p in d.iterdir():
            m = _VERSION_DIR.match(p.name)
            if m and (p / MANIFEST_FILE).exists():
                out.append(int(m.group(1)))
        return sorted(out)

    def path(self, name: str, version: int) -> Path:
        return self.root / name / f"v{version:04d}"

    def latest(self, name: str) -> Path:
        vs = self.versions(name)
        if not vs:
            raise ModelError(f"registry {self.root} has no versions of {name!r}")
        return self.path(name, vs[-1])

    def publish(self, name: str, build: Callable[[int], tuple[bytes, ModelManifest]]) -> Path:
        """Build and store the next version of `name`; return the bundle directory."""
        (self.root / name).mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            version = (self.versions(name) or [0])[-1] + 1
            model_bytes, manifest = build(version)
            if manifest.version != version or manifest.name != name:
                raise ModelError("build() must return a manifest with the name and version it was given")
            tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.root / name))
            try:
                write_bundle(tmp, model_bytes, manifest)
                target = self.path(name, version)
                try:
                    os.rename(tmp, target)  # fails if another writer took this version
                except OSError:
                    continue
                fsync_dir(self.root / name)
                return target
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"could not allocate a version for {name!r} in {self.root}")

    def champion(self, name: str) -> int | None:
        """The production version of `name`: the one `set_champion` named, else the latest, else None."""
        pointer = self.root / name / CHAMPION_FILE
        if pointer.exists():
            v = int(pointer.read_text().strip() or 0)
            if v in self.versions(name):
                return v
        vs = self.versions(name)
        return vs[-1] if vs else None

    def set_champion(self, name: str, version: int) -> None:
        """Name the production version (atomic replace of ``<root>/<name>/CHAMPION``)."""
        if version not in self.versions(name):
            raise ModelError(f"registry {self.root} has no version {version} of {name!r}")
        tmp = self.root / name / f".{CHAMPION_FILE}.tmp"
        tmp.write_text(f"{version}\n")
        os.replace(tmp, self.root / name / CHAMPION_FILE)
        fsync_dir(self.root / name)

    def resolve(self, ref: Path | str, name: str | None = None) -> Path:
        """A bundle directory from a path to a bundle, a model's directory in a registry
        (``registry/<name>``: its latest version), or a registry root (latest of `name`)."""
        p = Path(ref)
        if (p / MANIFEST_FILE).exists():
            return p
        if not name and p.name and Registry(p.parent).versions(p.name):
            return Registry(p.parent).latest(p.name)
        reg = Registry(p)
        names = reg.names()
        if name:
            return reg.latest(name)
        if len(names) == 1:
            return reg.latest(names[0])
        if names:
            raise ModelError(f"{p} holds several models ({', '.join(names)}); name one with --name")
        raise BundleError(p, "not a bundle directory (expected model.onnx + manifest.json) nor a registry")

