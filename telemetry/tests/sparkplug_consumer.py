"""A Sparkplug host's view of edgeinfer: subscribes to spBv1.0/<group>/# over MQTT 3.1.1 and
decodes every payload with protobuf classes compiled here, at start, from the committed
telemetry/proto/sparkplug_b.proto (grpcio-tools), independently of the Rust encoder. One JSON
line per message on stdout:
{"topic", "kind", "edge", "device", "qos", "retain", "seq", "timestamp",
 "metrics": [{"name", "alias", "datatype", "timestamp", "historical", "null", "value"}],
 "error"}. Runs until killed.

usage: sparkplug_consumer.py HOST PORT GROUP PROTO_FILE [EDGE_NODE]
With EDGE_NODE it also acts as a host that joined late: once subscribed, it writes
'Node Control/Rebirth' = true to that node's NCMD, as a Sparkplug host does to learn a node's
metrics without waiting for its next connect.
"""
import importlib
import json
import os
import shutil
import sys
import tempfile
import time

import paho.mqtt.client as mqtt
from grpc_tools import protoc
from paho.mqtt.enums import CallbackAPIVersion

host, port, group, proto_file = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
rebirth_edge = sys.argv[5] if len(sys.argv) > 5 else None

out_dir = tempfile.mkdtemp(prefix="spb-proto-")
proto_dir, proto_name = os.path.split(os.path.abspath(proto_file))
rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out_dir}", os.path.join(proto_dir, proto_name)])
if rc != 0:
    sys.exit(f"protoc failed on {proto_file}: {rc}")
sys.path.insert(0, out_dir)
pb = importlib.import_module(proto_name[: -len(".proto")] + "_pb2")
# Loaded: the generated file is not needed any more (this process is killed, not stopped).
shutil.rmtree(out_dir, ignore_errors=True)


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def metric_json(m):
    kind = m.WhichOneof("value")
    return {
        "name": m.name if m.HasField("name") else None,
        "alias": m.alias if m.HasField("alias") else None,
        "datatype": m.datatype if m.HasField("datatype") else None,
        "timestamp": m.timestamp if m.HasField("timestamp") else None,
        "historical": m.is_historical if m.HasField("is_historical") else None,
        "null": m.is_null if m.HasField("is_null") else None,
        "value": getattr(m, kind) if kind and kind != "bytes_value" else None,
    }


def on_connect(client, userdata, flags, reason_code, properties):
    client.subscribe(f"spBv1.0/{group}/#", qos=1)
    emit({"connected": True})


def on_subscribe(client, userdata, mid, reason_codes, properties):
    if rebirth_edge is None:
        return
    cmd = pb.Payload()
    cmd.timestamp = int(time.time() * 1000)
    m = cmd.metrics.add()
    m.name = "Node Control/Rebirth"
    m.datatype = pb.Boolean
    m.boolean_value = True
    # NCMD: QoS 0, not retained (tck-id-topics-ncmd-mqtt).
    client.publish(f"spBv1.0/{group}/NCMD/{rebirth_edge}", cmd.SerializeToString(), qos=0, retain=False)
    emit({"rebirth_sent": True})


def on_message(client, userdata, msg):
    parts = msg.topic.split("/")
    out = {
        "topic": msg.topic,
        "kind": parts[2] if len(parts) > 2 else None,
        "edge": parts[3] if len(parts) > 3 else None,
        "device": parts[4] if len(parts) > 4 else None,
        "qos": msg.qos,
        "retain": bool(msg.retain),
        "at": time.time(),
    }
    try:
        p = pb.Payload()
        p.ParseFromString(msg.payload)
        out["seq"] = p.seq if p.HasField("seq") else None
        out["timestamp"] = p.timestamp if p.HasField("timestamp") else None
        out["metrics"] = [metric_json(m) for m in p.metrics]
    except Exception as e:  # a payload that does not decode is a finding, not a crash
        out["error"] = f"not a Sparkplug B payload: {e}"
    emit(out)


client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"spb-host-{group}-{os.getpid()}", protocol=mqtt.MQTTv311)
client.on_connect = on_connect
client.on_message = on_message
client.on_subscribe = on_subscribe
client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
client.connect(host, port, keepalive=30)
while True:
    try:
        client.loop_forever(retry_first_connection=True)
        break
    except OSError:
        time.sleep(0.1)
