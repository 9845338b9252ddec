from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from contracts.block import ReadingBlock
from models.bundle import load_bundle, sha256_bytes
from models.errors import BundleError
from models.registry import Registry
from models.signing import generate_keypair, load_signing_key, sign


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_a_fresh_bundle_verifies_and_carries_its_lineage(trained_small: tuple[Path, dict[str, ReadingBlock]]) -> None:
    path, _ = trained_small
    bundle = load_bundle(path)
    assert bundle.manifest.form == "fused-tree-ensemble"
    assert bundle.lineage.sha256 == sha256_bytes((path / "model.onnx").read_bytes())
    assert bundle.lineage.feature_hash == bundle.spec.hash


def test_flipping_one_byte_of_the_model_is_rejected(trained_small, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    b = copy_bundle(trained_small[0], tmp_path / "b")
    raw = bytearray((b / "model.onnx").read_bytes())
    raw[len(raw) // 3] ^= 0xFF
    (b / "model.onnx").write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(b)


def test_a_manifest_edited_by_hand_is_rejected(trained_small, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    b = copy_bundle(trained_small[0], tmp_path / "b")
    m = json.loads((b / "manifest.json").read_text())
    m["feature_spec"]["floors"][0] *= 2
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="feature spec hash"):
        load_bundle(b)


def test_a_model_that_does_not_load_is_rejected_even_with_a_matching_hash(trained_small, tmp_path):  # type: ignore[no-untyped-def]
    b = copy_bundle(trained_small[0], tmp_path / "b")
    junk = b"not an onnx model"
    (b / "model.onnx").write_bytes(junk)
    m = json.loads((b / "manifest.json").read_text())
    m["sha256"], m["model_bytes"] = sha256_bytes(junk), len(junk)
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="onnxruntime cannot load"):
        load_bundle(b)


@pytest.mark.parametrize("missing", ["model.onnx", "manifest.json"])
def test_missing_files_are_named(trained_small, tmp_path: Path, missing: str) -> None:  # type: ignore[no-untyped-def]
    b = copy_bundle(trained_small[0], tmp_path / "b")
    (b / missing).unlink()
    with pytest.raises(BundleError, match=f"{missing} missing"):
        load_bundle(b)


def test_signed_bundles_verify_only_with_the_right_key(trained_small, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    b = copy_bundle(trained_small[0], tmp_path / "b")
    generate_keypair(tmp_path / "k1", tmp_path / "k1.pub")
    generate_keypair(tmp_path / "k2", tmp_path / "k2.pub")
    with pytest.raises(BundleError, match="not signed"):
        load_bundle(b, trusted_key=tmp_path / "k1.pub")
    signed = sign(load_bundle(b).manifest, tmp_path / "k1")
    (b / "manifest.json").write_text(signed.to_json())
    assert load_bundle(b, trusted_key=tmp_path / "k1.pub").manifest.signature["alg"] == "ed25519"
    with pytest.raises(BundleError, match="does not verify"):
        load_bundle(b, trusted_key=tmp_path / "k2.pub")
    m = json.loads((b / "manifest.json").read_text())
    m["threshold"] = 0.99  # a raised threshold would hide anomalies: the signature must catch it
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="does not verify"):
        load_bundle(b, trusted_key=tmp_path / "k1.pub")


def test_a_signing_key_that_cannot_sign_is_named_before_any_work(tmp_path: Path) -> None:
    from models.errors import ModelError

    generate_keypair(tmp_path / "k", tmp_path / "k.pub")
    assert load_signing_key(tmp_path / "k") is not None
    (tmp_path / "junk.pem").write_text("not a key")
    for path, why in ((tmp_path / "missing.pem", "cannot read signing key"),
                      (tmp_path / "junk.pem", "cannot read signing key"),
                      (tmp_path / "k.pub", "cannot read signing key")):  # a public key is not a private one
        with pytest.raises(ModelError, match=why):
            load_signing_key(path)


def test_the_registry_assigns_increasing_versions_and_resolves_latest(trained_small, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = load_bundle(trained_small[0])
    reg = Registry(tmp_path / "reg")

    def build(v: int):  # type: ignore[no-untyped-def]
        from dataclasses import replace

        return src.model_bytes, replace(src.manifest, name="pump", version=v)

    p1, p2 = reg.publish("pump", build), reg.publish("pump", build)
    assert (p1.name, p2.name) == ("v0001", "v0002")
    assert reg.versions("pump") == [1, 2]
    assert reg.resolve(tmp_path / "reg") == p2
    assert load_bundle(p2).manifest.version == 2
