#!/usr/bin/env bash
# Runs the whole test suite. Installs what the tests need on Debian (Mosquitto, the
# MQTT broker the end-to-end tests start themselves) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "installing ${need[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo test --workspace "$@"
