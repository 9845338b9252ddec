"""The scoring stage: per-device rolling features + ONNX scoring, one micro-batch at a time.

Guarantees: a device's readings must arrive in seq order; each `score` call returns one
score and one flag per reading, identical to scoring the device's whole stream at once
(features are chunking-invariant, see models.features). Flags are ``score >= threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from contracts.block import ReadingBlock
from models.bundle import Bundle
from models.features import StreamingFeatures, columns_for
from models.scorer import OnnxScorer


@dataclass(frozen=True, slots=True)
class Scored:
    """Scores (float64 [n], higher = more anomalous) and flags (bool [n]) for one block."""

    scores: np.ndarray
    flags: np.ndarray


class ScoringStage:
    """Holds the current model and each device's feature state."""

    def __init__(self, bundle: Bundle, *, threads: int = 1) -> None:
        self.bundle = bundle
        self.scorer = OnnxScorer(bundle, threads=threads)
        self.threshold = self.scorer.threshold
        self._features: dict[str, StreamingFeatures] = {}
        self._columns: dict[tuple[str, ...], list[int]] = {}

    def features(self, block: ReadingBlock) -> np.ndarray:
        cols = self._columns.get(block.channels)
        if cols is None:
            cols = self._columns[block.channels] = columns_for(self.bundle.spec, block.channels)
        state = self._features.get(block.device_id)
        if state is None:
            state = self._features[block.device_id] = StreamingFeatures(self.bundle.spec)
        return state.update(block.values[:, cols])

    def score(self, block: ReadingBlock) -> Scored:
        scores = self.scorer.score(self.features(block))
        return Scored(scores=scores, flags=scores >= self.threshold)

    def score_many(self, blocks: list[ReadingBlock]) -> list[Scored]:
        """Score several devices' blocks with ONE onnxruntime call (the micro-batch)."""
        if not blocks:
            return []
        feats = [self.features(b) for b in blocks]
        scores = self.scorer.score(np.vstack(feats))
        out, i = [], 0
        for f in feats:
            s = scores[i : i + len(f)]
            out.append(Scored(scores=s, flags=s >= self.threshold))
            i += len(f)
        return out
