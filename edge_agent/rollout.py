"""Model rollout: fetch a bundle named by a desired property, verify it, canary it.

Spec (the `model` desired property): ``{"version": 3, "url": "file:///models/pump/v0003"
| "http(s)://host/path/v0003", "sha256": "<sha256 of model.onnx>"}``. The bundle is copied
into ``<state_dir>/models/v<version>-<sha12>/`` (for http(s): ``<url>/manifest.json`` and
``<url>/model.onnx``), verified by `models.bundle.load_bundle` (hashes, feature spec,
signature when a trusted key is configured, onnxruntime load), checked against the spec
(version, sha256), and canaried: a batch of feature rows must score to finite numbers of
the right shape. Only then is it offered for the swap. Any failure raises RolloutError
with the reason, and the agent keeps its current model.

The canary's rows are the new model's own features: the current model's recent feature rows when the
feature spec is the same (same hash), else the new spec's features computed from the devices' rolling
windows (the last readings, in the current model's channels), so a bundle with other features (another
algorithm, more or fewer of them, other floors) is tested on what it will compute, not refused for the
width of the old rows (before December 2026 a rollout from a four-feature model to a five-feature one
failed its canary). With no window yet (no reading since start), rows of zeros.
"""

from __future__ import annotations

import shutil
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from contracts.manifest import MANIFEST_FILE, MODEL_FILE
from edge_agent.errors import AgentError
from edge_agent.scoring import ScoringStage
from models.bundle import Bundle, load_bundle
from models.errors import ModelError
from models.features import columns_for, compute_features

MAX_BUNDLE_BYTES = 64 * 1024 * 1024
MAX_MODEL_VERSION = 2**31 - 1
DOWNLOAD_DEADLINE_S = 120.0  # a whole bundle download (manifest + model), however slowly the server sends


class RolloutError(AgentError):
    """Raised when a rollout spec is invalid or the bundle it names fails download, verification or canary."""


def parse_spec(spec: Any) -> tuple[int, str, str]:
    if not isinstance(spec, Mapping):
        raise RolloutError("model: must be an object {version, url, sha256}")
    try:
        version, url, sha = spec["version"], spec["url"], spec["sha256"]
    except KeyError:
        raise RolloutError("model: needs version (int), url and sha256") from None
    if type(version) is not int or not 1 <= version <= MAX_MODEL_VERSION:
        raise RolloutError(f"model.version: must be an integer in 1..{MAX_MODEL_VERSION}, got {str(version)[:40]}")
    if not isinstance(url, str) or not isinstance(sha, str) or len(url) > 4096:
        raise RolloutError("model: url and sha256 must be strings (url at most 4096 characters)")
    sha = sha.lower()
    if urllib.parse.urlparse(url).scheme not in ("file", "http", "https"):
        raise RolloutError(f"model.url: scheme must be file, http or https, got {url!r}")
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise RolloutError("model.sha256: must be 64 hex digits")
    return version, url, sha


def _download(url: str, deadline: float) -> bytes:
    """GET at most MAX_BUNDLE_BYTES + 1 bytes, all of it before `deadline` (time.monotonic()): a server
    that drips bytes cannot hold the control plane beyond it (the socket timeout alone would not stop it)."""
    chunks: list[bytes] = []
    got = 0
    with urllib.request.urlopen(url, timeout=max(1.0, min(30.0, deadline - time.monotonic()))) as resp:
        while got <= MAX_BUNDLE_BYTES:
            if time.monotonic() > deadline:
                raise RolloutError(f"download of {url[:200]} did not finish within the rollout deadline")
            chunk = resp.read1(min(65536, MAX_BUNDLE_BYTES + 1 - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    return b"".join(chunks)


def fetch(url: str, dest: Path, *, timeout_s: float = DOWNLOAD_DEADLINE_S) -> Path:
    """Copy or download a bundle directory into dest (a fresh directory), within `timeout_s` in all."""
    deadline = time.monotonic() + timeout_s
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    parsed = urllib.parse.urlparse(url)
    for name in (MANIFEST_FILE, MODEL_FILE):
        try:
            if parsed.scheme == "file":
                src = Path(urllib.parse.unquote(parsed.path)) / name
                if src.stat().st_size > MAX_BUNDLE_BYTES:
                    raise RolloutError(f"{name} is larger than {MAX_BUNDLE_BYTES} bytes")
                shutil.copyfile(src, dest / name)
            else:
                data = _download(url.rstrip("/") + "/" + name, deadline)
                if len(data) > MAX_BUNDLE_BYTES:
                    raise RolloutError(f"{name} is larger than {MAX_BUNDLE_BYTES} bytes")
                (dest / name).write_bytes(data)
        except (OSError, ValueError) as exc:  # ValueError: a URL urllib cannot use
            raise RolloutError(f"cannot fetch {name} from {url[:200]}: {exc}") from None
    return dest


def prepare(spec: Any, state_dir: Path, *, trusted_key: Path | None, current: ScoringStage,
            canary: np.ndarray | None) -> tuple[Bundle, ScoringStage]:
    """Fetch, verify and canary the bundle a spec names; returns it and a ready scoring stage."""
    version, url, sha = parse_spec(spec)
    path = fetch(url, state_dir / "models" / f"v{version:04d}-{sha[:12]}")
    try:
        bundle = load_bundle(path, trusted_key=trusted_key)
    except ModelError as exc:
        raise RolloutError(f"bundle rejected: {exc}") from None
    if bundle.manifest.sha256 != sha:
        raise RolloutError(f"bundle sha256 {bundle.manifest.sha256[:12]}… is not the {sha[:12]}… the rollout named")
    if bundle.manifest.version != version:
        raise RolloutError(f"bundle is version {bundle.manifest.version}, the rollout named {version}")
    if bundle.spec.channels != current.bundle.spec.channels and not set(bundle.spec.channels) <= set(
            current.bundle.spec.channels):
        raise RolloutError("bundle needs channels the current readings do not carry")
    stage = ScoringStage(bundle, threads=current.scorer_threads)
    rows = canary_rows(bundle, current, canary)
    try:
        scores = stage.scorer.score(rows)
    except ModelError as exc:
        raise RolloutError(f"canary failed: {exc}") from None
    if scores.shape != (len(rows),) or not np.isfinite(scores).all():
        raise RolloutError("canary failed: scores are not finite or have the wrong shape")
    return bundle, stage


#: Devices whose windows feed a canary when the feature spec changes (each gives its window's rows).
CANARY_DEVICES = 4


def canary_rows(bundle: Bundle, current: ScoringStage, recent: np.ndarray | None) -> np.ndarray:
    """Feature rows for the new bundle's canary (see the module docstring)."""
    spec = bundle.spec
    if spec.hash == current.bundle.spec.hash:
        if recent is not None and len(recent):
            return recent
        return np.zeros((8, spec.n_features))
    cols = columns_for(spec, current.bundle.spec.channels)
    windows = list(current.windows().values())[:CANARY_DEVICES]
    rows = [compute_features(spec, w[:, cols]) for w in windows if np.isfinite(w).all()]
    return np.vstack(rows) if rows else np.zeros((8, spec.n_features))
