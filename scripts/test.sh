#!/usr/bin/env bash
# Runs the whole test suite. Installs what the tests need on Debian (Mosquitto, the
# MQTT broker the end-to-end tests start themselves; Redis, the shared store of the
# cluster tests; libcoap3-bin, a CoAP/DTLS peer;
# Node.js, npm and Python's venv for the interop tests; Chromium and its WebDriver for the
# console's browser test) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
[ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
# An MQTT 5 application that sets a message expiry on its commands.
[ -x /usr/bin/mosquitto_pub ] || need+=(mosquitto-clients)
# Several nodes on one Redis (tests/e2e_cluster.rs starts its own redis-server).
[ -x /usr/bin/redis-server ] || need+=(redis-server)
# DTLS and block-wise interop: libcoap's clients (OpenSSL and GnuTLS builds);
# openssl makes the test certificates.
command -v coap-client-openssl >/dev/null || need+=(libcoap3-bin)
command -v openssl >/dev/null || need+=(openssl)
# The interop tests run registry peers: node + npm, and a Python venv.
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
# The web console's browser test (tests/console.rs): headless Chromium over WebDriver.
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "installing ${need[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Peers from the package registries for the interop tests (tests/interop_*.rs):
# npm's lwm2m-node-lib, PyPI's emqxlwm2m and senml. Installed once; each stamp records the
# lock/requirements file it was installed from, so a change reinstalls.
interop=tests/interop
if ! cmp -s "$interop/node/package-lock.json" "$interop/node/node_modules/.interop-lock" 2>/dev/null; then
    echo "installing $interop/node (npm ci)" >&2
    (cd "$interop/node" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    cp "$interop/node/package-lock.json" "$interop/node/node_modules/.interop-lock"
fi
venv="$interop/python/.venv"
if ! cmp -s "$interop/python/requirements.txt" "$venv/.interop-requirements" 2>/dev/null; then
    echo "installing $venv (pip install -r requirements.txt)" >&2
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$interop/python/requirements.txt"
    cp "$interop/python/requirements.txt" "$venv/.interop-requirements"
fi

cargo test --workspace "$@"
