"""Rollout preparation: fetch (file:// and http://), verify, canary — failures leave the agent untouched."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_agent.rollout import RolloutError, canary_rows, parse_spec, prepare
from edge_agent.scoring import ScoringStage
from models.bundle import load_bundle


@pytest.fixture
def current(trained_small) -> ScoringStage:  # type: ignore[no-untyped-def]
    return ScoringStage(load_bundle(trained_small[0]))


def spec_for(path: Path, url: str) -> dict[str, object]:
    m = json.loads((path / "manifest.json").read_text())
    return {"version": m["version"], "url": url, "sha256": m["sha256"]}


def test_a_bundle_is_fetched_over_http_verified_and_canaried(tmp_path: Path, trained_small, current) -> None:  # type: ignore[no-untyped-def]
    src = trained_small[0]
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(src))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        n = current.bundle.spec.n_features
        bundle, stage = prepare(spec_for(src, url), tmp_path, trusted_key=None, current=current,
                                canary=np.random.default_rng(0).random((16, n)))
    finally:
        server.shutdown()
    assert bundle.manifest.sha256 == load_bundle(src).manifest.sha256
    assert (tmp_path / "models").is_dir() and stage.bundle is bundle


def test_a_bundle_with_other_features_is_canaried_on_its_own_features(tmp_path: Path, trained_small) -> None:  # type: ignore[no-untyped-def]
    """A fleet on a four-feature (v4) model gets a five-feature (v7) one: the canary computes the new
    features from the devices' windows, where it used to feed the old rows and refuse the bundle."""
    from models.registry import Registry
    from models.training.trainer import TrainConfig, export_model, train

    src, blocks = trained_small
    old = train(blocks, TrainConfig(n_estimators=20, features="robust-blocks-v4"))
    old_path = Registry(tmp_path / "reg").publish("old", lambda v: export_model(old, name="old", version=v))
    current = ScoringStage(load_bundle(old_path))
    current.score_many([b.slice(0, 300) for b in blocks.values()])  # windows and recent rows of the old model
    assert current.recent is not None and current.recent.shape[1] == 4
    new = load_bundle(src)
    assert new.spec.n_features == 5 and new.spec.hash != current.bundle.spec.hash
    bundle, stage = prepare(spec_for(src, src.as_uri()), tmp_path, trusted_key=None, current=current,
                            canary=current.recent)
    assert bundle.manifest.sha256 == new.manifest.sha256
    rows = canary_rows(new, current, current.recent)
    # four devices' windows (the current model's, 120 readings each), the new spec's features
    assert rows.shape == (4 * current.bundle.spec.long_window, 5)
    assert np.isfinite(stage.scorer.score(rows)).all()


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"version": 1, "url": "ftp://x/y", "sha256": "0" * 64}, "scheme"),
        ({"version": 1, "url": "file:///nonexistent/bundle", "sha256": "0" * 64}, "cannot fetch"),
        ({"version": "one", "url": "file:///x", "sha256": "0" * 64}, "version"),
        ({"version": 1, "url": "file:///x", "sha256": "xyz"}, "sha256"),
        ("not an object", "object"),
    ],
)
def test_bad_specs_are_refused_with_a_reason(tmp_path: Path, current, spec: object, reason: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RolloutError, match=reason):
        prepare(spec, tmp_path, trusted_key=None, current=current, canary=None)


def test_a_bundle_that_is_not_the_one_named_is_refused(tmp_path: Path, trained_small, current) -> None:  # type: ignore[no-untyped-def]
    src = trained_small[0]
    spec = spec_for(src, src.as_uri())
    with pytest.raises(RolloutError, match="is not the"):
        prepare({**spec, "sha256": "ab" * 32}, tmp_path, trusted_key=None, current=current, canary=None)
    with pytest.raises(RolloutError, match="version"):
        prepare({**spec, "version": 99}, tmp_path, trusted_key=None, current=current, canary=None)
    tampered = tmp_path / "t"
    shutil.copytree(src, tampered)
    raw = bytearray((tampered / "model.onnx").read_bytes())
    raw[-10] ^= 0xFF
    (tampered / "model.onnx").write_bytes(bytes(raw))
    with pytest.raises(RolloutError, match="bundle rejected"):
        prepare(spec_for(src, tampered.as_uri()), tmp_path, trusted_key=None, current=current, canary=None)
    assert parse_spec(spec)[0] == 1


def test_a_server_that_drips_bytes_cannot_hold_the_rollout_past_its_deadline(tmp_path: Path) -> None:
    """Regression: one byte per 10 s kept the socket timeout from firing and blocked the control plane."""
    import time

    from edge_agent.rollout import fetch

    stop = threading.Event()

    class Drip(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            while not stop.is_set():
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.2)

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Drip)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        t = time.monotonic()
        with pytest.raises(RolloutError, match="deadline"):
            fetch(f"http://127.0.0.1:{server.server_address[1]}/v1", tmp_path / "dl", timeout_s=1.5)
        assert time.monotonic() - t < 3.0
    finally:
        stop.set()
        server.shutdown()
