"""The blocking Client and ClientPool against the real daemon: goldens over Unix and TCP,
zero-copy in and out, client-side refusals that send nothing, timeouts."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import edgeinfer
from edgeinfer import Client, ClientPool, InputError

from conftest import MODELS, assert_matches, golden


def requests_of(c: Client, model: str) -> int:
    return sum(m["requests"] + m["errors"] for m in c.health()["models"] if m["name"] == model)


def test_status_health_and_metadata(client):
    st = client.status()
    assert st["ready"] is True and st["protocol"] == 1 and st["max_in_flight"] == 1024
    names = {m["name"] for m in st["models"]}
    assert set(MODELS) <= names
    assert client.health()["ready"] is True
    md = client.metadata("churn")
    assert md["name"] == "churn" and md["ready"] and md["versions"] == ["1", "2"]
    assert md["inputs"] == [{"name": "float_input", "dtype": 1, "shape": [-1, 20],
                             "dtype_name": "f32"}]
    assert [o["name"] for o in md["outputs"]] == ["label", "probabilities"]
    assert client.metadata("churn", version="2")["version"] == "2"


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_fixture_model_gives_its_golden_outputs_over_unix(client, model):
    inputs, want = golden(MODELS[model])
    assert_matches(client.predict(model, inputs), want)
    # One row, from the 1-row golden file.
    inputs1, want1 = golden(MODELS[model] + ".1")
    assert_matches(client.predict(model, inputs1), want1)


def test_goldens_over_tcp(tcp_addr):
    with Client(tcp=tcp_addr) as c:
        for model in ("churn", "mlp", "cnn"):
            inputs, want = golden(MODELS[model])
            assert_matches(c.predict(model, inputs), want)
    with Client(tcp=f"{tcp_addr[0]}:{tcp_addr[1]}") as c:
        inputs, want = golden("churn_rf")
        assert_matches(c.predict("churn", inputs), want)


def test_the_embedded_demo_model_gives_the_churn_goldens(demo_sock):
    with Client(unix=demo_sock) as c:
        inputs, want = golden("churn_rf")
        assert_matches(c.predict("churn", inputs), want)
        assert c.last_response_info["version"] == "demo"


def test_version_pin_outputs_deadline_and_routing_key(client):
    inputs, want = golden("churn_rf")
    out = client.predict("churn", inputs, version="2", outputs=["probabilities"],
                         deadline_us=5_000_000, routing_key=b"user-17")
    assert list(out) == ["probabilities"]
    np.testing.assert_allclose(out["probabilities"], want["probabilities"], atol=1e-4)
    assert client.last_response_info["version"] == "2"
    out = client.predict("churn", inputs, outputs="label", routing_key="user-18")
    np.testing.assert_array_equal(out["label"], want["label"])
    assert client.last_response_info["version"] == "1"


def test_outputs_are_views_over_one_received_buffer(client):
    inputs, want = golden("churn_rf")
    out = client.predict("churn", inputs)

    def root(a):
        while isinstance(a, np.ndarray):
            a = a.base
        return a.obj if isinstance(a, memoryview) else a

    roots = {id(root(a)) for a in out.values()}
    assert len(roots) == 1, "every output views the same frame"
    assert isinstance(root(out["label"]), bytearray)
    assert all(not a.flags.owndata for a in out.values())


class Recording:
    """A real socket whose sendmsg calls are recorded."""

    def __init__(self, sock):
        self.sock = sock
        self.sent = []

    def sendmsg(self, parts):
        self.sent.append(list(parts))
        return self.sock.sendmsg(parts)

    def __getattr__(self, name):
        return getattr(self.sock, name)


def test_inputs_are_sent_from_their_own_buffers(client):
    inputs, want = golden("churn_rf")
    client.predict("churn", inputs)  # metadata fetched and cached
    rec = Recording(client._sock)
    client._sock = rec
    out = client.predict("churn", inputs)
    assert_matches(out, want)
    assert len(rec.sent) == 1, "one sendmsg per request"
    assert rec.sent[0][1] is inputs["float_input"], "the array itself, not a copy"
    client._sock = rec.sock


def test_a_non_contiguous_input_is_sent_as_a_contiguous_copy(client):
    inputs, want = golden("churn_rf")
    x = inputs["float_input"]
    wide = np.zeros((64, 40), np.float32)
    wide[:, ::2] = x
    strided = wide[:, ::2]
    assert not strided.flags.c_contiguous
    assert_matches(client.predict("churn", {"float_input": strided}), want)
    fortran = np.asfortranarray(x)
    assert_matches(client.predict("churn", {"float_input": fortran}), want)
    big_endian = x.astype(">f4")
    assert_matches(client.predict("churn", {"float_input": big_endian}), want)


BAD_INPUTS = {
    "float64 where f32 is declared": ("churn", lambda x: {"float_input": x.astype(np.float64)}),
    "int32 where f32 is declared": ("churn", lambda x: {"float_input": x.astype(np.int32)}),
    "a NaN": ("churn", lambda x: {"float_input": np.where(np.eye(64, 20, 3) > 0, np.nan, x)
                                  .astype(np.float32)}),
    "an infinity": ("churn", lambda x: {"float_input": np.concatenate(
        [x[:1], np.full((1, 20), np.inf, np.float32)])}),
    "19 features": ("churn", lambda x: {"float_input": x[:, :19].copy()}),
    "a rank-1 array": ("churn", lambda x: {"float_input": x[0].copy()}),
    "an unknown input name": ("churn", lambda x: {"float_input": x, "extra": x}),
    "a missing input": ("churn", lambda x: {}),
    "a list, not an array": ("churn", lambda x: {"float_input": x.tolist()}),
}


@pytest.mark.parametrize("what", sorted(BAD_INPUTS))
def test_bad_input_is_refused_before_any_byte_is_sent(client, what):
    model, make = BAD_INPUTS[what]
    x = golden("churn_rf")[0]["float_input"]
    client.predict(model, {"float_input": x})
    before = requests_of(client, model)
    sent = client.stats.bytes_sent
    with pytest.raises(InputError):
        client.predict(model, make(x))
    assert client.stats.bytes_sent == sent, "nothing went out"
    assert requests_of(client, model) == before, "the server saw nothing"
    # The connection is as good as before.
    assert_matches(client.predict(model, {"float_input": x}), golden("churn_rf")[1])


def test_an_unknown_output_is_refused_client_side(client):
    x = golden("churn_rf")[0]
    client.predict("churn", x)
    sent = client.stats.bytes_sent
    with pytest.raises(InputError, match="no output"):
        client.predict("churn", x, outputs=["nope"])
    assert client.stats.bytes_sent == sent


def test_allow_non_finite_sends_nan_and_the_server_refuses_it(sock_path):
    x = golden("churn_rf")[0]["float_input"].copy()
    x[3, 4] = np.nan
    with Client(unix=sock_path, allow_non_finite=True) as c:
        with pytest.raises(edgeinfer.BadInput, match="NaN"):
            c.predict("churn", {"float_input": x})
        assert c.connected
        assert_matches(c.predict("churn", golden("churn_rf")[0]), golden("churn_rf")[1])


def test_a_pool_serves_threads_with_matching_answers(sock_path):
    inputs, want = golden("identity")
    x = inputs["x"]
    errors = []
    with ClientPool(unix=sock_path, size=4) as pool:
        def work(t):
            try:
                for i in range(50):
                    row = x[(t * 50 + i) % 64: (t * 50 + i) % 64 + 1] + t
                    out = pool.predict("identity", {"x": row})
                    np.testing.assert_array_equal(out["y"], row)
            except Exception as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert len(pool._all) <= 4


def test_a_call_timeout_raises_timeout_and_the_next_call_reconnects(sock_path):
    inputs, want = golden("cnn")
    # 256 images: tens of ms of CNN, well past a 1 ms timeout (the kernel rounds it up to a
    # scheduler tick, a few ms).
    many = {"image": np.tile(inputs["image"], (128, 1, 1, 1))}
    with Client(unix=sock_path) as c:
        c.predict("cnn", inputs)
        connects = c.stats.connects
        with pytest.raises(edgeinfer.Timeout):
            c.predict("cnn", many, timeout=0.001)
        assert not c.connected
        assert_matches(c.predict("cnn", inputs), want)
        assert c.stats.connects == connects + 1


def test_no_daemon_is_unavailable(tmp_path):
    with pytest.raises(edgeinfer.Unavailable):
        Client(unix=str(tmp_path / "nobody.sock"))
    with pytest.raises(ValueError):
        Client()
