"""A network thread for one paho client that batches writes (paho's external-loop API).

paho's `loop_start()` thread is woken through a socket pair on *every* publish; on a busy
single core that is a context switch and a whole loop iteration per message. Here the
client is driven through its documented external-loop interface instead: paho calls
`on_socket_register_write` only when its write queue goes from empty to non-empty, so this
thread is woken once per burst of publishes, and it alone reads, writes (every queued
packet in one `loop_write`) and keeps the connection alive — exactly one thread touches
the socket, as with `loop_start()`.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from typing import Any

import paho.mqtt.client as mqtt


class NetworkLoop:
    """Runs `client`'s network traffic on a daemon thread until `stop()` or a lost connection.

    Attach before `client.connect()` (so the CONNECT packet wakes it), `start()` after.
    """

    def __init__(self, client: Any, name: str = "edgeflag-uplink-net") -> None:
        self.client = client
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop = threading.Event()
        client.on_socket_register_write = self._on_register_write
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _on_register_write(self, _client: Any, _userdata: Any, _sock: Any) -> None:
        self.wake()

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake is pending anyway) or closed (stopping)
            self._wake_w.send(b"w")

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        client = self.client
        while True:
            sock = client.socket()
            if sock is None:
                return  # disconnected: paho closed the socket and called on_disconnect
            if self._stop.is_set():
                if client.want_write():
                    client.loop_write()  # e.g. the DISCONNECT queued by close()
                return
            wlist = [sock] if client.want_write() else []
            # TLS: records already decrypted inside the SSL object do not make the socket readable.
            buffered = sock.pending() if hasattr(sock, "pending") else 0
            try:
                readable, _, _ = select.select([sock, self._wake_r], wlist, [], 0.0 if buffered else 1.0)
            except (OSError, ValueError):  # the socket was closed under us
                return
            if buffered and sock not in readable:
                readable.append(sock)
            if self._wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    self._wake_r.recv(4096)
            rc = client.loop_read() if sock in readable else mqtt.MQTT_ERR_SUCCESS
            if rc == mqtt.MQTT_ERR_SUCCESS and client.want_write():
                rc = client.loop_write()
            if rc == mqtt.MQTT_ERR_SUCCESS:
                rc = client.loop_misc()  # keepalive
            if rc != mqtt.MQTT_ERR_SUCCESS:
                return

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued (a DISCONNECT, say), stop the thread, release the wake-up pair."""
        self._stop.set()
        self.wake()
        if threading.current_thread() is not self._thread and self._thread.is_alive():
            self._thread.join(timeout)
        self._wake_r.close()
        self._wake_w.close()
