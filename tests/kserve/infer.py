#!/usr/bin/env python3
"""KServe v2 conformance from an independent client: tritonclient[http], unchanged.

Runs against a live edgeinferd HTTP listener and checks the demo churn model's answers
against the golden file (onnxruntime's outputs), over JSON tensors and over the
binary-tensor extension, plus the errors a client sees for bad requests.

    python tests/kserve/infer.py --url 127.0.0.1:7701 --model churn \
        --golden tests/fixtures/golden/churn_rf.json [--token FILE]

Exit status 0 when every check passes; prints one JSON line of what was checked.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

ATOL = 1e-4


def golden(path):
    g = json.load(open(path))
    (inp,) = g["inputs"]
    x = np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])
    outs = {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in g["outputs"]}
    return inp["name"], x, outs


def check_outputs(result, want, what):
    p = result.as_numpy("probabilities")
    assert p is not None, f"{what}: no probabilities"
    assert p.dtype == np.float32, f"{what}: probabilities dtype {p.dtype}"
    assert p.shape == want["probabilities"].shape, f"{what}: shape {p.shape}"
    err = float(np.max(np.abs(p - want["probabilities"])))
    assert err <= ATOL, f"{what}: probabilities differ by {err}"
    lab = result.as_numpy("label")
    assert lab is not None and lab.dtype == np.int64, f"{what}: label {lab!r}"
    assert np.array_equal(lab, want["label"]), f"{what}: labels differ"
    return err


def expect_error(fn, status, words, what):
    try:
        fn()
    except InferenceServerException as e:
        assert str(e.status()) == str(status), f"{what}: status {e.status()} != {status}: {e}"
        assert words in e.message(), f"{what}: {words!r} not in {e.message()!r}"
        return
    raise AssertionError(f"{what}: no error")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--model", default="churn")
    ap.add_argument("--golden", required=True)
    ap.add_argument("--token", help="file holding the bearer token")
    args = ap.parse_args()

    headers = None
    if args.token:
        headers = {"Authorization": "Bearer " + open(args.token).read().strip()}
    client = httpclient.InferenceServerClient(url=args.url)
    assert client.is_server_live(headers=headers), "server not live"
    assert client.is_server_ready(headers=headers), "server not ready"
    assert client.is_model_ready(args.model, headers=headers), "model not ready"
    server = client.get_server_metadata(headers=headers)
    assert "binary_tensor_data" in server["extensions"], server

    name, x, want = golden(args.golden)
    meta = client.get_model_metadata(args.model, headers=headers)
    assert meta["inputs"][0]["name"] == name, meta
    assert meta["inputs"][0]["datatype"] == "FP32", meta
    assert meta["inputs"][0]["shape"][-1] == x.shape[1], meta
    version = meta["versions"][0]

    worst = 0.0
    # 1. JSON tensors in and out.
    inp = httpclient.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    outs = [httpclient.InferRequestedOutput(n, binary_data=False) for n in ("probabilities", "label")]
    r = client.infer(args.model, [inp], outputs=outs, request_id="json-1", headers=headers)
    worst = max(worst, check_outputs(r, want, "json"))
    resp = r.get_response()
    assert resp["id"] == "json-1" and resp["model_name"] == args.model, resp
    assert "data" in resp["outputs"][0], "JSON output expected"

    # 2. Binary tensors in; no outputs named, so tritonclient asks for binary outputs.
    inp = httpclient.InferInput(name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    r = client.infer(args.model, [inp], headers=headers)
    worst = max(worst, check_outputs(r, want, "binary"))
    assert "data" not in r.get_response()["outputs"][0], "binary output expected"

    # 3. Binary in, one output binary and one JSON, pinned version.
    outs = [
        httpclient.InferRequestedOutput("probabilities", binary_data=True),
        httpclient.InferRequestedOutput("label", binary_data=False),
    ]
    r = client.infer(args.model, [inp], outputs=outs, model_version=version, headers=headers)
    worst = max(worst, check_outputs(r, want, "mixed"))

    # 4. Errors a client sees.
    bad = httpclient.InferInput(name, [1, x.shape[1] - 1], "FP32")
    bad.set_data_from_numpy(x[:1, :-1].copy(), binary_data=True)
    expect_error(lambda: client.infer(args.model, [bad], headers=headers), 400, "shape", "wrong shape")
    wrong_type = httpclient.InferInput(name, [1, x.shape[1]], "FP64")
    wrong_type.set_data_from_numpy(x[:1].astype(np.float64), binary_data=True)
    expect_error(lambda: client.infer(args.model, [wrong_type], headers=headers), 400, "FP32", "wrong dtype")
    expect_error(lambda: client.infer("no-such-model", [inp], headers=headers), 404, "unknown model", "unknown model")
    expect_error(
        lambda: client.infer(args.model, [inp], model_version="no-such-version", headers=headers),
        404,
        "no version",
        "unknown version",
    )

    print(json.dumps({"ok": True, "rows": int(x.shape[0]), "max_abs_err": worst, "model_version": version}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
