"""The feature-cache opcodes (PREDICT_BY_ENTITY, PUT_FEATURES, GET_FEATURES) from the
blocking and the asyncio client against a real daemon with a real LMDB store, serving the
logreg fixture with a 20-feature schema: what is written is read back, predicting by entity
answers what predicting by tensor does on the same vector, and refusals are typed."""

from __future__ import annotations

import asyncio
import math
import time

import numpy as np
import pytest

import edgeinfer
from edgeinfer import AsyncClient, Client, ClientPool

from conftest import REPO, Daemon

WIDTH = 20


def default_of(i: int) -> float:
    return i / 100


def config(max_bytes: int) -> str:
    model = REPO / "tests/fixtures/models/logreg.onnx"
    s = (f"[cache]\nenabled = true\nmax_bytes = {max_bytes}\nttl_s = 0\n\n"
         f"[[models]]\nname = \"lr\"\npath = \"{model}\"\n"
         "[models.features]\nversion = 1\n")
    for i in range(WIDTH):
        s += f"[[models.features.fields]]\nname = \"f{i}\"\ndtype = \"f32\"\ndefault = {default_of(i)}\n"
        if i == 1:
            s += "max_age_s = 60\n"
    return s


@pytest.fixture(scope="module")
def features_sock(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("features"), [], config(64 << 20))
    yield d.sock
    d.stop()


def now_ms() -> int:
    return int(time.time() * 1000)


def values(seed: int) -> dict:
    return {f"f{i}": (seed % 7) * 0.25 + i * 0.125 for i in range(WIDTH)}


def vector(vals: dict) -> np.ndarray:
    """The row the server assembles: the schema's order, defaults where absent, as f32."""
    return np.array([[vals.get(f"f{i}", default_of(i)) for i in range(WIDTH)]], np.float32)


def by_tensor(c: Client, vecs: np.ndarray) -> dict:
    return c.predict("lr", {"float_input": vecs})


def test_put_get_and_predict_by_entity_agree_with_predict_by_tensor(features_sock):
    ts = now_ms()
    with Client(unix=features_sock, timeout=30) as c:
        partial = {k: v for k, v in values(3).items() if k != "f5"}
        rows = [("sync-a", ts, values(1)), {"entity": b"sync-b", "event_ts_ms": ts,
                                             "values": partial}]
        assert c.put_features(rows, 1) == {"written": 2, "skipped_older": 0}
        got = c.get_features(["sync-a", b"sync-b", "sync-none"])
        assert [g["found"] for g in got] == [True, True, False]
        assert got[0]["event_ts_ms"] == ts and got[0]["schema_version"] == 1
        for name, v in values(1).items():
            assert math.isclose(got[0]["values"][name], v, rel_tol=1e-6), name
        assert "f5" not in got[1]["values"] and got[2]["values"] == {}
        assert c.get_features("sync-a")[0]["found"]  # one key

        r = c.predict_by_entity("lr", ["sync-a", "sync-b", "sync-none"])
        assert isinstance(r, edgeinfer.EntityPrediction) and r.schema_version == 1
        want = by_tensor(c, np.concatenate([vector(values(1)), vector(partial), vector({})]))
        np.testing.assert_array_equal(r["label"], want["label"])
        np.testing.assert_allclose(r["probabilities"], want["probabilities"], atol=1e-6)
        assert [x["found"] for x in r.rows] == [True, True, False]
        assert r.rows[0]["defaulted"] == [] and r.rows[0]["event_ts_ms"] == ts
        assert r.rows[1]["defaulted"] == [5]
        assert r.rows[2]["defaulted"] == list(range(WIDTH)) and r.rows[2]["event_ts_ms"] == 0
        assert r.version and r.backend and c.last_response_info["version"] == r.version

        # An override replaces the stored value and is no longer reported as defaulted.
        o = c.predict_by_entity("lr", ["sync-b"], overrides={0: {"f5": 2.5, "f0": -1.0}},
                                outputs=["probabilities"], schema_version=1)
        over = dict(partial, f5=2.5, f0=-1.0)
        np.testing.assert_allclose(o["probabilities"],
                                   by_tensor(c, vector(over))["probabilities"], atol=1e-6)
        assert list(o.outputs) == ["probabilities"] and o.rows[0]["defaulted"] == []

        # Idempotent by event time: an older write is skipped, the stored row kept.
        assert c.put_features([("sync-a", ts - 1, values(2))], 1) == \
            {"written": 0, "skipped_older": 1}
        assert math.isclose(c.get_features("sync-a")[0]["values"]["f0"], values(1)["f0"])


def test_stale_features_are_reported_and_defaulted(features_sock):
    with Client(unix=features_sock, timeout=30) as c:
        old = now_ms() - 3_600_000  # f1's max age is 60 s
        c.put_features([("stale-a", old, values(4))], 1)
        r = c.predict_by_entity("lr", "stale-a")
        assert r.rows[0]["stale"] == [1] and r.rows[0]["defaulted"] == [1]
        want = vector(dict(values(4), f1=default_of(1)))
        np.testing.assert_allclose(r["probabilities"], by_tensor(c, want)["probabilities"],
                                   atol=1e-6)
    with ClientPool(unix=features_sock, size=2, timeout=30) as pool:
        assert pool.get_features(["stale-a"])[0]["event_ts_ms"] == old
        assert pool.predict_by_entity("lr", ["stale-a"]).rows[0]["stale"] == [1]
        assert pool.put_features([("pool-a", old, {"f0": 1.0})], 1)["written"] == 1


def test_feature_refusals_are_typed_and_the_connection_stays(features_sock):
    with Client(unix=features_sock, timeout=30) as c:
        with pytest.raises(edgeinfer.BadInput, match="schema version"):
            c.predict_by_entity("lr", ["x"], schema_version=9)
        with pytest.raises(edgeinfer.BadInput):
            c.predict_by_entity("lr", ["x"], overrides=[(0, "nope", 1.0)])
        with pytest.raises(edgeinfer.UnknownModel):
            c.predict_by_entity("missing", ["x"])
        # NaN where the schema forbids it: refused, nothing of the request written.
        with pytest.raises(edgeinfer.BadInput):
            c.put_features([("nan-ok", now_ms(), values(1)),
                            ("nan-bad", now_ms(), dict(values(1), f3=float("nan")))], 1)
        assert [g["found"] for g in c.get_features(["nan-ok", "nan-bad"])] == [False, False]
        with pytest.raises(edgeinfer.BadInput):
            c.put_features([("v9", now_ms(), values(1))], 9)  # an unknown schema version
        with pytest.raises(edgeinfer.InputError):
            c.predict_by_entity("lr", [])  # refused here, never sent
        assert c.connected and c.predict_by_entity("lr", "x").rows[0]["found"] is False


def test_a_server_without_a_feature_store_says_not_implemented(sock_path):
    with Client(unix=sock_path, timeout=30) as c:
        for call in (lambda: c.predict_by_entity("logreg", ["k"]),
                     lambda: c.get_features(["k"]),
                     lambda: c.put_features([("k", 1, {"f0": 1.0})], 1)):
            with pytest.raises(edgeinfer.NotImplementedByServer):
                call()
        assert c.health()["ready"]


def test_the_async_client_speaks_the_feature_opcodes(features_sock):
    ts = now_ms()

    async def run():
        async with AsyncClient(unix=features_sock, timeout=30) as ac:
            rows = [(f"async-{i}", ts, values(i)) for i in range(50)]
            assert await ac.put_features(rows, 1) == {"written": 50, "skipped_older": 0}
            got = await ac.get_features([f"async-{i}" for i in range(50)])
            assert all(g["found"] for g in got)
            # Many in flight on one connection, each answer matched to its request.
            rs = await asyncio.gather(*(ac.predict_by_entity("lr", [f"async-{i}"])
                                        for i in range(50)))
            with pytest.raises(edgeinfer.BadInput):
                await ac.predict_by_entity("lr", ["x"], schema_version=2)
            return rs

    rs = asyncio.run(run())
    with Client(unix=features_sock, timeout=30) as c:
        want = by_tensor(c, np.concatenate([vector(values(i)) for i in range(50)]))
    for i, r in enumerate(rs):
        assert r.rows[0]["found"] and r.rows[0]["event_ts_ms"] == ts
        np.testing.assert_allclose(r["probabilities"][0], want["probabilities"][i], atol=1e-6)


def test_a_full_map_is_a_feature_store_error_and_reads_go_on(tmp_path):
    d = Daemon(tmp_path, [], config(1 << 16))  # the smallest map the config takes
    try:
        with Client(unix=d.sock, timeout=30) as c:
            c.put_features([("keep", now_ms(), values(1))], 1)
            err = None
            for b in range(50):  # 64 KiB fills within a few batches of 100 big keys
                rows = [(f"{b:04}-{i:06}-{'p' * 190}", now_ms(), values(i)) for i in range(100)]
                try:
                    c.put_features(rows, 1)
                except edgeinfer.FeatureStore as e:
                    err = (b, e)
                    break
            assert err is not None, "the map never filled"
            b, e = err
            assert e.code == 15 and "full" in e.message and not e.retryable
            assert not c.get_features(f"{b:04}-{0:06}-{'p' * 190}")[0]["found"]
            assert c.predict_by_entity("lr", "keep").rows[0]["found"]
    finally:
        d.stop()
