#!/usr/bin/env python3
"""The benchmark peer: our users' current Python serving stack, rebuilt.

A FastAPI app in the shape the ML team runs today:

    POST /predict  {"features": [[f0, ..., f19], ...], "model_version": "1"?}
                -> {"predictions": [[p0, p1], ...], "model_version": "1", "latency_ms": 0.8}
    GET  /health   {"status": "ok", "model_version": ..., "backend": ...}
    GET  /metrics  Prometheus text (prometheus_client)

`predictions` holds one row of class probabilities per input row, i.e.
`predict_proba`. `latency_ms` is the model call plus the numpy conversion
around it, timed inside the handler, as their server reports it.

Backends (--backend):
  sklearn      the churn RandomForest as scikit-learn runs it. The forest comes
               from tests/fixtures/make_models.py (same data, same seed), so it
               is the one churn_rf.onnx was converted from. It is cached as a
               joblib file under .cache/peers/ and loaded with joblib.load, as
               the users' server loads its model.
  onnxruntime  tests/fixtures/models/churn_rf.onnx in an onnxruntime
               InferenceSession with default options.

At startup either backend must reproduce tests/fixtures/golden/churn_rf.json
(probabilities within 1e-4), or the server refuses to start. That makes the
benchmark compare the same model on every side.

Assumptions where we have not seen their code: a plain `def` handler, which
FastAPI runs in its threadpool; pydantic request and response models; uvicorn
with its default access log (turn it off with --no-access-log); the forest's
scikit-learn default n_jobs (set --n-jobs -1 for a model trained with
`RandomForestClassifier(n_jobs=-1)`, which is much slower per row).

Run (after benches/peers/setup.sh):
    .cache/venv-peers/bin/python benches/peers/fastapi_server.py --backend sklearn --port 8000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
from fastapi import FastAPI, HTTPException, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
ONNX_MODEL = FIXTURES / "models" / "churn_rf.onnx"
GOLDEN = FIXTURES / "golden" / "churn_rf.json"
CACHE = REPO / ".cache" / "peers"
N_FEATURES = 20


# === backends ===


class SklearnBackend:
    name = "sklearn"

    def __init__(self, n_jobs: Optional[int] = None):
        import joblib
        import sklearn

        # The file name carries the training script's hash and scikit-learn's
        # version, so an edit to either retrains instead of loading a stale forest.
        script = FIXTURES / "make_models.py"
        digest = hashlib.sha256(script.read_bytes()).hexdigest()[:12]
        path = CACHE / f"churn_rf-{digest}-sklearn{sklearn.__version__}.joblib"
        if not path.exists():
            sys.path.insert(0, str(FIXTURES))
            from make_models import churn_rf_estimator

            clf, _ = churn_rf_estimator()
            CACHE.mkdir(parents=True, exist_ok=True)
            # Per-process name: two peers starting at once must not interleave writes.
            part = path.with_name(f"{path.name}.{os.getpid()}.part")
            joblib.dump(clf, part)
            part.replace(path)
        self.model = joblib.load(path)
        # Prediction parallelism is a setting on the fitted forest. Measured here
        # (2 cores, 1 row): n_jobs=None/1 ~2.7 ms in-process, n_jobs=-1 ~11 ms.
        self.model.n_jobs = n_jobs

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(x)


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, n_jobs: Optional[int] = None):
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(ONNX_MODEL), providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(["probabilities"], {self.input: x})[0]


BACKENDS = {"sklearn": SklearnBackend, "onnxruntime": OnnxRuntimeBackend}


def check_against_golden(backend) -> None:
    """Refuse to serve a model that is not churn_rf: the comparison would be void."""
    golden = json.loads(GOLDEN.read_text())
    (inp,) = golden["inputs"]
    x = np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])
    want = next(o for o in golden["outputs"] if o["name"] == "probabilities")
    want = np.asarray(want["data"], dtype=np.float64).reshape(want["shape"])
    got = np.asarray(backend.predict_proba(x), dtype=np.float64)
    if got.shape != want.shape or not np.allclose(got, want, rtol=0, atol=1e-4):
        worst = np.max(np.abs(got - want)) if got.shape == want.shape else got.shape
        raise SystemExit(f"{backend.name} backend does not reproduce {GOLDEN.name}: {worst}")


# === app ===


class PredictRequest(BaseModel):
    features: List[List[float]]
    model_version: Optional[str] = None


class PredictResponse(BaseModel):
    predictions: List[List[float]]
    model_version: str
    latency_ms: float


def create_app(backend_name: str, model_version: str, n_jobs: Optional[int] = None) -> FastAPI:
    backend = BACKENDS[backend_name](n_jobs)
    check_against_golden(backend)

    app = FastAPI(title="churn model server")
    # A registry per app, so a process may build more than one (tests, comparisons).
    registry = CollectorRegistry()
    requests_total = Counter(
        "predict_requests_total",
        "Prediction requests",
        ["model_version", "status"],
        registry=registry,
    )
    latency = Histogram(
        "predict_latency_seconds", "Model latency inside /predict", registry=registry
    )
    rows_total = Counter("predict_rows_total", "Rows scored", registry=registry)

    @app.get("/health")
    def health():
        return {"status": "ok", "model_version": model_version, "backend": backend.name}

    @app.get("/metrics")
    def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/predict", response_model=PredictResponse)
    def predict(req: PredictRequest):
        if req.model_version is not None and req.model_version != model_version:
            # Not the requested version as a label: clients would set the cardinality.
            requests_total.labels("unknown", "not_found").inc()
            raise HTTPException(404, f"model_version {req.model_version!r} not found")
        start = time.perf_counter()
        try:
            x = np.asarray(req.features, dtype=np.float32)
        except ValueError:
            x = None  # ragged rows
        if x is None or x.ndim != 2 or x.shape[0] == 0 or x.shape[1] != N_FEATURES:
            requests_total.labels(model_version, "bad_request").inc()
            raise HTTPException(422, f"features must be a non-empty list of rows of {N_FEATURES} numbers")
        proba = backend.predict_proba(x)
        elapsed = time.perf_counter() - start
        latency.observe(elapsed)
        requests_total.labels(model_version, "ok").inc()
        rows_total.inc(len(x))
        return {
            "predictions": proba.tolist(),
            "model_version": model_version,
            "latency_ms": elapsed * 1000.0,
        }

    return app


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="FastAPI peer serving the churn RandomForest")
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="sklearn")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model-version", default="1")
    parser.add_argument(
        "--n-jobs",
        type=int,
        default=None,
        help="sklearn backend: the forest's n_jobs at prediction time (default: "
        "scikit-learn's default, one job; -1 is common in users' training code)",
    )
    parser.add_argument("--no-access-log", action="store_true", help="turn off uvicorn's access log")
    args = parser.parse_args(argv)

    import uvicorn

    if args.n_jobs is not None and args.backend != "sklearn":
        parser.error("--n-jobs applies to the sklearn backend only")
    app = create_app(args.backend, args.model_version, args.n_jobs)
    uvicorn.run(app, host=args.host, port=args.port, access_log=not args.no_access_log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
