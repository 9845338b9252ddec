"""The scoring stage: per-device rolling features + ONNX scoring, one micro-batch at a time.

Guarantees: a device's readings must arrive in seq order; `score_many` returns one score
and one flag per reading, identical to scoring each device's whole stream at once
(features are chunking-invariant, see models.features). Flags are ``score >= threshold``.
`rollback()` returns every device's rolling window to where the last `commit()` left it (the micro-batch
could not be stored and comes again); it costs nothing until then (windows are replaced, never changed
in place, so the undo log holds references).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from contracts.block import ReadingBlock
from models.bundle import Bundle
from models.features import FeatureSpec, StreamingFeatures, columns_for, update_many
from models.scorer import OnnxScorer


@dataclass(frozen=True, slots=True)
class Scored:
    """Scores (float64 [n], higher = more anomalous) and flags (bool [n]) for one block."""

    scores: np.ndarray
    flags: np.ndarray


def rebuilt_window(tail: np.ndarray, channels: Sequence[str], spec: FeatureSpec) -> np.ndarray:
    """A rolling window for `spec` from one kept under another spec over `channels` (a superset of
    `spec.channels`): its readings of `spec`'s channels, the last `spec.long_window` of them, NaN before
    the oldest (as before a device's first reading), so `spec`'s features continue the device's stream."""
    cols = columns_for(spec, channels)
    L = spec.long_window
    w = tail[-L:, cols]
    if len(w) < L:
        w = np.vstack([np.full((L - len(w), len(cols)), np.nan), w])
    return np.ascontiguousarray(w, dtype=np.float64)


class ScoringStage:
    """Holds the current model and each device's feature state."""

    def __init__(self, bundle: Bundle, *, threads: int = 1) -> None:
        self.bundle = bundle
        self.scorer_threads = threads
        self.scorer = OnnxScorer(bundle, threads=threads)
        self.threshold = self.scorer.threshold
        self.recent: np.ndarray | None = None  # the last micro-batch's features (canary input for rollouts)
        self._features: dict[str, StreamingFeatures] = {}
        self._undo: dict[str, tuple[StreamingFeatures, np.ndarray | None]] = {}
        self._columns: dict[tuple[str, ...], list[int]] = {}

    def _cols(self, block: ReadingBlock) -> list[int]:
        cols = self._columns.get(block.channels)
        if cols is None:
            cols = self._columns[block.channels] = columns_for(self.bundle.spec, block.channels)
        return cols

    def _state(self, device_id: str) -> StreamingFeatures:
        state = self._features.get(device_id)
        if state is None:
            state = self._features[device_id] = StreamingFeatures(self.bundle.spec)
        return state

    def features_many(self, blocks: list[ReadingBlock]) -> list[np.ndarray]:
        """Features for many blocks in as few vectorised calls as possible (a device at most once per call)."""
        out: list[np.ndarray | None] = [None] * len(blocks)
        todo = list(range(len(blocks)))
        while todo:
            seen: set[str] = set()
            now: list[int] = []
            later: list[int] = []
            for i in todo:
                (later if blocks[i].device_id in seen else now).append(i)
                seen.add(blocks[i].device_id)
            states = [self._state(blocks[i].device_id) for i in now]
            for i, st in zip(now, states, strict=True):
                self._undo.setdefault(blocks[i].device_id, (st, st.tail))
            res = update_many(states,
                              [blocks[i].values[:, self._cols(blocks[i])] for i in now])
            for i, r in zip(now, res, strict=True):
                out[i] = r
            todo = later
        return [o for o in out if o is not None]

    def commit(self) -> None:
        """The windows as they are now are what `rollback()` returns to."""
        self._undo.clear()

    def rollback(self) -> None:
        """Every device's window back to where the last `commit()` left it."""
        for st, tail in self._undo.values():
            st.tail = tail
        self._undo.clear()

    def windows(self) -> dict[str, np.ndarray]:
        """Each device's rolling window (its last `long_window` readings, the model's channels)."""
        # list(): one C-level copy of the items, so another thread adding a device cannot break the loop
        return {d: st.tail for d, st in list(self._features.items()) if st.tail is not None}

    def set_window(self, device_id: str, tail: np.ndarray) -> None:
        """Start a device from a window `windows()` gave (same feature spec), as if it had never stopped."""
        want = (self.bundle.spec.long_window, len(self.bundle.spec.channels))
        if tail.shape != want:
            raise ValueError(f"window of shape {tail.shape}; this model keeps {want}")
        self._state(device_id).tail = tail

    def adopt_state(self, other: ScoringStage) -> None:
        """Keep the devices' rolling windows across a model swap, so features do not restart.

        Same feature spec: the windows are shared. Another spec (another algorithm, other floors or
        windows) on channels the old windows hold: each device's window is rebuilt from the readings the
        old one holds (the new spec's channels, its last `long_window`, NaN where the old window reached
        less far back), so the new model's features are those of the device's whole stream from the first
        reading on, as far as the old window reached. A spec needing a channel the old windows lack starts
        every device afresh (warm-up)."""
        new, old = self.bundle.spec, other.bundle.spec
        if old.hash == new.hash:
            self._features = other._features
            return
        if not set(new.channels) <= set(old.channels):
            return
        for device, tail in other.windows().items():
            self._state(device).tail = rebuilt_window(tail, old.channels, new)

    def score_many(self, blocks: list[ReadingBlock]) -> list[Scored]:
        """Score several devices' blocks with ONE onnxruntime call (the micro-batch)."""
        if not blocks:
            return []
        feats = self.features_many(blocks)
        stacked = np.vstack(feats)
        self.recent = stacked[-64:]
        scores = self.scorer.score(stacked)
        out, i = [], 0
        for f in feats:
            s = scores[i : i + len(f)]
            out.append(Scored(scores=s, flags=s >= self.threshold))
            i += len(f)
        return out
