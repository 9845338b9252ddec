"""The model slot: the model in use, one waiting to take over, and the one before (for rollback).

The control thread offers a prepared model (`offer`), changes the threshold (`set_threshold`) or asks
to go back (`rollback`); the ingest thread calls `swap()` between micro-batches, so a batch is always
scored by one model and one threshold from start to end. Guarantees:
- `swap()` is the only place the model in use changes; it returns the new bundle (None when nothing changed).
- A swap to a new stage carries the per-device feature state over (`ScoringStage.adopt_state`), so
  rolling features do not restart at a model change, also when the new model computes other features
  from the same channels (its windows are rebuilt from the readings the old ones hold).
- `rollback()` makes the previous model the pending one; a second rollback without a swap in between
  fails (there is one previous model, not a history).
- A threshold override (from the twin) survives model swaps until it is set back to None (the bundle's).
"""

from __future__ import annotations

import threading
from dataclasses import replace

from contracts.telemetry import ModelLineage
from edge_agent.rollout import RolloutError
from edge_agent.scoring import ScoringStage
from models.bundle import Bundle


class ModelSlot:
    def __init__(self, bundle: Bundle, stage: ScoringStage) -> None:
        self.bundle, self.stage = bundle, stage
        self._pending: tuple[Bundle, ScoringStage] | None = None
        self._previous: tuple[Bundle, ScoringStage] | None = None
        self._threshold: float | None = None
        self._lock = threading.Lock()

    @property
    def threshold(self) -> float:
        """The threshold in effect."""
        return self.stage.threshold

    def lineage(self) -> ModelLineage:
        """The lineage every message carries: the bundle's, with the threshold in effect."""
        return replace(self.bundle.lineage, threshold=self.stage.threshold)

    def offer(self, bundle: Bundle, stage: ScoringStage) -> None:
        """Use this model from the next micro-batch on (replaces a model offered but not yet in use)."""
        with self._lock:
            self._pending = (bundle, stage)

    def set_threshold(self, threshold: float | None) -> None:
        """Flag at `threshold` from the next micro-batch on; None goes back to the bundle's own."""
        with self._lock:
            self._threshold = threshold
            if self._pending is None:
                self._pending = (self.bundle, self.stage)  # same model, new threshold

    def rollback(self) -> Bundle:
        """Make the model used before the last swap the pending one; RolloutError when there is none."""
        with self._lock:
            if self._previous is None:
                raise RolloutError("no previous model to roll back to")
            self._pending, self._previous = self._previous, None
            return self._pending[0]

    def swap(self) -> Bundle | None:
        """On the ingest thread, between batches: put the pending model (or threshold) in effect."""
        with self._lock:
            pending, self._pending = self._pending, None
            override = self._threshold
        if pending is None:
            return None
        bundle, stage = pending
        if stage is not self.stage:
            stage.adopt_state(self.stage)
            self._previous = (self.bundle, self.stage)
        self.bundle, self.stage = bundle, stage
        stage.threshold = override if override is not None else float(bundle.manifest.threshold)
        return bundle
