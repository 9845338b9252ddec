"""Helper process for the agent fault tests and benchmark: subscribes to telemetry and
records every reading's dedup key. Prints one JSON line with counts when told to stop.

usage: python tests/collector.py PORT OUTFILE [CLIENT_ID]   (stop with SIGTERM)
Writes OUTFILE as JSON: {"messages": m, "readings": r, "keys": [[device, boot, seq, anomaly], ...]},
and while it runs OUTFILE.count: the readings received so far (rewritten every 0.1 s), so a test can
wait until the broker has handed over everything before it stops the collector.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading

import orjson
import paho.mqtt.client as mqtt


def main() -> None:
    port, out = int(sys.argv[1]), sys.argv[2]
    client_id = sys.argv[3] if len(sys.argv) > 3 else "edgeflag-collector"
    keys: list[tuple[str, str, int, bool]] = []
    counts = {"messages": 0, "readings": 0}
    lock = threading.Lock()
    ready = threading.Event()

    def on_connect(c: mqtt.Client, _u: object, _f: object, rc: int) -> None:
        c.subscribe("devices/+/messages/events/#", qos=1)

    def on_subscribe(*_a: object) -> None:
        ready.set()
        print("ready", flush=True)

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        m = orjson.loads(msg.payload)
        with lock:
            counts["messages"] += 1
            counts["readings"] += len(m["readings"])
            dev, boot = m["device_id"], m["boot_id"]
            keys.extend((dev, boot, r["seq"], r["anomaly"]) for r in m["readings"])

    c = mqtt.Client(client_id=client_id, clean_session=False)
    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    c.max_inflight_messages_set(1000)
    c.reconnect_delay_set(0.1, 1.0)
    c.connect_async("127.0.0.1", port, 30)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    c.loop_start()
    while not stop.wait(0.1):
        with lock:
            n = counts["readings"]
        with open(out + ".count.tmp", "w") as fh:
            fh.write(str(n))
        os.replace(out + ".count.tmp", out + ".count")
    with lock, open(out + ".tmp", "w") as fh:
        json.dump({**counts, "keys": keys}, fh)
    os.replace(out + ".tmp", out)
    # What was received is on disk; exit without waiting for paho's network thread, which once did not
    # end within 30 s of SIGTERM in a full-suite run (test_sigterm_flushes_and_exits_cleanly, 3 Dec 2026).
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
