"""The edgeinfer wire codec (docs/protocol.md): frame headers, proto3 metadata, tensor layout.

Pure functions on bytes, no IO. The generic message encoder/decoder below is driven by the
schemas of docs/protocol.md §5; the client's hot path (PREDICT out, PREDICT_RESPONSE in) has
hand-specialised versions in client.py that produce the same bytes (the conformance vectors in
proto/tests/vectors/ check both against the Rust codec).
"""

from __future__ import annotations

import math
import struct

import numpy as np

from .errors import InputError, ProtocolError

MAGIC = 0x464E4945
VERSION = 1
HEADER_LEN = 32
ALIGN = 64
FLAG_END_OF_STREAM = 0x0001
KNOWN_FLAGS = FLAG_END_OF_STREAM

HEADER = struct.Struct("<IBBHQIIQ")

# Opcodes (§3).
HELLO = 0x01
PREDICT = 0x02
METADATA = 0x03
HEALTH = 0x04
PREDICT_BY_ENTITY = 0x05
FEEDBACK = 0x06
PUT_FEATURES = 0x07
GET_FEATURES = 0x08
HELLO_RESPONSE = 0x81
PREDICT_RESPONSE = 0x82
METADATA_RESPONSE = 0x83
HEALTH_RESPONSE = 0x84
PREDICT_BY_ENTITY_RESPONSE = 0x85
FEEDBACK_RESPONSE = 0x86
PUT_FEATURES_RESPONSE = 0x87
GET_FEATURES_RESPONSE = 0x88
ERROR = 0xFF
OPCODES = {
    0x01: "HELLO",
    0x02: "PREDICT",
    0x03: "METADATA",
    0x04: "HEALTH",
    0x05: "PREDICT_BY_ENTITY",
    0x06: "FEEDBACK",
    0x07: "PUT_FEATURES",
    0x08: "GET_FEATURES",
    0x81: "HELLO_RESPONSE",
    0x82: "PREDICT_RESPONSE",
    0x83: "METADATA_RESPONSE",
    0x84: "HEALTH_RESPONSE",
    0x85: "PREDICT_BY_ENTITY_RESPONSE",
    0x86: "FEEDBACK_RESPONSE",
    0x87: "PUT_FEATURES_RESPONSE",
    0x88: "GET_FEATURES_RESPONSE",
    0xFF: "ERROR",
}

# Default limits (§8), also what a client may assume without HELLO.
DEFAULT_LIMITS = {
    "max_frame_bytes": 64 << 20,
    "max_meta_bytes": 64 << 10,
    "max_in_flight": 128,
    "max_tensors": 64,
    "max_rank": 8,
}

# Wire dtype codes (§6) <-> numpy little-endian dtypes.
DTYPES = {
    1: np.dtype("<f4"),
    2: np.dtype("<f8"),
    3: np.dtype("<i8"),
    4: np.dtype("<i4"),
    5: np.dtype("u1"),
    6: np.dtype("?"),
}
DTYPE_NAMES = {1: "f32", 2: "f64", 3: "i64", 4: "i32", 5: "u8", 6: "bool"}
DTYPE_CODES = {dt: code for code, dt in DTYPES.items()}
DTYPE_CODES.update({dt.newbyteorder("="): code for code, dt in DTYPES.items()})
CODE_OF_NAME = {name: code for code, name in DTYPE_NAMES.items()}


class CodecError(Exception):
    """A frame this codec refuses; `code` is the wire ErrorCode a receiver answers with and
    `closes` says whether framing is lost (a header error)."""

    def __init__(self, code: int, message: str, closes: bool = False):
        super().__init__(message)
        self.code = code
        self.closes = closes


BAD_FRAME, UNSUPPORTED_VERSION, UNKNOWN_OPCODE, BAD_INPUT, FRAME_TOO_LARGE = 1, 2, 3, 5, 8


def align64(n: int) -> int:
    return (n + 63) & ~63


def frame_layout(meta_len: int, data_len: int) -> tuple[int, int]:
    """(data_offset, total frame length). No padding at all when there is no data."""
    end = HEADER_LEN + meta_len
    if data_len == 0:
        return end, end
    off = align64(end)
    return off, off + data_len


ZEROS = bytes(64)


def padding(n: int) -> bytes:
    """Zero bytes after `n` bytes so what follows starts 64-aligned (a shared buffer)."""
    return ZEROS[: (-n) % 64]


# === varints ===


def varint(v: int) -> bytes:
    if v < 0x80:
        if v < 0:
            v &= (1 << 64) - 1  # int64 as two's complement, 10 bytes
        else:
            return bytes((v,))
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def read_varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise CodecError(BAD_FRAME, "metadata does not decode: truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            if shift >= 63 and result >> 64:
                raise CodecError(BAD_FRAME, "metadata does not decode: varint overflows 64 bits")
            return result, pos
        shift += 7
        if shift > 63:
            raise CodecError(BAD_FRAME, "metadata does not decode: varint too long")


# === messages (§5) ===
# field kinds: str, u32, u64, i64, f64 (double), bool, bytes, optstr (proto3 `optional string`),
# rstr (repeated string), rbytes (repeated bytes), pu32 / pu64 / pi64 (packed repeated
# scalars), ("msg", Name) for a repeated message and ("opt", Name) for a singular one (None =
# absent; present even when empty, as prost's Some(default)).

SCHEMAS: dict[str, list[tuple[int, str, object]]] = {
    "TensorMeta": [(1, "name", "str"), (2, "dtype", "u32"), (3, "shape", "pu64"),
                   (4, "offset", "u64"), (5, "length", "u64")],
    "PredictRequest": [(1, "model", "str"), (2, "version", "optstr"),
                       (3, "inputs", ("msg", "TensorMeta")), (4, "outputs", "rstr"),
                       (5, "deadline_us", "u64"), (6, "routing_key", "bytes")],
    "PredictResponse": [(1, "model", "str"), (2, "version", "str"),
                        (3, "outputs", ("msg", "TensorMeta")), (4, "backend", "str"),
                        (5, "queue_us", "u64"), (6, "compute_us", "u64"),
                        (7, "prediction_id", "u64")],
    "FeedbackRequest": [(1, "prediction_id", "u64"), (2, "entity", "str"),
                        (3, "timestamp_ms", "u64"), (4, "label", "f64")],
    "FeedbackResponse": [(1, "prediction_id", "u64"), (2, "model", "str"), (3, "version", "str"),
                         (4, "arm", "str"), (5, "predicted", "f64")],
    "ErrorResponse": [(1, "code", "u32"), (2, "message", "str"), (3, "retry_after_ms", "u64")],
    "Hello": [(1, "versions", "pu32"), (2, "client", "str"), (3, "token", "str"),
              (4, "shm_ring_bytes", "u64")],
    "HelloResponse": [(1, "version", "u32"), (2, "max_frame_bytes", "u64"),
                      (3, "max_in_flight", "u32"), (4, "server", "str"),
                      (5, "max_meta_bytes", "u32"), (6, "max_tensors", "u32"),
                      (7, "max_rank", "u32"), (8, "shm_ring_bytes", "u64")],
    "MetadataRequest": [(1, "model", "str"), (2, "version", "optstr")],
    "TensorSpecMsg": [(1, "name", "str"), (2, "dtype", "u32"), (3, "shape", "pi64")],
    "ModelMetadata": [(1, "name", "str"), (2, "version", "str"), (3, "versions", "rstr"),
                      (4, "inputs", ("msg", "TensorSpecMsg")),
                      (5, "outputs", ("msg", "TensorSpecMsg")), (6, "backend", "str"),
                      (7, "ready", "bool"), (8, "load_report", "str")],
    "HealthRequest": [],
    "ModelStatus": [(1, "name", "str"), (2, "version", "str"), (3, "backend", "str"),
                    (4, "ready", "bool"), (5, "default", "bool"), (6, "requests", "u64"),
                    (7, "errors", "u64")],
    "HealthResponse": [(1, "ready", "bool"), (2, "models", ("msg", "ModelStatus"))],
    # The feature cache (§3, proto/src/features.rs; worked examples §10.9-10.13).
    "FeatureOverride": [(1, "row", "u32"), (2, "feature", "str"), (3, "value", "f64")],
    "PredictByEntityRequest": [(1, "model", "str"), (2, "version", "optstr"),
                               (3, "keys", "rbytes"), (4, "outputs", "rstr"),
                               (5, "deadline_us", "u64"), (6, "routing_key", "bytes"),
                               (7, "overrides", ("msg", "FeatureOverride")),
                               (8, "schema_version", "u32")],
    "EntityRowReport": [(1, "found", "bool"), (2, "version_mismatch", "bool"),
                        (3, "defaulted", "pu32"), (4, "stale", "pu32"),
                        (5, "event_ts_ms", "i64")],
    "PredictByEntityResponse": [(1, "prediction", ("opt", "PredictResponse")),
                                (2, "rows", ("msg", "EntityRowReport")),
                                (3, "schema_version", "u32")],
    "FeatureValue": [(1, "name", "str"), (2, "value", "f64")],
    "FeatureRowMsg": [(1, "entity", "bytes"), (2, "event_ts_ms", "i64"),
                      (3, "values", ("msg", "FeatureValue"))],
    "PutFeaturesRequest": [(1, "schema_version", "u32"), (2, "rows", ("msg", "FeatureRowMsg"))],
    "PutFeaturesResponse": [(1, "written", "u64"), (2, "skipped_older", "u64")],
    "GetFeaturesRequest": [(1, "entities", "rbytes")],
    "StoredFeatures": [(1, "found", "bool"), (2, "event_ts_ms", "i64"),
                       (3, "schema_version", "u32"), (4, "values", ("msg", "FeatureValue"))],
    "GetFeaturesResponse": [(1, "rows", ("msg", "StoredFeatures"))],
}

# The metadata message of each opcode (None: no message defined in v1).
MESSAGE_OF = {
    HELLO: "Hello",
    PREDICT: "PredictRequest",
    METADATA: "MetadataRequest",
    HEALTH: "HealthRequest",
    HELLO_RESPONSE: "HelloResponse",
    PREDICT_RESPONSE: "PredictResponse",
    METADATA_RESPONSE: "ModelMetadata",
    HEALTH_RESPONSE: "HealthResponse",
    FEEDBACK: "FeedbackRequest",
    FEEDBACK_RESPONSE: "FeedbackResponse",
    PREDICT_BY_ENTITY: "PredictByEntityRequest",
    PREDICT_BY_ENTITY_RESPONSE: "PredictByEntityResponse",
    PUT_FEATURES: "PutFeaturesRequest",
    PUT_FEATURES_RESPONSE: "PutFeaturesResponse",
    GET_FEATURES: "GetFeaturesRequest",
    GET_FEATURES_RESPONSE: "GetFeaturesResponse",
    ERROR: "ErrorResponse",
}
TAKES_DATA = (PREDICT, PREDICT_RESPONSE, PREDICT_BY_ENTITY_RESPONSE)
_DEFAULTS = {"str": "", "u32": 0, "u64": 0, "i64": 0, "f64": 0.0, "bool": False, "bytes": b"",
             "optstr": None, "rstr": (), "rbytes": (), "pu32": (), "pu64": (), "pi64": ()}
_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1


def default_of(kind) -> object:
    if isinstance(kind, tuple):
        return None if kind[0] == "opt" else []
    d = _DEFAULTS[kind]
    return list(d) if isinstance(d, tuple) else d


def _len_field(tag: int, payload: bytes) -> bytes:
    return varint(tag << 3 | 2) + varint(len(payload)) + payload


def encode_message(name: str, fields: dict) -> bytes:
    """proto3 encoding of `fields` (missing keys = defaults), in tag order like prost."""
    out = []
    for tag, key, kind in SCHEMAS[name]:
        v = fields.get(key)
        if v is None:
            continue
        if isinstance(kind, tuple):
            for m in ([v] if kind[0] == "opt" else v):
                out.append(_len_field(tag, encode_message(kind[1], m)))
        elif kind in ("str", "optstr"):
            if v or kind == "optstr":
                out.append(_len_field(tag, v.encode()))
        elif kind == "bytes":
            if v:
                out.append(_len_field(tag, bytes(v)))
        elif kind == "rstr":
            for s in v:
                out.append(_len_field(tag, s.encode()))
        elif kind == "rbytes":
            for b in v:
                out.append(_len_field(tag, bytes(b)))
        elif kind in ("pu32", "pu64", "pi64"):
            if len(v):
                out.append(_len_field(tag, b"".join(varint(int(x)) for x in v)))
        elif kind == "bool":
            if v:
                out.append(bytes((tag << 3, 1)))
        elif kind == "f64":
            # proto3 skips 0.0 (and only +0.0: -0.0 has a sign bit to keep), as prost does.
            if v != 0.0 or math.copysign(1.0, v) < 0:
                out.append(varint(tag << 3 | 1) + struct.pack("<d", v))
        elif v:  # u32, u64, i64
            out.append(varint(tag << 3) + varint(int(v)))
    return b"".join(out)


def _check_scalar(kind, v: int) -> int:
    if kind == "u32":
        return v & _U32  # prost truncates a too-long uint32 varint the same way
    if kind == "i64" or kind == "pi64":
        return v - (1 << 64) if v >> 63 else v
    return v


def decode_message(name: str, buf, start: int = 0, end: int | None = None) -> dict:
    """Decodes proto3 bytes into a dict holding every field (absent = default). Unknown
    fields are skipped; repeated scalars are accepted packed and unpacked."""
    if end is None:
        end = len(buf)
    schema = {tag: (key, kind) for tag, key, kind in SCHEMAS[name]}
    out = {key: default_of(kind) for _, key, kind in SCHEMAS[name]}
    pos = start
    while pos < end:
        key_v, pos = read_varint(buf, pos, end)
        tag, wt = key_v >> 3, key_v & 7
        if tag == 0:
            raise CodecError(BAD_FRAME, "metadata does not decode: field tag 0")
        if wt == 0:
            v, pos = read_varint(buf, pos, end)
            payload = None
        elif wt == 2:
            n, pos = read_varint(buf, pos, end)
            if n > end - pos:
                raise CodecError(BAD_FRAME, "metadata does not decode: field runs past the end")
            payload = (pos, pos + n)
            pos += n
        elif wt == 1:
            payload = (pos, pos + 8)
            pos += 8
            v = None
        elif wt == 5:
            pos += 4
            payload = None
            v = None
        else:
            raise CodecError(BAD_FRAME, f"metadata does not decode: wire type {wt}")
        if pos > end:
            raise CodecError(BAD_FRAME, "metadata does not decode: truncated fixed field")
        if tag not in schema:
            continue
        key, kind = schema[tag]
        # As prost: a known field of the wrong wire type is an error (packed repeated
        # scalars may come either way).
        if kind in ("pu32", "pu64", "pi64"):
            ok = wt in (0, 2)
        elif isinstance(kind, tuple) or kind in ("str", "optstr", "bytes", "rstr", "rbytes"):
            ok = wt == 2
        elif kind == "f64":
            ok = wt == 1
        else:
            ok = wt == 0
        if not ok:
            raise CodecError(BAD_FRAME, f"metadata does not decode: wrong wire type for {key}")
        if isinstance(kind, tuple):
            m = decode_message(kind[1], buf, payload[0], payload[1])
            if kind[0] == "opt":
                out[key] = m  # sent twice, prost merges the two; no sender does, the last is kept
            else:
                out[key].append(m)
        elif kind in ("str", "optstr", "rstr"):
            try:
                s = bytes(buf[payload[0]:payload[1]]).decode()
            except UnicodeDecodeError as e:
                raise CodecError(BAD_FRAME, f"metadata does not decode: {key}: {e}") from None
            if kind == "rstr":
                out[key].append(s)
            else:
                out[key] = s
        elif kind == "bytes":
            out[key] = bytes(buf[payload[0]:payload[1]])
        elif kind == "rbytes":
            out[key].append(bytes(buf[payload[0]:payload[1]]))
        elif kind in ("pu32", "pu64", "pi64"):
            scalar = {"pu32": "u32", "pu64": "u64", "pi64": "i64"}[kind]
            if wt == 0:
                out[key].append(_check_scalar(scalar, v))
            else:
                p, e = payload
                while p < e:
                    x, p = read_varint(buf, p, e)
                    out[key].append(_check_scalar(scalar, x))
        elif kind == "bool":
            out[key] = v != 0
        elif kind == "f64":
            out[key] = struct.unpack_from("<d", bytes(buf[payload[0]:payload[1]]))[0]
        else:
            out[key] = _check_scalar(kind, v)
    return out


# === headers and frames (§2) ===


def encode_header(opcode: int, request_id: int, meta_len: int, data_len: int,
                  flags: int = 0, version: int = VERSION) -> bytes:
    return HEADER.pack(MAGIC, version, opcode, flags, request_id, meta_len, 0, data_len)


def decode_header(buf, limits: dict | None = None) -> dict:
    """Checks a header in the order of §2.1; every failure closes the connection."""
    limits = limits or DEFAULT_LIMITS
    if len(buf) < HEADER_LEN:
        raise CodecError(BAD_FRAME, f"truncated: need 32 bytes, have {len(buf)}", True)
    magic, version, opcode, flags, rid, meta_len, reserved, data_len = HEADER.unpack_from(buf)
    if magic != MAGIC:
        raise CodecError(BAD_FRAME, f"bad magic {magic:#010x}", True)
    if version != VERSION:
        raise CodecError(UNSUPPORTED_VERSION, f"unsupported protocol version {version}", True)
    if reserved != 0:
        raise CodecError(BAD_FRAME, f"reserved header field is {reserved:#x}, must be 0", True)
    if flags & ~KNOWN_FLAGS:
        raise CodecError(BAD_FRAME, f"unknown flag bits {flags & ~KNOWN_FLAGS:#06x}", True)
    if meta_len > limits["max_meta_bytes"]:
        raise CodecError(FRAME_TOO_LARGE, f"metadata of {meta_len} bytes exceeds the limit", True)
    _, total = frame_layout(meta_len, data_len)
    if total > limits["max_frame_bytes"]:
        raise CodecError(FRAME_TOO_LARGE, f"frame of {total} bytes exceeds the limit", True)
    return {"version": version, "opcode": opcode, "flags": flags, "request_id": rid,
            "meta_len": meta_len, "data_len": data_len}


def layout(tensors: list[tuple[str, int, tuple, int]]) -> tuple[list[dict], int]:
    """Canonical layout (§6.1) of (name, dtype code, shape, nbytes): TensorMeta dicts and
    the data section length."""
    metas = []
    nxt = end = 0
    for name, code, shape, nbytes in tensors:
        metas.append({"name": name, "dtype": code, "shape": list(shape), "offset": nxt,
                      "length": nbytes})
        end = nxt + nbytes
        nxt = align64(end)
    return metas, end


def validate_tensors(metas: list[dict], data_len: int, limits: dict | None = None) -> None:
    """The checks of §6.1, with the codes of its table (same order as the Rust codec)."""
    limits = limits or DEFAULT_LIMITS
    if len(metas) > limits["max_tensors"]:
        raise CodecError(BAD_INPUT, f"{len(metas)} tensors exceed the limit")
    nxt = end = 0
    seen = set()
    for i, m in enumerate(metas):
        name = m["name"]
        if not name:
            raise CodecError(BAD_INPUT, f"tensor {i}: empty name")
        if name in seen:
            raise CodecError(BAD_INPUT, f"tensor {i} ({name!r}): name appears twice")
        seen.add(name)
        dt = DTYPES.get(m["dtype"])
        if dt is None:
            raise CodecError(BAD_INPUT, f"tensor {i} ({name!r}): unknown dtype code {m['dtype']}")
        if len(m["shape"]) > limits["max_rank"]:
            raise CodecError(BAD_INPUT, f"tensor {i} ({name!r}): rank above the limit")
        n = dt.itemsize
        for d in m["shape"]:
            n *= d
        if n > _U64:
            raise CodecError(BAD_INPUT, f"tensor {i} ({name!r}): byte size overflows u64")
        if n != m["length"]:
            raise CodecError(BAD_INPUT, f"tensor {i} ({name!r}): length is {m['length']}, "
                             f"dtype and shape need {n}")
        if m["offset"] != nxt:
            raise CodecError(BAD_FRAME, f"tensor {i} ({name!r}): offset is {m['offset']}, "
                             f"the canonical layout puts it at {nxt}")
        end = m["offset"] + n
        if end > data_len:
            raise CodecError(BAD_FRAME, f"tensor data section is {data_len} bytes, "
                             f"the tensors need {end}")
        nxt = align64(end)
    if end != data_len:
        raise CodecError(BAD_FRAME, f"tensor data section is {data_len} bytes, the tensors "
                         f"need {end}")


def _tensor_holder(opcode: int, message: dict) -> tuple[dict, str]:
    """(the dict, its key) holding the TensorMeta list of a frame that carries tensors."""
    if opcode == PREDICT:
        return message, "inputs"
    if opcode == PREDICT_BY_ENTITY_RESPONSE:
        return message["prediction"], "outputs"
    return message, "outputs"


def encode_frame(opcode: int, request_id: int, message: dict | None = None,
                 tensors: list[np.ndarray] | None = None, message_name: str | None = None,
                 flags: int = 0) -> bytes:
    """A whole frame as bytes (tests, vectors, rare messages). For PREDICT, PREDICT_RESPONSE
    and PREDICT_BY_ENTITY_RESPONSE (its `prediction`'s outputs), `tensors` are named by the message's inputs/outputs, which are laid
    out here: each dict needs only `name`; dtype, shape, offset and length are filled in."""
    name = message_name or MESSAGE_OF[opcode]
    message = dict(message or {})
    parts = []
    data_len = 0
    if tensors is not None:
        if opcode == PREDICT_BY_ENTITY_RESPONSE:
            # The outputs are those of the embedded PredictResponse.
            message["prediction"] = dict(message.get("prediction") or {})
        holder, key = _tensor_holder(opcode, message)
        specs = []
        # tobytes() is row-major whatever the array's strides; astype keeps 0-d arrays 0-d.
        tensors = [np.asarray(a).astype(a.dtype.newbyteorder("<"), copy=False) for a in tensors]
        for meta, arr in zip(holder[key], tensors):
            specs.append((meta["name"], DTYPE_CODES[arr.dtype], arr.shape, arr.nbytes))
        holder[key], data_len = layout(specs)
        for i, arr in enumerate(tensors):
            b = arr.tobytes()
            parts.append(b)
            if i != len(tensors) - 1:
                parts.append(padding(len(b)))
    meta = encode_message(name, message)
    data_offset, _ = frame_layout(len(meta), data_len)
    head = encode_header(opcode, request_id, len(meta), data_len, flags)
    return head + meta + bytes(data_offset - HEADER_LEN - len(meta)) + b"".join(parts)


def decode_frame(buf, limits: dict | None = None) -> tuple[dict, dict | None, list]:
    """Decodes one whole frame: (header, message dict or None for reserved opcodes, tensors
    as numpy views over `buf`). Raises CodecError with the code a receiver answers."""
    limits = limits or DEFAULT_LIMITS
    h = decode_header(buf, limits)
    data_offset, total = frame_layout(h["meta_len"], h["data_len"])
    if len(buf) != total:
        raise CodecError(BAD_FRAME, f"frame body is {len(buf) - HEADER_LEN} bytes, the header "
                         f"says {total - HEADER_LEN}")
    meta_end = HEADER_LEN + h["meta_len"]
    if any(bytes(buf[meta_end:data_offset])):
        raise CodecError(BAD_FRAME, "padding between metadata and tensor data is not zero")
    op = h["opcode"]
    if op not in OPCODES:
        raise CodecError(UNKNOWN_OPCODE, f"unknown opcode {op:#04x}")
    name = MESSAGE_OF.get(op)
    if name is None:
        return h, None, []
    if op not in TAKES_DATA and h["data_len"]:
        raise CodecError(BAD_FRAME, f"{OPCODES[op]} carries {h['data_len']} bytes of tensor "
                         "data but takes none")
    msg = decode_message(name, buf, HEADER_LEN, meta_end)
    tensors = []
    if op in TAKES_DATA:
        if op == PREDICT_BY_ENTITY_RESPONSE and msg["prediction"] is None:
            # As the Rust codec: an absent prediction reads as an empty one.
            msg["prediction"] = decode_message("PredictResponse", b"")
        holder, key = _tensor_holder(op, msg)
        validate_tensors(holder[key], h["data_len"], limits)
        if op == PREDICT and len(msg["outputs"]) > limits["max_tensors"]:
            raise CodecError(BAD_INPUT, f"{len(msg['outputs'])} outputs exceed the limit")
        for m in holder[key]:
            dt = DTYPES[m["dtype"]]
            n = m["length"] // dt.itemsize
            a = np.frombuffer(buf, dtype=dt, count=n, offset=data_offset + m["offset"])
            tensors.append(a.reshape(m["shape"]))
    return h, msg, tensors


# === the feature cache (§3: PREDICT_BY_ENTITY, PUT_FEATURES, GET_FEATURES) ===
# Request fields are built and checked here, shared by the blocking and asyncio clients;
# what the server alone can check (the schema, the store) it refuses with BAD_INPUT or
# FEATURE_STORE.


def entity_key(key) -> bytes:
    """An entity key as the wire carries it: str as UTF-8, bytes-like as is."""
    if isinstance(key, str):
        b = key.encode()
    elif isinstance(key, (bytes, bytearray, memoryview)):
        b = bytes(key)
    else:
        raise InputError(f"an entity key is str or bytes, not {type(key).__name__}")
    if not b:
        raise InputError("an entity key is empty")
    return b


def entity_keys(keys) -> list[bytes]:
    """One key (str or bytes) or an iterable of them."""
    if isinstance(keys, (str, bytes, bytearray, memoryview)):
        return [entity_key(keys)]
    return [entity_key(k) for k in keys]


def _number(v, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise InputError(f"{what} is a number, not {type(v).__name__}")
    return float(v)


def predict_by_entity_fields(model: str, keys, version=None, overrides=None, outputs=None,
                             deadline_us=None, routing_key=None, schema_version: int = 0
                             ) -> dict:
    """The PredictByEntityRequest of a call. `overrides`: {row: {feature: value}} or an
    iterable of (row, feature, value), rows indexing `keys`."""
    ks = entity_keys(keys)
    if not ks:
        raise InputError("PREDICT_BY_ENTITY needs at least one entity key")
    if overrides is None:
        items = []
    elif hasattr(overrides, "items"):
        items = [(r, name, v) for r, fv in overrides.items() for name, v in fv.items()]
    else:
        items = [tuple(o) for o in overrides]
    ovs = []
    for o in items:
        if len(o) != 3:
            raise InputError(f"an override is (row, feature, value), not {o!r}")
        row, name, v = o
        if isinstance(row, bool) or not isinstance(row, (int, np.integer)) \
                or not 0 <= row < len(ks):
            raise InputError(f"an override names row {row!r} of a request with {len(ks)} keys")
        if not isinstance(name, str) or not name:
            raise InputError(f"an override names feature {name!r}: a non-empty str")
        ovs.append({"row": int(row), "feature": name,
                    "value": _number(v, f"override {name!r} of row {row}")})
    if isinstance(outputs, str):
        outputs = [outputs]
    rk = routing_key.encode() if isinstance(routing_key, str) else bytes(routing_key or b"")
    if not 0 <= int(schema_version) < (1 << 32):
        raise InputError(f"schema_version {schema_version} is not a u32")
    return {"model": model, "version": version, "keys": ks, "outputs": list(outputs or []),
            "deadline_us": int(deadline_us or 0), "routing_key": rk, "overrides": ovs,
            "schema_version": int(schema_version)}


def put_features_fields(rows, schema_version: int) -> dict:
    """The PutFeaturesRequest of a call. Each row is (entity, event_ts_ms, {name: value}) or
    a dict with those keys (`entity`, `event_ts_ms`, `values`); a value of None is left
    absent (the store serves the default)."""
    out = []
    for r in rows:
        if isinstance(r, dict):
            try:
                entity, ts, values = r["entity"], r["event_ts_ms"], r["values"]
            except KeyError as e:
                raise InputError(f"a feature row needs {e.args[0]!r}") from None
        else:
            try:
                entity, ts, values = r
            except (TypeError, ValueError):
                raise InputError("a feature row is (entity, event_ts_ms, {name: value})") \
                    from None
        if isinstance(ts, bool) or not isinstance(ts, (int, np.integer)):
            raise InputError(f"event_ts_ms is an int (Unix ms), not {type(ts).__name__}")
        if not hasattr(values, "items"):
            raise InputError("a feature row's values are {name: value}")
        vs = [{"name": n, "value": _number(v, f"feature {n!r}")}
              for n, v in values.items() if v is not None]
        out.append({"entity": entity_key(entity), "event_ts_ms": int(ts), "values": vs})
    if not 0 <= int(schema_version) < (1 << 32):
        raise InputError(f"schema_version {schema_version} is not a u32")
    return {"schema_version": int(schema_version), "rows": out}


def stored_features(msg: dict) -> list[dict]:
    """GET_FEATURES_RESPONSE rows as {found, event_ts_ms, schema_version, values: {name:
    value}} (values in the stored layout's order; empty when not found)."""
    return [{"found": r["found"], "event_ts_ms": r["event_ts_ms"],
             "schema_version": r["schema_version"],
             "values": {v["name"]: v["value"] for v in r["values"]}} for r in msg["rows"]]


class EntityPrediction:
    """The answer to PREDICT_BY_ENTITY: `outputs` ({name: numpy array}, views over the
    received frame, as `predict` returns), `rows` (one report per key, in order:
    {found, version_mismatch, defaulted, stale, event_ts_ms}, feature indexes in the
    model's feature order), `schema_version`, and the PREDICT_RESPONSE's `model`,
    `version`, `backend`, `queue_us`, `compute_us`, `prediction_id`. `result[name]` is
    `result.outputs[name]`."""

    __slots__ = ("outputs", "rows", "schema_version", "model", "version", "backend",
                 "queue_us", "compute_us", "prediction_id")

    def __getitem__(self, name: str):
        return self.outputs[name]

    def __repr__(self):
        return (f"EntityPrediction(outputs={sorted(self.outputs)}, rows={self.rows!r}, "
                f"schema_version={self.schema_version}, version={self.version!r})")


def decode_entity_response(buf, meta_end: int, data_offset: int, total: int,
                           limits: dict | None = None) -> EntityPrediction:
    """A PREDICT_BY_ENTITY_RESPONSE whose header was checked: outputs viewed in place."""
    try:
        msg = decode_message("PredictByEntityResponse", buf, HEADER_LEN, meta_end)
        p = msg["prediction"] or decode_message("PredictResponse", b"")
        data_len = total - data_offset
        validate_tensors(p["outputs"], data_len, limits)
    except CodecError as e:
        raise ProtocolError(f"unreadable PREDICT_BY_ENTITY_RESPONSE: {e}") from None
    r = EntityPrediction()
    r.outputs = {}
    for m in p["outputs"]:
        dt = DTYPES[m["dtype"]]
        a = np.frombuffer(buf, dtype=dt, count=m["length"] // dt.itemsize,
                          offset=data_offset + m["offset"])
        r.outputs[m["name"]] = a.reshape(m["shape"])
    r.rows = msg["rows"]
    r.schema_version = msg["schema_version"]
    r.model, r.version, r.backend = p["model"], p["version"], p["backend"]
    r.queue_us, r.compute_us, r.prediction_id = p["queue_us"], p["compute_us"], \
        p["prediction_id"]
    return r
