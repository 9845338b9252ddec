"""Shared fixtures: a real Mosquitto broker per test, temp registries, small simulated fleets."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from broker import Broker

from contracts.block import ReadingBlock
from simulators import Fleet, FleetConfig


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A private Mosquitto on a free loopback port, stopped after the test."""
    b = Broker(tmp_path)
    b.start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def registry_dir(tmp_path: Path) -> Path:
    d = tmp_path / "registry"
    d.mkdir()
    return d


def fleet_blocks(config: FleetConfig, readings: int) -> dict[str, ReadingBlock]:
    return Fleet(config).generate(readings)


@pytest.fixture(scope="session")
def trained_small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, ReadingBlock]]:
    """A bundle trained on a small fleet (5 devices x 1200 readings), and its training blocks."""
    from models.registry import Registry
    from models.training.trainer import TrainConfig, export_model, train

    blocks = fleet_blocks(FleetConfig(devices=5, seed=11), 1200)
    model = train(blocks, TrainConfig(n_estimators=50))
    root = tmp_path_factory.mktemp("registry")
    path = Registry(root).publish("small", lambda v: export_model(model, name="small", version=v))
    return path, blocks
