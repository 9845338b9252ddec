"""A private Mosquitto on a free loopback port: the local broker for tests, the demo and the hub.

Every MQTT test talks to a real broker started by this (nothing is mocked).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from hub.mqttwire import MAX_PACKET


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str:
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if cand and Path(cand).exists():
            return cand
    raise RuntimeError("mosquitto is not installed (apt-get install mosquitto, or run 'make test' as root)")


@dataclass(frozen=True)
class TlsListener:
    """A second, TLS listener (e.g. 127.0.0.5:8883 for the azure-iot-device SDK, whose port is fixed)."""

    host: str
    port: int
    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = False

    def conf(self) -> str:
        return (f"listener {self.port} {self.host}\ncafile {self.ca_file}\ncertfile {self.cert_file}\n"
                f"keyfile {self.key_file}\nrequire_certificate {'true' if self.require_certificate else 'false'}\n"
                "allow_anonymous true\n")


def free_loopback_address(port: int) -> str:
    """A 127.x.y.z address whose `port` is free (loopback offers many; tests need not collide)."""
    import random

    for _ in range(200):
        host = f"127.{random.randint(1, 254)}.{random.randint(0, 254)}.{random.randint(1, 254)}"
        with socket.socket() as s:
            try:
                s.bind((host, port))
                return host
            except OSError:
                continue
    raise RuntimeError(f"no free loopback address for port {port}")


@dataclass(frozen=True)
class BrokerLimits:
    """Mosquitto's per-client caps (each applies to every client on its own; 0 = no limit).

    The hub's defaults bound what one client can make the broker hold: a subscriber that stops reading
    (or a persistent session that stays away) costs at most `max_queued_bytes`, no packet is larger
    than `max_packet_size` (the front end's own limit plus the fixed header), and at most
    `max_inflight_messages` QoS 1 messages are unacknowledged per client. What is over the queue cap
    is dropped by the broker for that client only (Mosquitto logs it); the hub's ingest keeps far
    below it as long as it runs, and the hub exits when its ingest dies (`Hub.dead_parts`).
    """

    max_inflight_messages: int = 10_000
    max_queued_messages: int = 1_000_000
    max_queued_bytes: int = 1 << 30
    max_packet_size: int = MAX_PACKET + 5  # fixed header: 1 type byte + up to 4 length bytes

    def conf(self) -> str:
        return (f"max_inflight_messages {self.max_inflight_messages}\n"
                f"max_queued_messages {self.max_queued_messages}\n"
                f"max_queued_bytes {self.max_queued_bytes}\n"
                + (f"max_packet_size {self.max_packet_size}\n" if self.max_packet_size else ""))


class Broker:
    """One Mosquitto process on 127.0.0.1:port; start/stop/restart keep the same port."""

    def __init__(self, workdir: Path, port: int | None = None, host: str = "127.0.0.1",
                 extra_conf: str = "", persistence: bool = False, tls: TlsListener | None = None,
                 password_file: Path | None = None, limits: BrokerLimits | None = None) -> None:
        """`password_file`: only the users in it (Mosquitto format) may connect; otherwise anyone.
        `limits`: per-client queue and packet caps (default: none, as a test broker wants)."""
        self.workdir = workdir
        self.host = host
        self.port = port or free_port(host)
        self.conf = workdir / f"mosquitto-{self.port}.conf"
        self.log = workdir / f"mosquitto-{self.port}.log"
        self.extra_conf = extra_conf
        self.persistence = persistence
        self.tls = tls
        self.password_file = password_file
        self.limits = limits or BrokerLimits(max_inflight_messages=0, max_queued_messages=1_000_000,
                                             max_queued_bytes=0, max_packet_size=0)
        self.proc: subprocess.Popen[bytes] | None = None

    def write_conf(self) -> None:
        if self.persistence:  # sessions and queued QoS 1 messages survive a restart
            persist = (f"persistence true\npersistence_location {self.workdir}/\n"
                       f"persistence_file mosquitto-{self.port}.db\nautosave_interval 1\n")
        else:
            persist = "persistence false\n"
        # as root, mosquitto drops to user "mosquitto", which cannot write into a private temp dir
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(
            user + f"listener {self.port} {self.host}\n"
            + (f"allow_anonymous false\npassword_file {self.password_file.resolve()}\n" if self.password_file
               else "allow_anonymous true\n")
            + persist
            + self.limits.conf()
            + "log_type error\nlog_type warning\n"
            f"log_dest file {self.log}\n" + self.extra_conf + (self.tls.conf() if self.tls else "")
        )

    def start(self, timeout: float = 10.0) -> None:
        self.write_conf()
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {err} {self._log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.host}:{self.port} within {timeout}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _log_tail(self) -> str:
        try:
            return self.log.read_text()[-2000:]
        except OSError:
            return ""
