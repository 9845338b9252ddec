from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.errors import FeatureError
from models.features import (
    FEATURE_NAMES,
    FeatureSpec,
    StreamingFeatures,
    _median_last,
    _median_of,
    compute_features,
    update_many,
)

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
    assert np.array_equal(batched(SPEC, x, cuts), compute_features(SPEC, x))


def batched(spec: FeatureSpec, x: np.ndarray, cuts: list[int]) -> np.ndarray:
    """Features of x fed to one StreamingFeatures in micro-batches of the given sizes."""
    state = StreamingFeatures(spec)
    parts, i = [], 0
    for k in cuts:
        parts.append(state.update(x[i : i + k]))
        i += k
    return np.vstack(parts)


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


def reference_features(spec: FeatureSpec, x: np.ndarray) -> np.ndarray:
    """The module docstring's definition, one reading at a time with np.median (slow, obviously right)."""
    S, B = spec.short_window, spec.blocks
    floor = np.asarray(spec.floors)
    out = np.zeros((len(x), len(FEATURE_NAMES)))
    for i in range(len(x)):
        k = min(i // S, B)  # complete blocks before reading i
        if k == 0:
            continue
        blocks = [x[i - (k - b) * S : i - (k - b - 1) * S] for b in range(k)]
        centre = np.median([blk.mean(axis=0) for blk in blocks], axis=0)
        scale = np.median([blk.std(axis=0) for blk in blocks], axis=0) + floor
        recent = np.abs(np.diff(x[i - S : i + 1], axis=0))
        dscale = np.median(recent, axis=0) * 1.4826 / np.sqrt(2.0) + floor
        z_long = np.abs(x[i] - centre) / scale
        shift = np.abs(np.median(x[i - S : i], axis=0) - centre) / scale
        ratio = np.log(dscale / scale)
        out[i] = [z_long.max() ** 2, shift.max() ** 2, ratio.max(), ratio.min()]
    return np.clip(out, -spec.clip, spec.clip)


def test_features_match_the_documented_definition() -> None:
    x = stream(400, seed=3)
    x[250, 1] += 9  # a spike
    x[300:330, 2] = x[300, 2]  # a stuck channel
    np.testing.assert_allclose(compute_features(SPEC, x), reference_features(SPEC, x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("k", range(2, 14))
def test_the_median_network_picks_the_middle_of_every_0_1_input(k: int) -> None:
    """0-1 principle: a comparator network that orders every 0/1 input orders every input."""
    bits = (np.arange(2**k)[:, None] >> np.arange(k)[None, :]) & 1  # every 0/1 vector of length k
    got = _median_of([bits[:, j].astype(float) for j in range(k)])
    assert np.array_equal(got, np.median(bits, axis=1))


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.lists(st.floats(-1e6, 1e6), min_size=12, max_size=12), min_size=1, max_size=30),
       k=st.integers(2, 12))
def test_the_median_network_equals_sorting_bit_for_bit(rows: list[list[float]], k: int) -> None:
    a = np.array(rows)[:, :k]
    assert np.array_equal(_median_of([a[:, j] for j in range(k)]), _median_last(a))


V2 = FeatureSpec.fit(("a", "b", "c"), [stream(2000, 9)], algo="robust-blocks-v2")


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=12), seed=st.integers(0, 1000))
def test_v2_any_micro_batching_equals_the_whole_array(cuts: list[int], seed: int) -> None:
    x = np.round(stream(sum(cuts), seed), 1)  # quantised: equal neighbours happen
    x[len(x) // 2 : len(x) // 2 + 150, 1] = 7.0  # a stuck stretch longer than the long window
    assert np.array_equal(batched(V2, x, cuts), compute_features(V2, x))


def test_v2_keeps_a_lasting_level_visible_and_sees_stuck_and_steps() -> None:
    x = stream(1200, 3)
    names = V2.names
    assert names[:4] == FEATURE_NAMES and V2.n_features == 4 + 2 + 3
    base = compute_features(V2, x)
    shifted = x.copy()
    shifted[600:, 0] += 40  # a new level that lasts far longer than the long window
    f = compute_features(V2, shifted)
    z = names.index("base_z_a")
    assert abs(f[1100, z]) > 5 * max(abs(base[1100, z]), 1) and f[1100, 1] < 25  # v1's shift has forgotten it
    step = names.index("max_step_sq")
    assert f[600, step] > 100 * max(base[600, step], 1)
    stuck = x.copy()
    stuck[700:900, 2] = stuck[700, 2]
    g = compute_features(V2, stuck)
    frac = names.index("max_stuck_frac")
    assert g[850, frac] == 1.0 and base[850, frac] < 0.1


def test_old_specs_keep_their_dict_and_hash_and_unknown_algorithms_are_refused() -> None:
    assert set(SPEC.to_dict()) == {"algo", "channels", "floors", "short_window", "blocks", "clip"}
    assert FeatureSpec.from_dict(V2.to_dict()) == V2 and FeatureSpec.from_dict(SPEC.to_dict()) == SPEC
    with pytest.raises(FeatureError, match="unknown feature algorithm"):
        FeatureSpec(channels=("a",), floors=(0.1,), algo="robust-blocks-v9")
    with pytest.raises(FeatureError, match="level"):
        FeatureSpec(channels=("a",), floors=(0.1,), algo="robust-blocks-v2")


def test_a_constant_or_quantised_channel_keeps_a_sane_floor() -> None:
    x = stream(3000, 4)
    x[:, 1] = 12.0  # constant in training
    x[:, 2] = np.round(x[:, 2])  # integer steps
    y = x + 0.25  # a second device: the step between the two streams is not a step of either
    spec = FeatureSpec.fit(("a", "b", "c"), [x, y])
    assert spec.floors[1] >= 12e-6 and spec.floors[2] >= 0.5
    # the Spark retraining job fits from per-device summaries: the same spec
    from models.features import stream_noise, stream_resolution

    summaries = [stream_resolution(v) for v in (x, y)]
    noise = [stream_noise(v) for v in (x, y)]
    assert FeatureSpec.from_noise(("a", "b", "c"), noise, resolutions=summaries) == spec  # type: ignore[arg-type]


V3 = FeatureSpec(channels=("a", "b", "c"), floors=(0.05, 0.05, 0.05), algo="robust-blocks-v3")


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=12), seed=st.integers(0, 1000))
def test_v3_any_micro_batching_equals_the_whole_array(cuts: list[int], seed: int) -> None:
    x = stream(sum(cuts), seed)
    x[len(x) // 3 : len(x) // 3 + 25, 2] = 0.0  # a dropout: the shift gate at work
    x[len(x) // 2 : len(x) // 2 + 40, 1] = 7.0  # a stuck stretch: equal neighbours
    assert np.array_equal(batched(V3, x, cuts), compute_features(V3, x))


def test_v3_shift_lasts_while_the_reading_carries_it_and_not_after() -> None:
    x = 50 + np.random.default_rng(5).normal(size=(600, 3))
    shifted = x.copy()
    shifted[300:330, 2] += 8
    v1, v3 = compute_features(SPEC, shifted), compute_features(V3, shifted)
    assert V3.names[1] == "max_gated_shift_sq" and v3.shape == v1.shape
    # during the shift the reading is as far off as the median before it: the shift passes the gate
    assert v3[325, 1] == v1[325, 1] > 25
    # the readings back to normal: v1's shift still holds the shifted readings before them, v3's does not
    after = slice(330, 334)
    assert (v1[after, 1] > 25).all() and (v3[after, 1] < 0.25 * v1[after, 1]).all()
    # no equal neighbours: the other features are v1's, bit for bit
    assert np.array_equal(np.delete(v3, 1, axis=1), np.delete(v1, 1, axis=1))


def test_fit_learns_a_baseline_for_v2_only() -> None:
    v3 = FeatureSpec.fit(("a", "b", "c"), [stream(2000, 9)], algo="robust-blocks-v3")
    assert v3.algo == "robust-blocks-v3" and v3.level is None and v3.floors == V2.floors
    assert FeatureSpec.from_dict(v3.to_dict()) == v3 and "level" not in v3.to_dict()


def test_v3_sees_a_stuck_channel_from_its_third_equal_reading() -> None:
    x = 50 + np.random.default_rng(6).normal(size=(600, 3))
    stuck = x.copy()
    stuck[300:330, 0] = stuck[300, 0]
    v1, v3 = compute_features(SPEC, stuck), compute_features(V3, stuck)
    floor_ratio = v3[320, 3]  # well into the span both agree: dscale is at its floor
    assert floor_ratio == v1[320, 3] < -2
    assert (v3[302:306, 3] <= floor_ratio + 0.1).all()  # x equals the two before it: at once
    assert (v1[302:306, 3] > floor_ratio + 1).all()  # v1 waits for most of the S steps to be zero
    assert v3[301, 3] == v1[301, 3]  # one repeat is not enough


V4 = FeatureSpec(channels=("a", "b", "c"), floors=(0.05, 0.05, 0.05), algo="robust-blocks-v4")


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=12), seed=st.integers(0, 1000))
def test_v4_any_micro_batching_equals_the_whole_array(cuts: list[int], seed: int) -> None:
    x = stream(sum(cuts), seed)
    x[len(x) // 3 : len(x) // 3 + 25, 2] = 0.0  # a dropout: the step bounds at work after it
    x[len(x) // 2 : len(x) // 2 + 40, 1] = 7.0  # a stuck stretch: equal neighbours
    burst = x[2 * len(x) // 3 : 2 * len(x) // 3 + 20, 0]
    burst += np.random.default_rng(seed).normal(0, 8, len(burst))  # a noise burst (in place: a view)
    assert np.array_equal(batched(V4, x, cuts), compute_features(V4, x))


def test_v4_ratios_end_with_the_stuck_span_and_the_noise_burst() -> None:
    x = 50 + np.random.default_rng(7).normal(size=(900, 3))
    x[300:330, 0] = x[300, 0]  # stuck on channel a
    x[600:620, 1] += np.random.default_rng(8).normal(0, 8, 20)  # a noise burst on channel b
    v3, v4 = compute_features(V3, x), compute_features(V4, x)
    assert V4.names == V3.names
    # inside the stuck span, from the third equal reading: v3 takes the floor's ratio, v4 the clip
    assert (v4[302:330, 3] == -V4.clip).all() and (v3[302:330, 3] > -5).all() and v4[301, 3] > -5
    # after it: v3's min ratio stays near the stuck value while the last S steps are mostly zero; v4's
    # follows the reading's own steps back towards normal at once
    normal_lo = float(np.median(v4[100:290, 3]))
    assert (v3[331:335, 3] < normal_lo - 2).all()
    assert (v4[331:335, 3] > v3[331:335, 3] + 1.5).all() and (np.abs(v4[331:335, 3] - normal_lo) < 1).all()
    # noise burst: v4's max ratio is never above v3's, is v3's through most of the burst, and falls
    # well below it in the readings after the burst, while v3's still holds the burst's steps
    b = slice(600, 640)
    assert (v4[b, 2] <= v3[b, 2]).all()
    assert np.mean(v4[606:620, 2] == v3[606:620, 2]) >= 0.8 and (v4[606:620, 2] > 1).all()
    assert (v3[621:625, 2] > 1).all() and (v3[621:625, 2] - v4[621:625, 2]).sum() > 1.5
    # the z-score and the gated shift are v3's
    assert np.array_equal(v4[:, :2], v3[:, :2])


VALUES = FeatureSpec.fit(("a", "b", "c"), [stream(2000, 9)], algo="values-v1")


@settings(max_examples=20, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=12), seed=st.integers(0, 1000))
def test_values_any_micro_batching_equals_the_whole_array(cuts: list[int], seed: int) -> None:
    x = stream(sum(cuts), seed)
    assert np.array_equal(batched(VALUES, x, cuts), compute_features(VALUES, x))


def test_values_are_each_readings_own_values_against_the_training_baseline() -> None:
    assert VALUES.level is not None and VALUES.spread is not None
    assert VALUES.names == ("value_z_a", "value_z_b", "value_z_c")
    assert FeatureSpec.from_dict(VALUES.to_dict()) == VALUES  # the baseline travels in the manifest
    x = stream(300, 4)
    x[7, 1] = 1e9  # no warm-up, no window: the first readings have features, an outlier moves its row only
    f = compute_features(VALUES, x)
    expected = np.clip((x - np.asarray(VALUES.level)) / np.asarray(VALUES.spread), -VALUES.clip, VALUES.clip)
    assert np.array_equal(f, expected) and f[7, 1] == VALUES.clip and (np.abs(f[8]) < 100).all()
    with pytest.raises(FeatureError, match="values-v1 needs a finite level"):
        FeatureSpec(channels=("a",), floors=(0.1,), algo="values-v1")


V5 = FeatureSpec(channels=("a", "b", "c"), floors=(0.05, 0.05, 0.05), algo="robust-blocks-v5")


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=12), seed=st.integers(0, 1000))
def test_v5_any_micro_batching_equals_the_whole_array(cuts: list[int], seed: int) -> None:
    x = stream(sum(cuts), seed)
    x[len(x) // 3 : len(x) // 3 + 25, 2] = 0.0  # a dropout
    x[len(x) // 2 : len(x) // 2 + 40, 1] = 7.0  # a stuck stretch
    burst = x[2 * len(x) // 3 : 2 * len(x) // 3 + 20, 0]
    burst += np.random.default_rng(seed).normal(0, 8, len(burst))  # a noise burst
    assert np.array_equal(batched(V5, x, cuts), compute_features(V5, x))


def test_v5_sees_noise_on_a_smooth_signal_that_v4_reads_as_slope_and_not_a_spike() -> None:
    t = np.arange(1500)
    rng = np.random.default_rng(11)
    x = np.column_stack([50 + 20 * np.sin(t / 15), 10 + 5 * np.cos(t / 25), 3 + 0.01 * rng.normal(size=len(t))])
    x[:, 0] += 0.02 * rng.normal(size=len(t))
    x[800:812, 0] += rng.normal(0, 3, 12)  # a burst of jitter, small against the wave's swing
    x[1200, 0] += 3.0  # one spike of the same size
    v4, v5 = compute_features(V4, x), compute_features(V5, x)
    assert V5.names[:4] == V4.names and V5.names[4] == "max_rough_ratio"
    assert np.array_equal(v5[:, :4], v4)  # v4's features, bit for bit
    quiet_v4, quiet_v5 = np.quantile(v4[200:790, 2], 0.999), np.quantile(v5[200:790, 4], 0.999)
    # v4's noise ratio follows the slope: the burst does not leave its normal range for long
    assert np.mean(v4[804:812, 2] > quiet_v4) < 0.5
    # v5's roughness stands far out of its own through the burst, from its fourth reading
    assert (v5[803:812, 4] > quiet_v5 + 2).all()
    # and is back within a few readings after it, and never moved by the single spike
    assert (v5[815:830, 4] <= quiet_v5 + 0.5).all() and (v5[1199:1210, 4] <= quiet_v5 + 0.5).all()
    with pytest.raises(FeatureError, match="short_window >= 8"):
        FeatureSpec(channels=("a",), floors=(0.1,), short_window=6, algo="robust-blocks-v5")


V6 = FeatureSpec(channels=("a", "b", "c"), floors=(0.05, 0.05, 0.05), algo="robust-blocks-v6")
#: the burst filter reads the 7 readings before x: with short windows of 2 they fill the whole long window
V6_SHORT = FeatureSpec(channels=("a", "b", "c"), floors=(0.05, 0.05, 0.05), short_window=2, blocks=4,
                       algo="robust-blocks-v6")


def _burst_odds_reference(x: np.ndarray, t: int, channel: int, spec: FeatureSpec) -> float:
    """The documented filter for one reading and channel, in plain floats (`_features_v6`'s docstring)."""
    from models.features import BURST_ENTER, BURST_EXIT, BURST_MAX_Z, BURST_SD, BURST_WINDOW

    S, B = spec.short_window, spec.blocks
    blocks = [x[t - spec.long_window + b * S : t - spec.long_window + (b + 1) * S, channel] for b in range(B)]
    centre = float(np.median([blk.mean() for blk in blocks]))
    scale = float(np.median([blk.std() for blk in blocks])) + spec.floors[channel]
    p = BURST_ENTER
    for i in range(t - BURST_WINDOW + 1, t + 1):
        z = (x[i, channel] - centre) / scale
        r = np.exp(0.5 * (1 - 1 / BURST_SD**2) * min(z * z, BURST_MAX_Z**2)) / BURST_SD
        prior = p * (1 - BURST_EXIT) + (1 - p) * BURST_ENTER
        p = prior * r / (prior * r + 1 - prior)
    return float(np.log(prior * r) - np.log(1 - prior))


def test_v6_sees_a_burst_of_noise_within_a_few_readings_and_not_a_single_spike() -> None:
    rng = np.random.default_rng(5)
    x = 50 + rng.normal(size=(1500, 3))
    x[800:820, 1] += rng.normal(0, 6, 20)  # a burst: extra noise of 6 sd on one channel
    x[1200, 2] += 12.0  # one 12-sd spike
    v4, v6 = compute_features(V4, x), compute_features(V6, x)
    assert V6.names[:4] == V4.names and V6.names[4] == "max_burst_odds"
    assert np.array_equal(v6[:, :4], v4)  # v4's features, bit for bit
    odds = v6[:, 4]
    # no history: v4's "no evidence" zeros, and the odds before any reading (a 0 would be a burst half way)
    assert (v6[: V6.short_window, :4] == 0).all() and np.allclose(odds[: V6.short_window], np.log(1 / 299))
    for t in (500, 805, 1201):  # the documented filter, reading by reading
        want = max(_burst_odds_reference(x, t, c, V6) for c in range(3))
        assert abs(odds[t] - want) < 1e-9 * max(1.0, abs(want)), (t, odds[t], want)
    quiet = np.quantile(odds[200:790], 0.999)
    # past everything the quiet stretch shows from the burst's fourth reading on, on most of its readings
    assert np.mean(odds[803:820] > quiet + 2) > 0.8, odds[800:820]
    # the one spike lifts it by at most one reading's capped evidence, and it is back two readings on
    assert odds[1200] < quiet + 2.4 and (odds[1202:1210] < quiet).all(), odds[1198:1210]
    # and after the burst, back within a few readings
    assert (odds[824:840] < quiet).all(), odds[818:840]
    with pytest.raises(FeatureError, match="long window of at least 8"):
        FeatureSpec(channels=("a",), floors=(0.1,), short_window=2, blocks=3, algo="robust-blocks-v6")


V7 = FeatureSpec(channels=("a", "b", "c"), floors=(0.05, 0.05, 0.05), algo="robust-blocks-v7")
#: a short memory (2-reading blocks, 4 of them: coarse blocks of 8 over 32 readings), so hypothesis cuts cross it
V7_SHORT = FeatureSpec(channels=("a", "b", "c"), floors=(0.05, 0.05, 0.05), short_window=2, blocks=4,
                       algo="robust-blocks-v7")


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=12), seed=st.integers(0, 1000),
       which=st.sampled_from(["v6", "v6-short", "v7", "v7-short"]))
def test_v6_and_v7_any_micro_batching_equals_the_whole_array(cuts: list[int], seed: int, which: str) -> None:
    spec = {"v6": V6, "v6-short": V6_SHORT, "v7": V7, "v7-short": V7_SHORT}[which]
    x = stream(sum(cuts), seed)
    x[len(x) // 4 : len(x) // 4 + 150, 1] += 9.0  # a long level shift
    x[len(x) // 2 : len(x) // 2 + 25, 2] = 0.0  # a dropout
    burst = x[3 * len(x) // 4 : 3 * len(x) // 4 + 20, 0]
    burst += np.random.default_rng(seed).normal(0, 8, len(burst))  # a noise burst
    assert np.array_equal(batched(spec, x, cuts), compute_features(spec, x))


@settings(max_examples=40, deadline=None)
@given(steps=st.lists(st.lists(st.integers(min_value=0, max_value=150), min_size=4, max_size=4), min_size=1,
                      max_size=10),
       seed=st.integers(0, 1000), which=st.sampled_from(["v5", "v6", "v7", "v7-short"]))
def test_several_devices_in_one_call_each_get_their_own_streams_features(steps: list[list[int]], seed: int,
                                                                         which: str) -> None:
    """`update_many` (the agent's call): four devices, each bringing 0-150 rows per call, so the new rows
    are sometimes computed densely and sometimes gathered, and v7's blocks come from its trimmed copy of
    the windows in either form."""
    spec = {"v5": V5, "v6": V6, "v7": V7, "v7-short": V7_SHORT}[which]
    xs = [stream(sum(s[d] for s in steps), seed + d) for d in range(4)]
    xs[1][len(xs[1]) // 3 :, 2] += 9.0  # one device shifts
    states = [StreamingFeatures(spec) for _ in xs]
    parts: list[list[np.ndarray]] = [[] for _ in xs]
    done = [0] * 4
    for sizes in steps:
        outs = update_many(states, [x[i : i + k] for x, i, k in zip(xs, done, sizes, strict=True)])
        for d, (out, k) in enumerate(zip(outs, sizes, strict=True)):
            assert out.shape == (k, spec.n_features)
            parts[d].append(out)
            done[d] += k
    for x, got in zip(xs, parts, strict=True):
        assert np.array_equal(np.vstack(got), compute_features(spec, x))


def test_v7_does_not_echo_the_end_of_a_long_shift_and_is_v6_until_its_memory_fills() -> None:
    rng = np.random.default_rng(9)
    x = 50 + rng.normal(size=(2000, 3))
    x[900:1020, 1] += 8.0  # a level shift of 120 readings: as long as v6's window
    x[1500, 2] += 12.0  # one spike
    v6, v7 = compute_features(V6, x), compute_features(V7, x)
    assert V7.long_window == 4 * V6.long_window == 480 and V7.clean_horizon == V6.clean_horizon == 240
    assert V7.names[2:4] == V6.names[2:4] and len(V7.names) == 5
    # until the memory reaches back 480 readings there is no far centre: v6's features, bit for bit
    assert np.array_equal(v7[:480], v6[:480])
    assert np.array_equal(v7[:, 2:4], v6[:, 2:4])  # the ratios are v6's (the same blocks) throughout
    quiet = np.quantile(v7[500:890, 0], 0.999)
    # the shift's start and the spike stand out in both
    assert v7[900, 0] > 4 * quiet and v7[1500, 0] > 4 * quiet and v6[900, 0] > 4 * quiet
    # its end: v6's centre has become the shifted level, so the return looks like a new shift for tens of
    # readings; v7's far centre still holds the true level
    assert np.mean(v6[1020:1060, 0] > quiet) > 0.8, v6[1020:1060, 0]
    assert np.mean(v7[1020:1060, 0] > quiet) < 0.1, v7[1020:1060, 0]
    quiet_odds = np.quantile(v7[500:890, 4], 0.999)
    assert np.mean(v6[1020:1060, 4] > quiet_odds) > 0.8 and np.mean(v7[1020:1060, 4] > quiet_odds) < 0.1
