"""Ed25519 signatures over a manifest's canonical bytes (optional but recommended).

The manifest's sha256 binds model.onnx to the manifest; the signature binds the
manifest (threshold, feature spec, version …) to whoever holds the private key.
A device configured with a trusted public key refuses unsigned or badly signed bundles.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

from contracts.manifest import ModelManifest
from models.errors import ModelError


def generate_keypair(private_path: Path, public_path: Path) -> str:
    """Write a new Ed25519 key pair (PEM); return the key id (first 16 hex of sha256 of the public key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    private_path.chmod(0o600)
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    public_path.write_bytes(pub)
    return key_id(pub)


def key_id(public_pem: bytes) -> str:
    return hashlib.sha256(public_pem.strip()).hexdigest()[:16]


def load_signing_key(private_key_path: Path) -> Any:
    """The Ed25519 private key in a PEM file; ModelError saying why when it is missing, unreadable or
    another kind of key. Jobs call it before their work, so a bad key fails in seconds, not after
    training."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(private_key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:  # TypeError: an encrypted key (no password given)
        raise ModelError(f"cannot read signing key {private_key_path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ModelError(f"{private_key_path} is not an Ed25519 private key")
    return key


def sign(manifest: ModelManifest, private_key_path: Path) -> ModelManifest:
    from cryptography.hazmat.primitives import serialization

    key = load_signing_key(private_key_path)
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    sig = key.sign(manifest.canonical_bytes())
    return manifest.with_signature({"alg": "ed25519", "key_id": key_id(pub), "value": base64.b64encode(sig).decode()})


def check_signature(manifest: ModelManifest, public_key_path: Path) -> str | None:
    """Return None if the signature verifies with the key, else the reason it does not."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not manifest.signature:
        return "bundle is not signed but a trusted key is configured"
    if manifest.signature.get("alg") != "ed25519":
        return f"unsupported signature algorithm {manifest.signature.get('alg')!r}"
    try:
        pem = public_key_path.read_bytes()
        pub = serialization.load_pem_public_key(pem)
    except (OSError, ValueError) as exc:
        return f"cannot read trusted key {public_key_path}: {exc}"
    if not isinstance(pub, Ed25519PublicKey):
        return f"{public_key_path} is not an Ed25519 public key"
    try:
        pub.verify(base64.b64decode(manifest.signature.get("value", "")), manifest.canonical_bytes())
    except (InvalidSignature, ValueError):
        return f"signature does not verify with key {key_id(pem)}"
    return None
