#!/usr/bin/env bash
# Make sure the system packages edgeflag's tests and demo need are present:
#   mosquitto (the real MQTT broker the tests start), and a Java 17+ runtime (local Spark).
# As root, missing ones are installed with apt-get; otherwise we stop and name them.
set -euo pipefail

missing=()
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  missing+=(mosquitto)
fi
java_ok=0
if command -v java >/dev/null 2>&1; then
  ver=$(java -version 2>&1 | awk -F'"' '/version/ {print $2}' | cut -d. -f1)
  if [ "${ver:-0}" -ge 17 ] 2>/dev/null; then java_ok=1; fi
fi
if [ "$java_ok" -eq 0 ]; then
  missing+=(openjdk-17-jre-headless)
fi
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "edgeflag needs these system packages: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing system packages: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The Debian package enables a system-wide broker on 1883; tests start their own on free ports.
if command -v systemctl >/dev/null 2>&1; then systemctl disable --now mosquitto >/dev/null 2>&1 || true; fi
