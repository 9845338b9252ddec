"""The model slot: swaps only between batches, carries feature state, one step of rollback, threshold override."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_agent.model_slot import ModelSlot
from edge_agent.rollout import RolloutError
from edge_agent.scoring import ScoringStage
from models.bundle import load_bundle


def stage(trained_small: tuple[Path, Any]) -> ScoringStage:
    return ScoringStage(load_bundle(trained_small[0]))


def test_offers_take_effect_at_swap_and_rollback_goes_back_one_step(trained_small: tuple[Path, Any]) -> None:
    first, second = stage(trained_small), stage(trained_small)
    slot = ModelSlot(first.bundle, first)
    assert slot.swap() is None, "nothing pending: nothing changes"
    with pytest.raises(RolloutError):
        slot.rollback()
    slot.offer(second.bundle, second)
    assert slot.stage is first, "an offer waits for the next batch"
    assert slot.swap() is second.bundle and slot.stage is second
    assert slot.rollback() is first.bundle and slot.stage is second, "rollback too waits for the swap"
    with pytest.raises(RolloutError):
        slot.rollback()  # one previous model, not a history: a second rollback before the swap fails
    slot.swap()
    assert slot.stage is first
    assert slot.rollback() is second.bundle, "after the swap, the model rolled back from is the previous one"


def test_a_threshold_override_survives_model_swaps_until_cleared(trained_small: tuple[Path, Any]) -> None:
    first, second = stage(trained_small), stage(trained_small)
    own = float(first.bundle.manifest.threshold)
    slot = ModelSlot(first.bundle, first)
    slot.set_threshold(0.9)
    assert slot.threshold == own, "from the next batch on"
    assert slot.swap() is first.bundle and slot.threshold == 0.9
    assert slot.lineage().threshold == 0.9, "messages carry the threshold in effect"
    slot.offer(second.bundle, second)
    slot.swap()
    assert slot.stage is second and slot.threshold == 0.9
    slot.set_threshold(None)
    slot.swap()
    assert slot.threshold == own


def test_a_swap_to_a_model_with_other_features_keeps_the_devices_windows(tmp_path: Path,
                                                                          trained_small: tuple[Path, Any]) -> None:
    """A v4 model swapped for a v6 one mid-stream: the v6 features from the next reading on are those of
    the devices' whole streams (its windows rebuilt from the old ones' readings), not a restart with a
    warm-up of no evidence."""
    import numpy as np

    from models.features import columns_for, compute_features
    from models.registry import Registry
    from models.training.trainer import TrainConfig, export_model, train

    blocks = trained_small[1]
    old = train(blocks, TrainConfig(n_estimators=20, features="robust-blocks-v4"))
    first = ScoringStage(load_bundle(Registry(tmp_path).publish(
        "old", lambda v: export_model(old, name="old", version=v))))
    second = stage(trained_small)
    assert first.bundle.spec.hash != second.bundle.spec.hash and second.bundle.spec.algo == "robust-blocks-v7"
    slot = ModelSlot(first.bundle, first)
    devices = list(blocks)[:3]
    first.score_many([blocks[d].slice(0, 300) for d in devices])
    slot.offer(second.bundle, second)
    slot.swap()
    assert slot.stage is second
    feats = second.features_many([blocks[d].slice(300, 340) for d in devices])
    spec = second.bundle.spec
    for d, f in zip(devices, feats, strict=True):
        b = blocks[d]
        whole = compute_features(spec, b.values[:340, columns_for(spec, b.channels)])
        assert np.array_equal(f, whole[300:340]), d
