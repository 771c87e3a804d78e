"""The shared-memory transport from Python (docs/protocol.md §11) against the daemon that
daemon/tests/python_client.rs started: the goldens with numpy views straight over the rings,
inputs written in place, pipelining, typed errors, and a corrupt header that ends only its
own session."""

from __future__ import annotations

import os

import numpy as np
import pytest

from edgeinfer import BadFrame, ConnectionClosed, ShmClient, UnknownModel
from edgeinfer import _codec as c

from conftest import MODELS, assert_matches, golden


@pytest.fixture
def shm(sock_path):
    s = ShmClient(sock_path, ring_bytes=1 << 20)
    yield s
    s.close()


@pytest.fixture
def small(sock_path):
    """The smallest ring (64 KiB): a few hundred requests wrap it."""
    s = ShmClient(sock_path, ring_bytes=1)
    yield s
    s.close()


@pytest.mark.parametrize("model", ["churn", "mlp", "cnn", "logreg", "gb_multiclass"])
def test_goldens_over_shared_memory(shm, model):
    assert shm.ring_bytes == 1 << 20
    inputs, want = golden(MODELS[model])
    got = shm.predict(model, inputs)
    # Views over the response ring, not copies.
    for a in got.values():
        assert not a.flags.owndata and not a.flags.writeable
    assert_matches({k: np.array(v) for k, v in got.items()}, want)
    inputs1, want1 = golden(MODELS[model] + ".1")
    assert_matches({k: np.array(v) for k, v in shm.predict(model, inputs1).items()}, want1)


def test_inputs_written_in_place_and_rings_that_wrap(small):
    shm = small
    assert shm.ring_bytes == 1 << 16
    inputs, want = golden("churn_rf")
    x = inputs["float_input"]
    for i in range(400):
        row = (i * 11) % x.shape[0]
        req = shm.request("churn", {"float_input": (np.float32, (1, x.shape[1]))})
        req.inputs["float_input"][0, :] = x[row]     # straight into the request ring
        rid = req.send()
        a = shm.recv()
        assert a.request_id == rid
        assert_matches({k: np.array(v) for k, v in a.outputs.items()},
                       {k: v[row:row + 1] for k, v in want.items()})
    assert shm.request_head > shm.ring_bytes


def test_pipelined_answers_are_matched_by_id(shm):
    inputs, want = golden("churn_rf")
    x = inputs["float_input"]
    sent = {}
    for row in range(32):
        sent[shm.send_predict("churn", {"float_input": x[row:row + 1]})] = row
    assert shm.in_flight == 32
    for _ in range(32):
        a = shm.recv()
        row = sent.pop(a.request_id)
        assert_matches({k: np.array(v) for k, v in a.outputs.items()},
                       {k: v[row:row + 1] for k, v in want.items()})
    assert not sent


def test_errors_are_typed_and_the_session_stays(shm):
    inputs, _ = golden("churn_rf.1")
    with pytest.raises(UnknownModel):
        shm.predict("nope", inputs)
    assert "probabilities" in shm.predict("churn", inputs)


def test_a_corrupt_header_ends_only_its_own_session(sock_path, shm):
    inputs, want = golden("churn_rf.1")
    bad = ShmClient(sock_path, ring_bytes=1 << 16)
    with pytest.raises(Exception, match="does not fit"):
        bad.send_predict("churn", {"float_input": np.zeros((1, 20000), np.float32)})
    frame = bytearray(c.encode_frame(c.PREDICT, 9, {"model": "churn", "inputs": [
        {"name": "float_input"}]}, [inputs["float_input"]]))
    frame[0] = ord("X")
    bad.send_frame(bytes(frame))
    a = bad.recv()
    assert a.header["opcode"] == c.ERROR and a.message["code"] == BadFrame.code
    with pytest.raises(ConnectionClosed):
        bad.predict("churn", inputs)
    bad.close()
    assert_matches({k: np.array(v) for k, v in shm.predict("churn", inputs).items()}, want)


def test_a_client_on_the_servers_cpu_sleeps_instead_of_polling(sock_path):
    """On the server's CPU the client could only keep the server from running by polling:
    it reads where the session runs from the control page and sleeps on the doorbell at
    once, however long its spin is set; every answer still comes."""
    inputs, want = golden("churn_rf.1")
    s = ShmClient(sock_path, ring_bytes=1 << 16, spin_s=3600.0)
    before = os.sched_getaffinity(0)
    try:
        s.predict("churn", inputs)
        cpu = s.server_cpu
        assert cpu is not None, "the server says where its session runs"
        os.sched_setaffinity(0, {cpu})
        assert s.shares_server_cpu
        polled = s.polled_waits
        for _ in range(50):
            assert_matches({k: np.array(v) for k, v in s.predict("churn", inputs).items()},
                           want)
        # Every wait for an answer not ready at the first look slept at once (the answers
        # ready at once, the server having run on the doorbell's wake-up, took no wait).
        assert s.polled_waits == polled
    finally:
        os.sched_setaffinity(0, before)
        s.close()
