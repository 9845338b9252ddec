"""Steps the demo composes, each the same code path as its command."""

from __future__ import annotations

from pathlib import Path

from edgeflag.cli import main as cli_main


def simulate_file(path: Path, *, devices: int, duration: int, seed: int) -> int:
    code = cli_main(["simulate", "--devices", str(devices), "--duration", str(duration), "--seed", str(seed),
                     "--out", str(path), "--quiet"])
    if code:
        raise RuntimeError(f"simulate failed with exit code {code}")
    return sum(1 for _ in path.open())


def train_bundle(data: Path, registry: Path, *, name: str) -> Path:
    from models.registry import Registry

    code = cli_main(["model", "train", "--data", str(data), "--out", str(registry), "--name", name])
    if code:
        raise RuntimeError(f"model train failed with exit code {code}")
    return Registry(registry).latest(name)
