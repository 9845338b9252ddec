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
