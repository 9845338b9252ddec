"""Who may connect to the hub's own backend Mosquitto (`edgeflag hub run --start-broker`).

The backend is where device topics live unencrypted, so it must not trust a username: a
local process connecting as ``dev-0001`` would otherwise read and write that device's
namespace, around the front end. The hub keeps one random secret in ``<state>/backend.secret``
(mode 0600); every backend identity (each registered device, as the front end relays it, and
``edgeflag-hub`` for the hub's own services) has the password HMAC-SHA256(secret, username),
and the broker gets a password file of those (Mosquitto's PBKDF2-SHA512 ``$7$`` format) with
anonymous access off. Devices never learn these passwords; they authenticate to the front end.

A device registered while the hub runs is added on its first connection: the file is rewritten
and the broker told to reload it (SIGHUP) before the front end connects the device through.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from hub.statefile import write_private

SECRET_FILE = "backend.secret"
PASSWORD_FILE = "mosquitto.passwd"
PBKDF2_ITERATIONS = 101  # what mosquitto_passwd writes


def mosquitto_password_hash(password: str, salt: bytes | None = None) -> str:
    """A Mosquitto 2.0 password-file hash: ``$7$<iterations>$<salt b64>$<PBKDF2-SHA512 b64>``."""
    salt = salt if salt is not None else os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS, 64)
    return f"$7${PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


class BackendAuth:
    """The backend's credentials, derived from one secret kept in the hub's state directory."""

    def __init__(self, state: Path) -> None:
        self.secret_file = state / SECRET_FILE
        self.password_file = state / PASSWORD_FILE
        self._secret: bytes | None = None
        self._users: set[str] = set()
        self._lock = threading.Lock()

    @property
    def exists(self) -> bool:
        return self.secret_file.exists()

    def _key(self) -> bytes:
        if self._secret is None:
            if not self.secret_file.exists():
                self.secret_file.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(secrets.token_hex(32))
            self._secret = bytes.fromhex(self.secret_file.read_text().strip())
        return self._secret

    def password(self, user: str) -> str:
        """The backend password of `user` (created with the secret on first use)."""
        return hmac.new(self._key(), user.encode(), hashlib.sha256).hexdigest()

    def write_password_file(self, users: Iterable[str]) -> None:
        """(Re)write the broker's password file for exactly these users (0600, atomically)."""
        with self._lock:
            self._users = set(users)
            write_private(self.password_file,
                          "".join(f"{u}:{mosquitto_password_hash(self.password(u))}\n" for u in sorted(self._users)))

    def login_for(self, reload_broker: Callable[[], None]) -> Callable[[str], str]:
        """A front-end hook: the backend password of a device, adding it to the file (and reloading
        the broker) the first time that device is seen."""

        def login(user: str) -> str:
            if user not in self._users:
                self.write_password_file(self._users | {user})
                reload_broker()
            return self.password(user)

        return login


def sighup(pid: int, settle_s: float = 0.2) -> Callable[[], None]:
    """Reload a Mosquitto process's configuration (password file included) and give it a moment."""

    def reload() -> None:
        os.kill(pid, signal.SIGHUP)
        time.sleep(settle_s)

    return reload
