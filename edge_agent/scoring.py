"""The scoring stage: per-device rolling features + ONNX scoring, one micro-batch at a time.

Guarantees: a device's readings must arrive in seq order; `score_many` returns one score
and one flag per reading, identical to scoring each device's whole stream at once
(features are chunking-invariant, see models.features). Flags are ``score >= threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from contracts.block import ReadingBlock
from models.bundle import Bundle
from models.features import StreamingFeatures, columns_for, update_many
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
        self.scorer_threads = threads
        self.scorer = OnnxScorer(bundle, threads=threads)
        self.threshold = self.scorer.threshold
        self.recent: np.ndarray | None = None  # the last micro-batch's features (canary input for rollouts)
        self._features: dict[str, StreamingFeatures] = {}
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
            res = update_many([self._state(blocks[i].device_id) for i in now],
                              [blocks[i].values[:, self._cols(blocks[i])] for i in now])
            for i, r in zip(now, res, strict=True):
                out[i] = r
            todo = later
        return [o for o in out if o is not None]

    def adopt_state(self, other: ScoringStage) -> None:
        """Keep the devices' rolling windows across a model swap when the feature spec is the same."""
        if other.bundle.spec.hash == self.bundle.spec.hash:
            self._features = other._features

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
