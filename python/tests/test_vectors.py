"""The Python codec against the conformance vectors shared with the Rust codec
(proto/tests/vectors/, checked there by proto/tests/vectors.rs), the spec's worked examples
and its error table. No daemon needed."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import edgeinfer
from edgeinfer import _codec as c
from edgeinfer import _fast as f
from edgeinfer.errors import ERRORS, ServerError, server_error

from conftest import REPO

# The feature-cache opcodes' vectors (§10.9-10.13) sit in their own directory.
VECTORS = sorted((REPO / "proto/tests/vectors").glob("*.json")) + \
    sorted((REPO / "proto/tests/vectors/features").glob("*.json"))
LOADED = [json.loads(p.read_text()) for p in VECTORS]
VALID = [v for v in LOADED if "refused" not in v]
REFUSED = [v for v in LOADED if "refused" in v]


def unhex(lines) -> bytes:
    return bytes.fromhex("".join(line.split(": ", 1)[-1].replace(" ", "") for line in lines))


def fields_of(v) -> dict:
    """The vector's fields as the codec's dicts (bytes fields are hex in JSON)."""
    def conv(name, d):
        d = dict(d)
        for tag, key, kind in c.SCHEMAS[name]:
            if kind == "bytes":
                d[key] = bytes.fromhex(d[key])
            elif kind == "rbytes":
                d[key] = [bytes.fromhex(x) for x in d[key]]
            elif isinstance(kind, tuple) and kind[0] == "opt":
                d[key] = None if d.get(key) is None else conv(kind[1], d[key])
            elif isinstance(kind, tuple):
                d[key] = [conv(kind[1], m) for m in d[key]]
        return d
    return conv(v["message"]["type"], v["message"]["fields"])


def arrays_of(v) -> list[np.ndarray]:
    return [np.array(t["values"], dtype=c.DTYPES[c.CODE_OF_NAME[t["dtype"]]]).reshape(t["shape"])
            for t in v.get("tensors", [])]


def test_there_are_vectors():
    assert len(VALID) >= 15 and len(REFUSED) >= 10


@pytest.mark.parametrize("v", VALID, ids=[v["name"] for v in VALID])
def test_valid_vector_encodes_and_decodes_byte_for_byte(v):
    want = unhex(v["frame"])
    h = v["header"]
    fields = fields_of(v)
    arrays = arrays_of(v) if "tensors" in v else None
    got = c.encode_frame(h["opcode"], h["request_id"], fields, arrays, flags=h["flags"])
    assert got.hex() == want.hex()
    header, msg, tensors = c.decode_frame(want)
    assert {k: header[k] for k in ("opcode", "flags", "request_id")} == h
    assert msg == fields
    assert len(tensors) == len(arrays or [])
    for t, a in zip(tensors, arrays or []):
        assert t.dtype == a.dtype and t.shape == a.shape
        np.testing.assert_array_equal(t, a)


@pytest.mark.parametrize("v", REFUSED, ids=[v["name"] for v in REFUSED])
def test_refusal_vector_is_refused_with_its_code(v):
    with pytest.raises(c.CodecError) as e:
        c.decode_frame(unhex(v["frame"]))
    assert e.value.code == v["refused"]["code"], str(e.value)
    assert e.value.closes == v["refused"]["closes"], str(e.value)


PREDICTS = [v for v in VALID if v["message"]["type"] == "PredictRequest"]


@pytest.mark.parametrize("v", PREDICTS, ids=[v["name"] for v in PREDICTS])
def test_the_clients_predict_encoder_makes_the_vector_bytes(v):
    """The hot path (cached prefixes, parts sent from the arrays' own buffers) must produce
    exactly the generic codec's bytes."""
    fields = fields_of(v)
    arrays = arrays_of(v)
    inputs = {t["name"]: a for t, a in zip(fields["inputs"], arrays)}
    spec = f.unchecked_spec(fields["model"], fields["version"])
    parts, total = f.encode_predict(spec, v["header"]["request_id"], inputs, fields["outputs"],
                                    fields["deadline_us"], fields["routing_key"], False, False,
                                    c.DEFAULT_LIMITS)
    frame = b"".join(bytes(f.byte_view(p)) for p in parts)
    assert total == len(frame)
    assert frame.hex() == unhex(v["frame"]).hex()
    sent = [p for p in parts[1:] if isinstance(p, np.ndarray)]
    assert all(any(s is a for a in inputs.values()) for s in sent), "inputs are sent as given"


RESPONSES = [v for v in VALID if v["message"]["type"] == "PredictResponse"]


@pytest.mark.parametrize("v", RESPONSES, ids=[v["name"] for v in RESPONSES])
def test_the_clients_response_decoder_reads_the_vector(v):
    buf = bytearray(unhex(v["frame"]))
    op, rid, ml, data_offset, total = f.check_header(buf, c.DEFAULT_LIMITS)
    assert (op, rid, total) == (c.PREDICT_RESPONSE, v["header"]["request_id"], len(buf))
    out, version, backend, q, comp = f.decode_predict_response(buf, 32 + ml, data_offset, total)
    fields = fields_of(v)
    assert (version, backend, q, comp) == (fields["version"], fields["backend"],
                                           fields["queue_us"], fields["compute_us"])
    for t, a in zip(v["tensors"], arrays_of(v)):
        np.testing.assert_array_equal(out[t["name"]], a)
        assert out[t["name"]].dtype == a.dtype
        assert np.shares_memory(out[t["name"]], np.frombuffer(buf, np.uint8)), "a view"


ENTITY_REQUESTS = [v for v in VALID if v["message"]["type"] == "PredictByEntityRequest"]


@pytest.mark.parametrize("v", ENTITY_REQUESTS, ids=[v["name"] for v in ENTITY_REQUESTS])
def test_the_clients_entity_request_fields_make_the_vector_bytes(v):
    """What Client.predict_by_entity sends, from its own arguments (str keys, overrides as
    {row: {feature: value}}), is the vector's frame."""
    fd = fields_of(v)
    overrides = {}
    for o in fd["overrides"]:
        overrides.setdefault(o["row"], {})[o["feature"]] = o["value"]
    fields = c.predict_by_entity_fields(
        fd["model"], [k.decode() for k in fd["keys"]], fd["version"], overrides,
        fd["outputs"], fd["deadline_us"], fd["routing_key"], fd["schema_version"])
    frame = f.encode_message_frame(c.PREDICT_BY_ENTITY, v["header"]["request_id"],
                                   "PredictByEntityRequest", fields)
    assert frame.hex() == unhex(v["frame"]).hex()


ENTITY_RESPONSES = [v for v in VALID if v["message"]["type"] == "PredictByEntityResponse"]


@pytest.mark.parametrize("v", ENTITY_RESPONSES, ids=[v["name"] for v in ENTITY_RESPONSES])
def test_the_clients_entity_response_decoder_reads_the_vector(v):
    buf = bytearray(unhex(v["frame"]))
    op, rid, ml, data_offset, total = f.check_header(buf, c.DEFAULT_LIMITS)
    assert (op, rid, total) == (c.PREDICT_BY_ENTITY_RESPONSE, v["header"]["request_id"],
                                len(buf))
    r = c.decode_entity_response(buf, 32 + ml, data_offset, total)
    fields = fields_of(v)
    p = fields["prediction"]
    assert (r.model, r.version, r.backend, r.queue_us, r.compute_us, r.prediction_id) == \
        (p["model"], p["version"], p["backend"], p["queue_us"], p["compute_us"],
         p["prediction_id"])
    assert r.rows == fields["rows"] and r.schema_version == fields["schema_version"]
    for t, a in zip(v["tensors"], arrays_of(v)):
        np.testing.assert_array_equal(r[t["name"]], a)
        assert r[t["name"]].dtype == a.dtype
        assert np.shares_memory(r[t["name"]], np.frombuffer(buf, np.uint8)), "a view"


def test_an_entity_response_whose_data_disagrees_is_a_protocol_error():
    from edgeinfer.errors import ProtocolError
    v = next(v for v in REFUSED if v["name"] == "predict_by_entity_response_bytes_after_outputs")
    buf = bytearray(unhex(v["frame"]))
    op, rid, ml, data_offset, total = f.check_header(buf, c.DEFAULT_LIMITS)
    with pytest.raises(ProtocolError):
        c.decode_entity_response(buf, 32 + ml, data_offset, total)


def test_feature_request_fields_refuse_bad_arguments_before_sending():
    from edgeinfer.errors import InputError
    for bad in ([], [""], [3], ["k", None]):
        with pytest.raises(InputError):
            c.predict_by_entity_fields("m", bad)
    with pytest.raises(InputError):
        c.predict_by_entity_fields("m", ["a"], overrides={1: {"x": 1.0}})  # row 1 of 1 key
    with pytest.raises(InputError):
        c.predict_by_entity_fields("m", ["a"], overrides=[(0, "x", "1")])  # not a number
    with pytest.raises(InputError):
        c.put_features_fields([("a", 1.5, {"x": 1.0})], 1)  # event time not an int
    with pytest.raises(InputError):
        c.put_features_fields([{"entity": "a", "values": {}}], 1)  # no event time
    assert c.entity_keys("one") == [b"one"] and c.entity_keys([b"a", "b"]) == [b"a", b"b"]
    got = c.put_features_fields([("a", 5, {"x": 1, "y": None})], 2)
    assert got == {"schema_version": 2, "rows": [
        {"entity": b"a", "event_ts_ms": 5, "values": [{"name": "x", "value": 1.0}]}]}


def doc_blocks() -> dict[str, list[str]]:
    doc = (REPO / "docs/protocol.md").read_text()
    return {m.group(1): m.group(2).splitlines()
            for m in re.finditer(r"<!-- expect(?:-features)?:([\w-]+) -->\s*```text\n(.*?)```",
                                 doc, re.S)}


def test_every_worked_example_of_the_spec_is_a_vector():
    blocks = doc_blocks()
    assert len(blocks) >= 3
    by_doc = {v["doc"]: v for v in VALID if "doc" in v}
    for name, lines in blocks.items():
        assert name in by_doc, f"no vector has \"doc\": {name!r}"
        assert lines == by_doc[name]["frame"], name
    assert set(by_doc) <= set(blocks)


def spec_error_table() -> list[tuple[int, str, str, bool]]:
    doc = (REPO / "docs/protocol.md").read_text()
    section = doc[doc.index("### 7.2"):]
    section = section[:section.index("\n### ", 5)]
    rows = []
    for line in section.splitlines():
        cells = [x.strip() for x in line.split("|")]
        if len(cells) > 6 and cells[1].isdigit():
            rows.append((int(cells[1]), cells[2].strip("`"), cells[-3], cells[-2].startswith("yes")))
    return rows


def test_every_error_code_of_the_spec_has_its_typed_exception():
    rows = spec_error_table()
    assert len(rows) >= 13
    assert [r[0] for r in rows] == sorted(ERRORS)
    for code, name, connection, retry in rows:
        cls = ERRORS[code]
        assert issubclass(cls, ServerError)
        assert (cls.code, cls.name, cls.retryable) == (code, name, retry), name
        # "closes", "closes if in the header", "closes after draining": the client reopens.
        assert cls.closes == connection.startswith("closes"), name


@pytest.mark.parametrize("code", sorted(ERRORS))
def test_an_error_frame_becomes_its_exception_with_message_and_retry_hint(code):
    frame = c.encode_frame(c.ERROR, 42, {"code": code, "message": f"m{code}",
                                          "retry_after_ms": code * 10})
    buf = bytearray(frame)
    op, rid, ml, _, _ = f.check_header(buf, c.DEFAULT_LIMITS)
    with pytest.raises(ERRORS[code]) as e:
        f.decode_reply(buf, op, c.HEALTH_RESPONSE, 32 + ml, rid)
    assert (e.value.code, e.value.message, e.value.retry_after_ms, e.value.request_id) == \
        (code, f"m{code}", code * 10, 42)
    assert isinstance(e.value, edgeinfer.EdgeInferError)
    assert getattr(edgeinfer, type(e.value).__name__) is ERRORS[code]


def test_an_unknown_error_code_is_a_plain_non_retryable_server_error():
    e = server_error(999, "from a newer server", 5)
    assert type(e) is ServerError and e.code == 999 and not e.retryable and e.retry_after_ms == 5


def test_varints_round_trip_at_the_edges():
    for v in [0, 1, 127, 128, 300, 2**32 - 1, 2**63, 2**64 - 1]:
        b = c.varint(v)
        assert c.read_varint(b, 0, len(b)) == (v, len(b))
    assert len(c.varint(-1)) == 10
    assert c.decode_message("TensorSpecMsg", c.encode_message(
        "TensorSpecMsg", {"name": "x", "dtype": 1, "shape": [-1, 5]}))["shape"] == [-1, 5]


def test_unknown_fields_are_skipped_and_unpacked_repeats_accepted():
    # field 9 varint, field 10 length-delimited, field 11 fixed64, field 12 fixed32: skipped;
    # shape as two unpacked varints (field 3, wire type 0).
    raw = (b"\x0a\x01x" + b"\x48\x05" + b"\x52\x02hi" + b"\x59" + bytes(8) + b"\x65" + bytes(4)
           + b"\x18\x02\x18\x03")
    m = c.decode_message("TensorMeta", raw)
    assert m["name"] == "x" and m["shape"] == [2, 3]


def test_mutated_frames_are_refused_with_codec_errors_only():
    """Seeded byte flips and truncations of every valid vector: the codec and the client's
    response decoder either accept the frame or refuse it with their own error, never
    another exception (the Rust codec's guarantee, proptest- and fuzz-checked there)."""
    import random
    from edgeinfer.errors import ProtocolError
    rnd = random.Random(12)
    for v in VALID:
        frame = unhex(v["frame"])
        for _ in range(300):
            b = bytearray(frame)
            for _ in range(rnd.randint(1, 3)):
                b[rnd.randrange(len(b))] = rnd.randrange(256)
            if rnd.random() < 0.2:
                del b[rnd.randrange(len(b)):]
            try:
                c.decode_frame(bytes(b))
            except c.CodecError:
                pass
            if len(b) >= 32 and b[5] == c.PREDICT_RESPONSE:
                try:
                    op, rid, ml, data_offset, total = f.check_header(b, c.DEFAULT_LIMITS)
                    if total == len(b):
                        f.decode_predict_response(b, 32 + ml, data_offset, total)
                except ProtocolError:
                    pass
