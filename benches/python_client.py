"""Load generator for benches/python_client.sh: one JSON line of figures per run.

  python_client.py sync   SOCKET DURATION WARMUP        Client.predict, concurrency 1
  python_client.py async  SOCKET DURATION WARMUP WINDOW AsyncClient, WINDOW in flight
  python_client.py triton HOST:PORT DURATION WARMUP     tritonclient.http over KServe v2
  python_client.py codec  N                             PREDICT encode + PREDICT_RESPONSE
                                                        decode: by hand vs `protobuf`

All send one row of churn (20 f32 features) to the model `churn`.
"""

import asyncio
import json
import sys
import time

import numpy as np

ROW = (np.arange(20, dtype=np.float32) / 20).reshape(1, 20)


def figures(lat_ns, seconds, errors=0):
    lat = sorted(lat_ns)
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] / 1e3
    return {"requests": len(lat), "errors": errors, "p50_us": q(0.5), "p90_us": q(0.9),
            "p99_us": q(0.99), "max_us": lat[-1] / 1e3, "throughput_rps": len(lat) / seconds}


def timed(call, duration, warmup):
    end_warm = time.monotonic() + warmup
    while time.monotonic() < end_warm:
        call()
    lat = []
    t_end = time.monotonic() + duration
    clock = time.perf_counter_ns
    while True:
        t = clock()
        call()
        lat.append(clock() - t)
        if len(lat) % 256 == 0 and time.monotonic() > t_end:
            break
    return figures(lat, duration)


def sync(sock, duration, warmup):
    from edgeinfer import Client
    c = Client(unix=sock)
    inputs = {"float_input": ROW}
    out = c.predict("churn", inputs)
    assert out["probabilities"].shape == (1, 2)
    return timed(lambda: c.predict("churn", inputs), duration, warmup)


def pipelined(sock, duration, warmup, window):
    from edgeinfer import AsyncClient

    async def run():
        async with AsyncClient(unix=sock) as c:
            inputs = {"float_input": ROW}
            await c.predict("churn", inputs)
            stop = time.monotonic() + warmup + duration
            start_count = [None]
            done = [0]

            async def worker():
                while time.monotonic() < stop:
                    await c.predict("churn", inputs)
                    done[0] += 1

            async def mark():
                await asyncio.sleep(warmup)
                start_count[0] = (done[0], time.monotonic())

            tasks = [asyncio.ensure_future(worker()) for _ in range(window)]
            await mark()
            await asyncio.gather(*tasks)
            n0, t0 = start_count[0]
            secs = time.monotonic() - t0
            return {"window": window, "requests": done[0] - n0, "seconds": secs,
                    "throughput_rps": (done[0] - n0) / secs,
                    "peak_in_flight": c.peak_in_flight}

    return asyncio.run(run())


def triton(url, duration, warmup):
    import tritonclient.http as th
    c = th.InferenceServerClient(url=url)
    inp = th.InferInput("float_input", [1, 20], "FP32")
    inp.set_data_from_numpy(ROW, binary_data=True)
    outs = [th.InferRequestedOutput("label", binary_data=True),
            th.InferRequestedOutput("probabilities", binary_data=True)]

    def call():
        r = c.infer("churn", [inp], outputs=outs)
        return r.as_numpy("probabilities")

    assert call().shape == (1, 2)
    return timed(call, duration, warmup)


# === codec: by hand against the protobuf package ===

def protobuf_classes():
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    F = descriptor_pb2.FieldDescriptorProto
    fd = descriptor_pb2.FileDescriptorProto(name="edgeinfer_bench.proto",
                                            package="edgeinfer.v1", syntax="proto3")

    def msg(name, fields):
        m = fd.message_type.add(name=name)
        for num, fname, typ, label, tname, opt in fields:
            f = m.field.add(name=fname, number=num, type=typ, label=label)
            if tname:
                f.type_name = tname
            if opt:
                f.proto3_optional = True
                m.oneof_decl.add(name="_" + fname)
                f.oneof_index = len(m.oneof_decl) - 1
    O, R = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    msg("TensorMeta", [(1, "name", F.TYPE_STRING, O, None, False),
                       (2, "dtype", F.TYPE_UINT32, O, None, False),
                       (3, "shape", F.TYPE_UINT64, R, None, False),
                       (4, "offset", F.TYPE_UINT64, O, None, False),
                       (5, "length", F.TYPE_UINT64, O, None, False)])
    msg("PredictRequest", [(1, "model", F.TYPE_STRING, O, None, False),
                           (2, "version", F.TYPE_STRING, O, None, True),
                           (3, "inputs", F.TYPE_MESSAGE, R, ".edgeinfer.v1.TensorMeta", False),
                           (4, "outputs", F.TYPE_STRING, R, None, False),
                           (5, "deadline_us", F.TYPE_UINT64, O, None, False),
                           (6, "routing_key", F.TYPE_BYTES, O, None, False)])
    msg("PredictResponse", [(1, "model", F.TYPE_STRING, O, None, False),
                            (2, "version", F.TYPE_STRING, O, None, False),
                            (3, "outputs", F.TYPE_MESSAGE, R, ".edgeinfer.v1.TensorMeta", False),
                            (4, "backend", F.TYPE_STRING, O, None, False),
                            (5, "queue_us", F.TYPE_UINT64, O, None, False),
                            (6, "compute_us", F.TYPE_UINT64, O, None, False)])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    get = message_factory.GetMessageClass
    return (get(pool.FindMessageTypeByName("edgeinfer.v1.PredictRequest")),
            get(pool.FindMessageTypeByName("edgeinfer.v1.PredictResponse")))


def codec(n):
    from edgeinfer import _codec as c
    from edgeinfer import _fast as f
    from google.protobuf.internal import api_implementation

    md = {"version": "1", "inputs": [{"name": "float_input", "dtype": 1, "shape": [-1, 20]}],
          "outputs": [{"name": "label", "dtype": 3, "shape": [-1]},
                      {"name": "probabilities", "dtype": 1, "shape": [-1, 2]}]}
    spec = f.ModelSpec("churn", None, md)
    limits = dict(c.DEFAULT_LIMITS)
    inputs = {"float_input": ROW}
    resp = bytearray(c.encode_frame(
        c.PREDICT_RESPONSE, 5,
        {"model": "churn", "version": "1", "backend": "tract", "queue_us": 3, "compute_us": 5,
         "outputs": [{"name": "label"}, {"name": "probabilities"}]},
        [np.array([1], np.int64), np.array([[0.25, 0.75]], np.float32)]))
    _, _, ml, data_offset, total = f.check_header(resp, limits)
    meta_end = 32 + ml

    def by_hand():
        # What Client.predict does around the socket calls (validation included).
        parts, _ = f.encode_predict(spec, 5, inputs, None, None, None, True, False, limits)
        out, *_ = f.decode_predict_response(resp, meta_end, data_offset, total)
        return parts, out

    Req, Resp = protobuf_classes()
    header = c.HEADER

    def with_protobuf():
        # The same work with protobuf messages: validation and layout are the client's either
        # way, so only the metadata encoding/decoding differs.
        x = inputs["float_input"]
        if x.dtype != spec.inputs["float_input"].dtype or not np.isfinite(x).all():
            raise ValueError
        r = Req(model="churn")
        t = r.inputs.add(name="float_input", dtype=1, length=x.nbytes)
        t.shape.extend(x.shape)
        meta = r.SerializeToString()
        ml2 = len(meta)
        off = (32 + ml2 + 63) & ~63
        head = header.pack(c.MAGIC, 1, 2, 0, 5, ml2, 0, x.nbytes) + meta + bytes(off - 32 - ml2)
        m = Resp.FromString(bytes(resp[32:meta_end]))
        out = {}
        for o in m.outputs:
            dt = c.DTYPES[o.dtype]
            out[o.name] = np.frombuffer(resp, dt, o.length // dt.itemsize,
                                        data_offset + o.offset).reshape(tuple(o.shape))
        return [head, x], out

    a, b = by_hand(), with_protobuf()
    assert bytes(a[0][0]) == bytes(b[0][0]), "both encode the same bytes"
    assert all(np.array_equal(a[1][k], b[1][k]) for k in a[1])

    def per_call(fn):
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(n):
                fn()
            best = min(best, (time.perf_counter() - t) / n * 1e6)
        return best

    import google.protobuf
    return {"hand_us": per_call(by_hand), "protobuf_us": per_call(with_protobuf),
            "protobuf_version": google.protobuf.__version__,
            "protobuf_backend": api_implementation.Type()}


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "sync":
        r = sync(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
    elif mode == "async":
        r = pipelined(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]))
    elif mode == "triton":
        r = triton(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
    else:
        r = codec(int(sys.argv[2]))
    print(json.dumps(r))
