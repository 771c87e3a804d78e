"""AsyncClient against the real daemon: goldens, 1,000 requests in flight on one connection
all answered and matched by request id, typed errors without losing the connection."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

import edgeinfer
from edgeinfer import AsyncClient
from edgeinfer import _codec as c

from conftest import MODELS, assert_matches, golden


def test_async_goldens_and_status(sock_path, tcp_addr):
    async def run():
        async with AsyncClient(unix=sock_path) as ac:
            st = await ac.status()
            assert st["ready"] and st["max_in_flight"] == 1024
            assert (await ac.metadata("churn"))["inputs"][0]["shape"] == [-1, 20]
            assert (await ac.health())["ready"]
            for model, stem in sorted(MODELS.items()):
                inputs, want = golden(stem)
                assert_matches(await ac.predict(model, inputs), want)
        async with AsyncClient(tcp=tcp_addr) as ac:
            inputs, want = golden("churn_rf")
            assert_matches(await ac.predict("churn", inputs, version="2"), want)

    asyncio.run(run())


def test_1000_requests_in_flight_are_all_answered_and_matched(sock_path):
    """Identity echoes its input, so each answer shows which request it belongs to."""
    rows = [np.full((1, 32), i, np.float32) + np.arange(32, dtype=np.float32) / 64
            for i in range(1000)]

    async def run():
        async with AsyncClient(unix=sock_path) as ac:
            await ac.predict("identity", {"x": rows[0]})  # metadata cached, connection open
            conn = ac._conn
            outs = await asyncio.gather(*(ac.predict("identity", {"x": r}) for r in rows))
            assert ac._conn is conn, "one connection throughout"
            assert ac.peak_in_flight == 1000, "all 1,000 were on the wire at once"
            for r, o in zip(rows, outs):
                np.testing.assert_array_equal(o["y"], r)
            assert not conn.pending

    asyncio.run(run())


def test_pipelined_models_of_different_speeds_match(sock_path):
    """Answers may come in any order (§7.1): a fast model's overtake a slow one's."""
    cnn, cnn_want = golden("cnn")
    churn, churn_want = golden("churn_rf")

    async def run():
        async with AsyncClient(unix=sock_path) as ac:
            calls = []
            for i in range(60):
                calls.append(ac.predict("cnn", cnn) if i % 3 == 0 else ac.predict("churn", churn))
            outs = await asyncio.gather(*calls)
            for i, o in enumerate(outs):
                assert_matches(o, cnn_want if i % 3 == 0 else churn_want)

    asyncio.run(run())


def test_async_errors_are_typed_and_the_connection_survives_or_reopens(sock_path):
    inputs, want = golden("churn_rf")

    async def run():
        async with AsyncClient(unix=sock_path) as ac:
            await ac.connect()
            conn = ac._conn
            with pytest.raises(edgeinfer.UnknownModel):
                await ac.predict("nope", inputs)
            with pytest.raises(edgeinfer.UnknownOpcode):
                await ac.request_raw(0x7F)
            # Errors among successes on one connection, each matched to its request.
            res = await asyncio.gather(ac.predict("churn", inputs), ac.request_raw(0x7F),
                                       ac.predict("churn", inputs, version="9"),
                                       ac.predict("churn", inputs), return_exceptions=True)
            assert_matches(res[0], want)
            assert isinstance(res[1], edgeinfer.UnknownOpcode)
            assert isinstance(res[2], edgeinfer.UnknownModel)
            assert_matches(res[3], want)
            assert ac._conn is conn
            # A header error closes: the next call opens a new connection.
            with pytest.raises(edgeinfer.BadFrame):
                await ac.request_raw(c.HEALTH, flags=0x0002)
            assert_matches(await ac.predict("churn", inputs), want)
            assert ac._conn is not conn

    asyncio.run(run())


def test_async_bad_input_is_refused_before_sending(sock_path):
    inputs, _ = golden("churn_rf")

    async def run():
        async with AsyncClient(unix=sock_path) as ac:
            await ac.predict("churn", inputs)
            conn = ac._conn
            with pytest.raises(edgeinfer.InputError):
                await ac.predict("churn", {"float_input": inputs["float_input"].astype("f8")})
            x = inputs["float_input"].copy()
            x[0, 0] = np.nan
            with pytest.raises(edgeinfer.InputError, match="NaN"):
                await ac.predict("churn", {"float_input": x})
            assert not conn.out and not conn.pending and ac._in_flight == 0

    asyncio.run(run())


def test_async_timeout_then_the_connection_still_serves(sock_path):
    cnn, cnn_want = golden("cnn")

    async def run():
        async with AsyncClient(unix=sock_path, timeout=0.000_05) as ac:
            await ac.connect()
            res = await asyncio.gather(*(ac.predict("cnn", cnn) for _ in range(20)),
                                       return_exceptions=True)
            assert any(isinstance(r, edgeinfer.Timeout) for r in res)
            ac._timeout = 30
            assert_matches(await ac.predict("cnn", cnn), cnn_want)
            await asyncio.sleep(0.2)  # late answers arrive and are dropped
            assert_matches(await ac.predict("cnn", cnn), cnn_want)

    asyncio.run(run())
