#!/usr/bin/env bash
# Sets up what the telemetry tests need, idempotently and quickly when present:
#   - mosquitto from Debian (the broker the MQTT integration tests start on a free
#     loopback port): EDGEINFER_TEST_MOSQUITTO=/usr/sbin/mosquitto
#   - .cache/venv-mqtt, a venv with pinned paho-mqtt and jsonschema: the consumer that
#     subscribes to every topic and validates each payload against docs/telemetry/*.json;
#     and protobuf with grpcio-tools, with which the Sparkplug consumer compiles the committed
#     telemetry/proto/sparkplug_b.proto and decodes every Sparkplug B payload itself:
#       EDGEINFER_TEST_MQTT_PYTHON=$repo/.cache/venv-mqtt/bin/python
# It exports nothing: tools/ci/test.sh sets those variables.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="${PYTHON:-python3}"
venv="$repo/.cache/venv-mqtt"
requirements=("paho-mqtt==2.1.0" "jsonschema==4.23.0" "protobuf==5.29.4" "grpcio-tools==1.71.0")
stamp="$venv/.edgeinfer-provisioned"

log() { printf 'provision-telemetry: %s\n' "$*" >&2; }

if ! command -v mosquitto >/dev/null && [[ ! -x /usr/sbin/mosquitto ]]; then
  log "installing mosquitto from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mosquitto >/dev/null
  # Tests start their own broker; the packaged service must not hold port 1883.
  systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi

if ! [[ -x $venv/bin/python && -f $stamp && "$(<"$stamp")" == "${requirements[*]}" ]]; then
  log "creating ${venv#"$repo"/} with ${requirements[*]}"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input "${requirements[@]}"
  printf '%s' "${requirements[*]}" >"$stamp"
fi
