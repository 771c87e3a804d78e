"""The hot path shared by Client and AsyncClient: PREDICT encoded straight from the caller's
arrays into send parts, answers decoded into numpy views over the received frame.

The bytes are the same as _codec's generic encoder (and the Rust codec's); this module only
precomputes and caches the parts that do not change between calls of one model.
"""

from __future__ import annotations

import math

import numpy as np

from . import _codec as c
from .errors import InputError, ProtocolError, server_error

_HEADER_PACK = c.HEADER.pack
_HEADER_UNPACK = c.HEADER.unpack_from
_MAGIC = c.MAGIC
_ZEROS = c.ZEROS
_varint = c.varint
_FLOATS = (1, 2)
_sum = np.add.reduce
_frombuffer = np.frombuffer
_isfinite = math.isfinite


def byte_view(part) -> memoryview:
    """A flat byte view of one send part (memoryview.cast refuses arrays with a 0 in their
    shape)."""
    if isinstance(part, np.ndarray):
        return memoryview(part.reshape(-1).view(np.uint8))
    return memoryview(part).cast("B")


def _len_field(key: int, payload: bytes) -> bytes:
    return bytes((key,)) + _varint(len(payload)) + payload


class InputSpec:
    """One declared model input, with its pre-encoded TensorMeta prefix (name, dtype)."""

    __slots__ = ("name", "code", "dtype", "shape", "prefix", "finite", "ok_shapes")

    def __init__(self, name: str, code: int, shape: list[int]):
        self.name = name
        self.code = code
        self.dtype = c.DTYPES.get(code)
        self.shape = tuple(shape)
        self.prefix = _len_field(0x0A, name.encode()) + bytes((0x10, code))
        self.finite = code in _FLOATS
        # Shapes already checked against the declaration, each with its encoded field 3.
        self.ok_shapes: dict[tuple, bytes] = {}

    def shape_field(self, shape: tuple) -> bytes | None:
        f = self.ok_shapes.get(shape)
        if f is not None:
            return f
        if len(shape) != len(self.shape) or any(
            d != -1 and d != s for d, s in zip(self.shape, shape)
        ):
            return None
        f = _len_field(0x1A, b"".join(_varint(d) for d in shape)) if shape else b""
        if len(self.ok_shapes) < 64:
            self.ok_shapes[shape] = f
        return f


class ModelSpec:
    """What the client checks a model's inputs against: its METADATA, cached per
    (model, version pin)."""

    __slots__ = ("name", "version", "inputs", "outputs", "model_field", "version_field",
                 "metadata")

    def __init__(self, model: str, pin: str | None, md: dict):
        self.name = model
        self.version = md["version"]
        self.metadata = md
        self.inputs = {s["name"]: InputSpec(s["name"], s["dtype"], s["shape"])
                       for s in md["inputs"]}
        self.outputs = [s["name"] for s in md["outputs"]]
        self.model_field = _len_field(0x0A, model.encode())
        self.version_field = b"" if pin is None else _len_field(0x12, pin.encode())


def _describe(shape) -> str:
    return "[" + ", ".join("?" if d == -1 else str(d) for d in shape) + "]"


def unchecked_spec(model: str, pin: str | None) -> ModelSpec:
    """For validate=False: no METADATA round trip, inputs taken as given."""
    return ModelSpec(model, pin, {"version": "", "inputs": [], "outputs": []})


def encode_predict(spec: ModelSpec, request_id: int, inputs: dict, outputs, deadline_us,
                   routing_key, validate: bool, allow_non_finite: bool, limits: dict):
    """Checks `inputs` and returns (parts, total bytes): the frame head (header, metadata,
    padding) then each array's own buffer and the zero padding after it. Raises InputError
    before anything is sent."""
    if type(inputs) is not dict:
        inputs = dict(inputs)
    tms = []
    arrays = []
    off = 0
    end = 0
    specs = spec.inputs
    for name, arr in inputs.items():
        if type(arr) is not np.ndarray:
            if not isinstance(arr, np.ndarray):
                raise InputError(f"input {name!r} is a {type(arr).__name__}, not a numpy array")
        if validate:
            s = specs.get(name)
            if s is None:
                raise InputError(f"model {spec.name!r} has no input {name!r} "
                                 f"(inputs: {list(specs)})")
            if arr.dtype != s.dtype:
                if s.dtype is not None and arr.dtype.kind == s.dtype.kind \
                        and arr.dtype.itemsize == s.dtype.itemsize:
                    # Same type, big-endian: sent as a little-endian copy.
                    arr = arr.astype(s.dtype)
                else:
                    raise InputError(
                        f"input {name!r} has dtype {arr.dtype}, model {spec.name!r} declares "
                        f"{c.DTYPE_NAMES.get(s.code, s.code)} ({s.dtype})")
            shape = arr.shape
            sf = s.shape_field(shape)
            if sf is None:
                raise InputError(f"input {name!r} has shape {list(shape)}, model "
                                 f"{spec.name!r} declares {_describe(s.shape)}")
            prefix = s.prefix
            # The sum is finite unless an element is NaN/inf (or the sum overflows, which
            # the exact check then rules out): one reduction instead of a boolean array.
            if s.finite and not allow_non_finite and not _isfinite(_sum(arr, None)) \
                    and not np.isfinite(arr).all():
                i = int(np.flatnonzero(~np.isfinite(arr.reshape(-1)))[0])
                raise InputError(f"input {name!r} has a NaN or infinite value at element {i} "
                                 "(the server refuses them; Client(allow_non_finite=True) if "
                                 "it is configured with engine.allow_non_finite)")
        else:
            code = c.DTYPE_CODES.get(arr.dtype)
            if code is None:
                if arr.dtype.newbyteorder("<") in c.DTYPE_CODES:
                    arr = arr.astype(arr.dtype.newbyteorder("<"))
                    code = c.DTYPE_CODES[arr.dtype]
                else:
                    raise InputError(f"input {name!r}: dtype {arr.dtype} has no wire type")
            shape = arr.shape
            prefix = _len_field(0x0A, name.encode()) + bytes((0x10, code))
            sf = _len_field(0x1A, b"".join(_varint(d) for d in shape)) if shape else b""
        if not arr.flags.c_contiguous:
            # The wire wants row-major bytes: a strided view goes as a contiguous copy.
            arr = np.ascontiguousarray(arr)
        n = arr.nbytes
        tm = prefix + sf
        if off:
            tm += b"\x20" + _varint(off)
        if n:
            tm += b"\x28" + _varint(n)
        tms.append(b"\x1a" + _varint(len(tm)) + tm)
        if arrays and end != off:
            arrays.append(_ZEROS[: off - end])
        arrays.append(arr)
        end = off + n
        off = (end + 63) & ~63
    if validate and len(inputs) != len(specs):
        missing = [k for k in specs if k not in inputs]
        raise InputError(f"model {spec.name!r} takes input(s) {missing}, which the call does "
                         "not give")
    if len(tms) > limits["max_tensors"]:
        raise InputError(f"{len(tms)} inputs exceed the server's limit of "
                         f"{limits['max_tensors']}")
    meta = spec.model_field + spec.version_field + b"".join(tms)
    if outputs:
        if isinstance(outputs, str):
            outputs = (outputs,)
        if validate and spec.outputs:
            for o in outputs:
                if o not in spec.outputs:
                    raise InputError(f"model {spec.name!r} has no output {o!r} "
                                     f"(outputs: {spec.outputs})")
        meta += b"".join(_len_field(0x22, o.encode()) for o in outputs)
    if deadline_us:
        meta += b"\x28" + _varint(deadline_us)
    if routing_key:
        if isinstance(routing_key, str):
            routing_key = routing_key.encode()
        meta += _len_field(0x32, bytes(routing_key))
    ml = len(meta)
    if end:
        data_offset = (32 + ml + 63) & ~63
        head = _HEADER_PACK(_MAGIC, 1, 2, 0, request_id, ml, 0, end) + meta + \
            _ZEROS[: data_offset - 32 - ml]
    else:
        data_offset = 32 + ml
        head = _HEADER_PACK(_MAGIC, 1, 2, 0, request_id, ml, 0, 0) + meta
    total = data_offset + end
    if ml > limits["max_meta_bytes"] or total > limits["max_frame_bytes"]:
        raise InputError(f"the request frame would be {total} bytes ({ml} of metadata); the "
                         f"server's limits are {limits['max_frame_bytes']} and "
                         f"{limits['max_meta_bytes']}")
    arrays.insert(0, head)
    return arrays, total


def hello_fields(client_name: str, token: str | None) -> dict:
    return {"versions": [1], "client": client_name, "token": token or ""}


def apply_hello(limits: dict, hr: dict) -> None:
    """Takes the server's limits from a HELLO_RESPONSE (0 = not said: keep the default)."""
    for k in ("max_frame_bytes", "max_meta_bytes", "max_in_flight", "max_tensors", "max_rank"):
        if hr[k]:
            limits[k] = hr[k]


def status_of(endpoint: str, hr: dict, health: dict) -> dict:
    """What `edgeinfer status --json` prints."""
    return {"endpoint": endpoint, "server": hr["server"], "protocol": hr["version"],
            "max_frame_bytes": hr["max_frame_bytes"], "max_in_flight": hr["max_in_flight"],
            "ready": health["ready"], "models": health["models"]}


def named_dtypes(md: dict) -> dict:
    for t in md["inputs"] + md["outputs"]:
        t["dtype_name"] = c.DTYPE_NAMES.get(t["dtype"], str(t["dtype"]))
    return md


def encode_message_frame(opcode: int, request_id: int, name: str, fields: dict) -> bytes:
    meta = c.encode_message(name, fields)
    return _HEADER_PACK(_MAGIC, 1, opcode, 0, request_id, len(meta), 0, 0) + meta


def check_header(buf, limits: dict):
    """(opcode, request_id, meta_len, data_offset, total) of a received header; a header this
    client cannot read is a ProtocolError (framing is lost)."""
    magic, version, op, flags, rid, ml, reserved, dl = _HEADER_UNPACK(buf)
    if magic != _MAGIC or version != 1 or reserved or flags & ~c.KNOWN_FLAGS:
        raise ProtocolError(f"the server sent an unreadable header: {bytes(buf[:32]).hex()}")
    if dl:
        data_offset = (32 + ml + 63) & ~63
    else:
        data_offset = 32 + ml
    return op, rid, ml, data_offset, data_offset + dl


# Decoded TensorMeta of outputs, by their encoded bytes: the answers of one model repeat the
# same few, so each is decoded and checked once.
_TM_CACHE: dict[bytes, tuple] = {}


def _decode_tm(raw: bytes) -> tuple:
    try:
        m = c.decode_message("TensorMeta", raw)
    except c.CodecError as e:
        raise ProtocolError(f"undecodable output metadata: {e}") from None
    dt = c.DTYPES.get(m["dtype"])
    if dt is None or not m["name"]:
        raise ProtocolError(f"output {m['name']!r} has dtype code {m['dtype']}")
    count = 1
    for d in m["shape"]:
        count *= d
    if count * dt.itemsize != m["length"]:
        raise ProtocolError(f"output {m['name']!r}: length {m['length']} does not match its "
                            "dtype and shape")
    t = (m["name"], dt, tuple(m["shape"]), m["offset"], m["length"], count)
    if len(_TM_CACHE) < 4096:
        _TM_CACHE[raw] = t
    return t


def decode_predict_response(buf, meta_end: int, data_offset: int, total: int):
    """(outputs dict of numpy views over `buf`, version, backend, queue_us, compute_us)."""
    try:
        return _decode_predict_response(buf, meta_end, data_offset, total)
    except (IndexError, ValueError, c.CodecError) as e:  # UnicodeDecodeError is a ValueError
        # CodecError: a multi-byte varint cut off by the end of the metadata.
        raise ProtocolError(f"unreadable PREDICT_RESPONSE: {e}") from None


def _decode_predict_response(buf, meta_end, data_offset, total):
    # Every v1 field is one key byte then a varint (a value or a length): read both at once.
    pos = 32
    outputs = {}
    version = backend = ""
    queue_us = compute_us = 0
    nxt = 0
    end = 0
    data_len = total - data_offset
    cache = _TM_CACHE
    while pos < meta_end:
        if pos + 1 >= meta_end:
            raise ProtocolError("PREDICT_RESPONSE metadata is truncated")
        key = buf[pos]
        n = buf[pos + 1]
        if n >= 0x80:
            n, pos = c.read_varint(buf, pos + 1, meta_end)
        else:
            pos += 2
        if key == 0x1A:
            raw = bytes(buf[pos:pos + n])
            pos += n
            name, dt, shape, off, length, count = cache.get(raw) or _decode_tm(raw)
            if off != nxt or off + length > data_len or name in outputs:
                raise ProtocolError(f"output {name!r} is not where the canonical layout puts it")
            end = off + length
            nxt = (end + 63) & ~63
            a = _frombuffer(buf, dt, count, data_offset + off)
            outputs[name] = a.reshape(shape) if len(shape) != 1 else a
        elif key == 0x12:
            version = buf[pos:pos + n].decode()
            pos += n
        elif key == 0x22:
            backend = buf[pos:pos + n].decode()
            pos += n
        elif key == 0x0A:
            pos += n
        elif key == 0x28:
            queue_us = n
        elif key == 0x30:
            compute_us = n
        elif key == 0x38:
            pass  # prediction_id (telemetry on): not part of this tuple
        else:
            # Anything unusual (a field added later, a multi-byte key): the generic decoder.
            return _decode_predict_response_slow(buf, meta_end, data_offset, total)
    if pos != meta_end or end != data_len:
        raise ProtocolError("PREDICT_RESPONSE metadata and data section do not agree")
    return outputs, version, backend, queue_us, compute_us


def _decode_predict_response_slow(buf, meta_end, data_offset, total):
    try:
        m = c.decode_message("PredictResponse", buf, 32, meta_end)
        c.validate_tensors(m["outputs"], total - data_offset)
    except c.CodecError as e:
        raise ProtocolError(f"unreadable PREDICT_RESPONSE: {e}") from None
    outputs = {}
    for t in m["outputs"]:
        dt = c.DTYPES[t["dtype"]]
        a = np.frombuffer(buf, dt, t["length"] // dt.itemsize, data_offset + t["offset"])
        outputs[t["name"]] = a.reshape(t["shape"])
    return outputs, m["version"], m["backend"], m["queue_us"], m["compute_us"]


def decode_error(buf, meta_end: int, request_id: int):
    try:
        m = c.decode_message("ErrorResponse", buf, 32, meta_end)
    except c.CodecError as e:
        raise ProtocolError(f"unreadable ERROR frame: {e}") from None
    return server_error(m["code"], m["message"], m["retry_after_ms"], request_id)


def decode_reply(buf, opcode: int, want: int, meta_end: int, request_id: int) -> dict:
    """The message of a non-PREDICT answer, or raises its ERROR."""
    if opcode == c.ERROR:
        raise decode_error(buf, meta_end, request_id)
    if opcode != want:
        raise ProtocolError(f"expected {c.OPCODES[want]}, got opcode {opcode:#04x}")
    try:
        return c.decode_message(c.MESSAGE_OF[want], buf, 32, meta_end)
    except c.CodecError as e:
        raise ProtocolError(f"unreadable {c.OPCODES[want]}: {e}") from None
