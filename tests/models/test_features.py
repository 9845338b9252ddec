from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.errors import FeatureError
from models.features import FEATURE_NAMES, FeatureSpec, StreamingFeatures, compute_features

SPEC = FeatureSpec(channels=("a", "b", "c"), floors=(0.05, 0.05, 0.05))


def stream(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 50 + rng.normal(size=(n, 3)).cumsum(axis=0) * 0.1 + rng.normal(size=(n, 3))


def test_one_reading_at_a_time_equals_the_whole_array_bit_for_bit() -> None:
    x = stream(600)
    state = StreamingFeatures(SPEC)
    one_by_one = np.vstack([state.update(x[i : i + 1]) for i in range(len(x))])
    assert np.array_equal(one_by_one, compute_features(SPEC, x))


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=12), seed=st.integers(0, 1000))
def test_any_micro_batching_equals_the_whole_array(cuts: list[int], seed: int) -> None:
    x = stream(sum(cuts), seed)
    state = StreamingFeatures(SPEC)
    parts, i = [], 0
    for k in cuts:
        parts.append(state.update(x[i : i + k]))
        i += k
    assert np.array_equal(np.vstack(parts), compute_features(SPEC, x))


def test_warm_up_gives_no_evidence_until_a_short_window_is_seen() -> None:
    f = compute_features(SPEC, stream(200))
    assert f.shape == (200, len(FEATURE_NAMES))
    assert (f[: SPEC.short_window] == 0).all()
    assert np.isfinite(f).all() and (f[SPEC.short_window :] != 0).any(axis=1).all()


def test_a_spike_a_level_shift_and_a_stuck_sensor_move_their_features() -> None:
    x = 50 + np.random.default_rng(1).normal(size=(400, 3))
    base = compute_features(SPEC, x)
    spiked = x.copy()
    spiked[300, 1] += 12
    assert compute_features(SPEC, spiked)[300, 0] > 10 * max(base[300, 0], 1)
    shifted = x.copy()
    shifted[300:330, 2] += 8
    assert compute_features(SPEC, shifted)[325, 1] > 25  # shift² of a sustained 8 sd step
    stuck = x.copy()
    stuck[300:330, 0] = stuck[300, 0]
    assert compute_features(SPEC, stuck)[325, 3] < base[325, 3] - 2  # min ratio drops


def test_bad_input_is_refused() -> None:
    with pytest.raises(FeatureError, match="NaN"):
        compute_features(SPEC, np.array([[1.0, np.nan, 2.0]]))
    with pytest.raises(FeatureError, match=r"\(n, 3\)"):
        compute_features(SPEC, np.zeros((4, 2)))


def test_the_spec_hash_pins_every_setting() -> None:
    again = FeatureSpec.from_dict(SPEC.to_dict())
    assert again == SPEC and again.hash == SPEC.hash
    assert FeatureSpec(channels=("a", "b", "c"), floors=(0.05, 0.05, 0.06)).hash != SPEC.hash
    with pytest.raises(FeatureError):
        FeatureSpec.from_dict({**SPEC.to_dict(), "algo": "other"})


def test_floors_are_fitted_from_the_channel_noise() -> None:
    rng = np.random.default_rng(0)
    streams = [rng.normal(scale=[0.5, 2.0], size=(2000, 2)) for _ in range(3)]
    spec = FeatureSpec.fit(["x", "y"], streams)
    assert spec.floors[0] == pytest.approx(0.05, rel=0.1)
    assert spec.floors[1] == pytest.approx(0.2, rel=0.1)
