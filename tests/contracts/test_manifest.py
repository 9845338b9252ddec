from __future__ import annotations

import pytest

from contracts import ContractError, ModelManifest


def manifest(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "name": "pump", "version": 1, "created": "2026-01-01T00:00:00+00:00", "form": "fused-tree-ensemble",
        "sha256": "c" * 64, "model_bytes": 10, "opsets": {"": 17}, "input_name": "features",
        "output_name": "score", "feature_spec": {}, "feature_hash": "d" * 64, "threshold": 0.5,
    }
    base.update(kw)
    return base


def test_a_manifest_round_trips_through_json() -> None:
    m = ModelManifest.from_dict(manifest())
    assert ModelManifest.from_json(m.to_json()) == m


@pytest.mark.parametrize(
    ("patch", "field"),
    [({"version": 0}, "version"), ({"form": "pickle"}, "form"), ({"sha256": "x"}, "sha256"),
     ({"name": "a b"}, "name"), ({"v": 9}, "v"), ({"surprise": 1}, "surprise")],
)
def test_bad_manifests_are_rejected_naming_the_field(patch: dict[str, object], field: str) -> None:
    with pytest.raises(ContractError) as err:
        ModelManifest.from_dict(manifest(**patch))
    assert err.value.field == field


def test_the_signature_covers_everything_but_itself() -> None:
    m = ModelManifest.from_dict(manifest())
    signed = m.with_signature({"alg": "ed25519", "value": "x"})
    assert signed.canonical_bytes() == m.canonical_bytes()
    assert ModelManifest.from_dict(manifest(threshold=0.9)).canonical_bytes() != m.canonical_bytes()
