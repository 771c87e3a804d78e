"""An operator's consumer: subscribes to every edgeinfer topic over MQTT 5 and validates each
payload against its JSON Schema in docs/telemetry/. One JSON line per message on stdout:
{"topic", "level", "seq", "type", "retain", "props", "valid", "error"}. Runs until killed.

usage: consumer.py HOST PORT PREFIX SCHEMA_DIR
"""
import json
import os
import sys
import time

import jsonschema
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes

host, port, prefix, schema_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
validators = {}
for level in ["status", "latency", "drift", "accuracy", "gpu", "events"]:
    with open(os.path.join(schema_dir, f"{level}.schema.json")) as f:
        schema = json.load(f)
    jsonschema.Draft202012Validator.check_schema(schema)
    validators[level] = jsonschema.Draft202012Validator(schema)


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def on_connect(client, userdata, flags, reason_code, properties):
    client.subscribe(f"{prefix}/#", qos=1)
    emit({"connected": True})


def on_message(client, userdata, msg):
    level = msg.topic.rsplit("/", 1)[-1]
    out = {"topic": msg.topic, "level": level, "retain": bool(msg.retain), "dup": bool(msg.dup), "valid": False}
    props = getattr(msg.properties, "UserProperty", None) or []
    out["props"] = {k: v for k, v in props}
    out["expiry"] = getattr(msg.properties, "MessageExpiryInterval", None)
    try:
        payload = json.loads(msg.payload)
        out["seq"] = payload.get("seq")
        out["type"] = payload.get("type")
        out["state"] = payload.get("state")
        out["features"] = payload.get("features") if level == "events" else None
        out["payload"] = payload
        v = validators.get(level)
        if v is None:
            out["error"] = f"unknown topic level {level!r}"
        else:
            errors = sorted(v.iter_errors(payload), key=lambda e: list(e.path))
            if errors:
                out["error"] = "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:3])
            else:
                out["valid"] = True
    except Exception as e:  # a payload that is not JSON is a finding, not a crash
        out["error"] = f"not JSON: {e}"
    emit(out)


client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"consumer-{prefix.replace('/', '-')}", protocol=mqtt.MQTTv5)
client.on_connect = on_connect
client.on_message = on_message
# A persistent session: messages published while this consumer reconnects (after a broker
# restart) are queued for it, as an operator's collector would configure it.
from paho.mqtt.properties import Properties

props = Properties(PacketTypes.CONNECT)
props.SessionExpiryInterval = 3600
# paho's reconnect back-off starts at 1 s and doubles up to 120 s: after a broker restart the
# consumer would come back long after the replay; an operator's collector retries sooner.
client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
client.connect(host, port, keepalive=30, clean_start=False, properties=props)
# paho raises when a reconnect is refused (the broker is down in the outage test): retry.
while True:
    try:
        client.loop_forever(retry_first_connection=True)
        break
    except OSError:
        time.sleep(0.1)
