"""The blocking client: one connection, one request at a time; and a pool of them for threads.

Timeouts are the kernel's (SO_RCVTIMEO/SO_SNDTIMEO on a blocking socket) rather than Python's
socket timeouts, which poll() before every send and receive: two extra syscalls per call.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import struct
import threading

from . import _codec as c
from . import _fast as f
from .errors import ConnectionClosed, ProtocolError, Timeout, Unavailable

CLIENT_NAME = "edgeinfer-python/0.1"


def parse_target(unix, tcp):
    if (unix is None) == (tcp is None):
        raise ValueError("give exactly one of unix=PATH or tcp=(host, port)")
    if tcp is not None:
        if isinstance(tcp, str):
            host, _, port = tcp.rpartition(":")
            tcp = (host.strip("[]"), int(port))
        return ("tcp", (tcp[0], int(tcp[1])))
    return ("unix", str(unix))


def open_socket(target, connect_timeout):
    """A connected blocking socket (TCP_NODELAY on TCP); Unavailable or Timeout if not."""
    kind, addr = target
    try:
        if kind == "unix":
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(connect_timeout)
            try:
                s.connect(addr)
            except BaseException:
                s.close()
                raise
        else:
            s = socket.create_connection(addr, timeout=connect_timeout)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except socket.timeout:
        raise Timeout(f"no connection to {describe(target)} within {connect_timeout} s") from None
    except OSError as e:
        raise Unavailable(f"cannot connect to {describe(target)}: {e}") from e
    s.settimeout(None)
    return s


def describe(target) -> str:
    kind, addr = target
    return f"unix:{addr}" if kind == "unix" else f"tcp:{addr[0]}:{addr[1]}"


def _timeval(seconds) -> bytes:
    if not seconds:
        return struct.pack("ll", 0, 0)  # 0 = wait forever
    us = max(1, int(seconds * 1e6))
    return struct.pack("ll", us // 1_000_000, us % 1_000_000)


class Stats:
    """Counters of one client: requests sent, bytes sent and received, reconnections."""

    __slots__ = ("requests", "bytes_sent", "bytes_received", "connects")

    def __init__(self):
        self.requests = self.bytes_sent = self.bytes_received = self.connects = 0

    def __repr__(self):
        return (f"Stats(requests={self.requests}, bytes_sent={self.bytes_sent}, "
                f"bytes_received={self.bytes_received}, connects={self.connects})")


class Client:
    """A connection to edgeinferd over its binary protocol (docs/protocol.md).

    `Client(unix="/run/edgeinfer/edgeinferd.sock")` or `Client(tcp=("host", 7700),
    token="...")`. Not for use by several threads at once (it serialises them with a lock);
    use `ClientPool` for that. The connection is opened here and reopened by the next call
    after any error the spec says closes it (and after a timeout).

    - `timeout`: seconds a call waits for each part of its answer (None = forever).
    - `connect_timeout`: seconds to connect (and for HELLO).
    - `hello`: send HELLO on connect to learn the server's limits (always when `token`).
    - `validate`: check inputs against the model's METADATA before sending (fetched once per
      model and version pin). With it off, the server alone checks them.
    - `allow_non_finite`: accept NaN/inf in float inputs. The server refuses them unless it
      runs with `engine.allow_non_finite = true`; METADATA does not say which, so the
      client mirrors the server's default.
    """

    def __init__(self, unix=None, tcp=None, *, token: str | None = None,
                 timeout: float | None = 60.0, connect_timeout: float = 5.0,
                 hello: bool = True, validate: bool = True, allow_non_finite: bool = False,
                 client_name: str = CLIENT_NAME):
        self._target = parse_target(unix, tcp)
        self._token = token
        self._timeout = timeout
        self._sock_timeout = None
        self._connect_timeout = connect_timeout
        self._hello = hello or bool(token)
        self.validate = validate
        self.allow_non_finite = allow_non_finite
        self._client_name = client_name
        self._lock = threading.Lock()
        self._sock = None
        self._rid = 0
        self._specs: dict = {}
        # The first read of an answer: small answers arrive in one recv_into; a larger one
        # gets a buffer of its own size and only these bytes are copied.
        self._guess = 4096
        self.server: dict | None = None
        self.limits = dict(c.DEFAULT_LIMITS)
        self.stats = Stats()
        self.last_response: tuple = ("", "", 0, 0)
        with self._lock:
            self._connect()

    # === connection ===

    def _connect(self):
        s = open_socket(self._target, self._connect_timeout)
        self._sock = s
        self._sock_timeout = None
        self.stats.connects += 1
        if self._hello:
            self._set_timeout(self._connect_timeout)
            try:
                msg = f.hello_fields(self._client_name, self._token)
                rid = self._next_id()
                frame = f.encode_message_frame(c.HELLO, rid, "Hello", msg)
                buf, op, ml, _, _ = self._exchange([frame], len(frame), rid)
                hr = f.decode_reply(buf, op, c.HELLO_RESPONSE, 32 + ml, rid)
            except BaseException:
                self._close()
                raise
            self.server = hr
            f.apply_hello(self.limits, hr)
        self._set_timeout(self._timeout)

    def _set_timeout(self, t):
        if t != self._sock_timeout:
            tv = _timeval(t)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
            self._sock_timeout = t

    def _close(self):
        s, self._sock = self._sock, None
        if s is not None:
            s.close()

    def close(self):
        with self._lock:
            self._close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def _next_id(self) -> int:
        self._rid = self._rid + 1 if self._rid < (1 << 64) - 1 else 1
        return self._rid

    # === one exchange ===

    def _exchange(self, parts, total, rid):
        """Sends `parts` and reads the answer frame. Returns (buffer, opcode, meta_len,
        data_offset, total). Closes the connection on any failure of the stream."""
        sock = self._sock
        try:
            n = sock.sendmsg(parts)
            if n != total:
                self._send_rest(parts, n)
            self.stats.requests += 1
            self.stats.bytes_sent += total
            buf = bytearray(self._guess)
            view = memoryview(buf)
            got = sock.recv_into(view)
            while got < 32:
                if got == 0 or (k := sock.recv_into(view[got:])) == 0:
                    raise ConnectionClosed("the server closed the connection before answering")
                got += k
            op, arid, ml, data_offset, ftotal = f.check_header(buf, self.limits)
            if ftotal > len(buf):
                big = bytearray(ftotal)
                big[:got] = view[:got]
                buf, view = big, memoryview(big)
            while got < ftotal:
                k = sock.recv_into(view[got:ftotal])
                if k == 0:
                    raise ConnectionClosed("the server closed the connection mid-answer")
                got += k
        except BlockingIOError:
            # SO_RCVTIMEO/SO_SNDTIMEO expired: the answer may still come, so the stream is
            # no longer in step with our requests.
            self._close()
            raise Timeout(f"no answer from {describe(self._target)} within "
                          f"{self._sock_timeout} s") from None
        except ProtocolError:
            self._close()
            raise
        except ConnectionClosed:
            self._close()
            raise
        except OSError as e:
            self._close()
            raise ConnectionClosed(f"connection to {describe(self._target)} failed: {e}") from e
        if got > ftotal or (arid != rid and arid != 0):
            self._close()
            raise ProtocolError(f"answer for request {arid} (sent {rid}), or bytes after it")
        if len(buf) != ftotal:
            # Outputs keep the frame alive: let them keep only the frame.
            view.release()
            del buf[ftotal:]
        self.stats.bytes_received += ftotal
        if op == c.ERROR:
            err = f.decode_error(buf, 32 + ml, rid)
            if err.closes:
                self._close()
            raise err
        return buf, op, ml, data_offset, ftotal

    def _send_rest(self, parts, sent):
        for p in parts:
            mv = f.byte_view(p)
            if sent >= len(mv):
                sent -= len(mv)
                continue
            self._sock.sendall(mv[sent:])
            sent = 0

    def _call(self, opcode, want, name, fields):
        with self._lock:
            if self._sock is None:
                self._connect()
            rid = self._next_id()
            frame = f.encode_message_frame(opcode, rid, name, fields)
            buf, op, ml, _, _ = self._exchange([frame], len(frame), rid)
            return f.decode_reply(buf, op, want, 32 + ml, rid)

    # === API ===

    def predict(self, model: str, inputs: dict, version: str | None = None,
                outputs=None, deadline_us: int | None = None, routing_key=None,
                timeout: float | None = -1.0) -> dict:
        """Runs `model` on `inputs` ({name: numpy array}) and returns {name: array}: views
        over the received frame, no copies. `outputs` picks outputs by name (default all);
        `deadline_us` is the server-side queueing budget; `routing_key` picks an A/B arm.
        `timeout` overrides the client's for this call."""
        with self._lock:
            if self._sock is None:
                self._connect()
            key = (model, version)
            spec = self._specs.get(key)
            if spec is None:
                spec = self._load_spec(model, version)
            rid = self._rid + 1 if self._rid < (1 << 64) - 1 else 1
            parts, total = f.encode_predict(spec, rid, inputs, outputs, deadline_us,
                                            routing_key, self.validate, self.allow_non_finite,
                                            self.limits)
            self._rid = rid
            if timeout != -1.0:
                self._set_timeout(timeout)
            try:
                buf, op, ml, data_offset, ftotal = self._exchange(parts, total, rid)
            finally:
                if timeout != -1.0 and self._sock is not None:
                    self._set_timeout(self._timeout)
            if op != c.PREDICT_RESPONSE:
                self._close()
                raise ProtocolError(f"expected PREDICT_RESPONSE, got opcode {op:#04x}")
            out, ver, backend, q, comp = f.decode_predict_response(buf, 32 + ml, data_offset,
                                                                   ftotal)
            self.last_response = (ver, backend, q, comp)
            if version is None and self.validate and ver != spec.version:
                # A new default version (hot swap): check the next call against its metadata.
                self._specs.pop(key, None)
            return out

    # === the feature cache ===

    def predict_by_entity(self, model: str, keys, version: str | None = None, overrides=None,
                          outputs=None, deadline_us: int | None = None, routing_key=None,
                          schema_version: int = 0) -> c.EntityPrediction:
        """PREDICT_BY_ENTITY (docs/protocol.md §3, §10.9): the server assembles one feature
        row per entity key (str or bytes, or one key) from its store in the model's feature
        order and runs `model`. `overrides` replace stored values: {row: {feature: value}}
        or (row, feature, value) items. `schema_version` (0 = any) is the feature schema the
        caller was built for; another is refused (BadInput). Returns an `EntityPrediction`:
        `outputs` as `predict` returns them plus, per key, which features were defaulted or
        stale. A server without a feature store raises NotImplementedByServer."""
        fields = c.predict_by_entity_fields(model, keys, version, overrides, outputs,
                                            deadline_us, routing_key, schema_version)
        with self._lock:
            if self._sock is None:
                self._connect()
            rid = self._next_id()
            frame = f.encode_message_frame(c.PREDICT_BY_ENTITY, rid, "PredictByEntityRequest",
                                           fields)
            buf, op, ml, data_offset, ftotal = self._exchange([frame], len(frame), rid)
            if op != c.PREDICT_BY_ENTITY_RESPONSE:
                self._close()
                raise ProtocolError(f"expected PREDICT_BY_ENTITY_RESPONSE, got opcode {op:#04x}")
            r = c.decode_entity_response(buf, 32 + ml, data_offset, ftotal, self.limits)
            self.last_response = (r.version, r.backend, r.queue_us, r.compute_us)
            return r

    def put_features(self, rows, schema_version: int) -> dict:
        """PUT_FEATURES (§10.11): writes rows, each (entity, event_ts_ms, {name: value}) or a
        dict with those keys, under feature schema `schema_version`, all or nothing in one
        transaction. A row older by event time than the stored one is skipped. Returns
        {written, skipped_older}; a full store raises FeatureStore, a row the schema refuses
        BadInput (nothing of the request is written either way)."""
        return self._call(c.PUT_FEATURES, c.PUT_FEATURES_RESPONSE, "PutFeaturesRequest",
                          c.put_features_fields(rows, schema_version))

    def get_features(self, entities) -> list[dict]:
        """GET_FEATURES (§10.12): the stored rows of `entities` (one key or several), in
        order, each {found, event_ts_ms, schema_version, values: {name: value}}; a key not
        stored is found False with no values, not an error."""
        msg = self._call(c.GET_FEATURES, c.GET_FEATURES_RESPONSE, "GetFeaturesRequest",
                         {"entities": c.entity_keys(entities)})
        return c.stored_features(msg)

    def _load_spec(self, model, version):
        if not self.validate:
            spec = f.unchecked_spec(model, version)
        else:
            md = self._metadata_locked(model, version)
            spec = f.ModelSpec(model, version, md)
        if len(self._specs) > 256:
            self._specs.clear()
        self._specs[(model, version)] = spec
        return spec

    def _metadata_locked(self, model, version):
        rid = self._next_id()
        fields = {"model": model, "version": version}
        frame = f.encode_message_frame(c.METADATA, rid, "MetadataRequest", fields)
        buf, op, ml, _, _ = self._exchange([frame], len(frame), rid)
        return f.decode_reply(buf, op, c.METADATA_RESPONSE, 32 + ml, rid)

    @property
    def last_response_info(self) -> dict:
        """version, backend, queue_us and compute_us of the last PREDICT_RESPONSE."""
        v, b, q, comp = self.last_response
        return {"version": v, "backend": b, "queue_us": q, "compute_us": comp}

    def metadata(self, model: str, version: str | None = None) -> dict:
        """The model's METADATA_RESPONSE: name, version, versions, inputs and outputs
        ({name, dtype, shape} with -1 for dynamic dimensions), backend, ready, load_report."""
        return f.named_dtypes(self._call(c.METADATA, c.METADATA_RESPONSE, "MetadataRequest",
                                         {"model": model, "version": version}))

    def health(self) -> dict:
        """HEALTH_RESPONSE: {ready, models: [{name, version, backend, ready, default,
        requests, errors}]}."""
        return self._call(c.HEALTH, c.HEALTH_RESPONSE, "HealthRequest", {})

    def hello(self) -> dict:
        """Sends HELLO again and returns the HELLO_RESPONSE (protocol version and limits)."""
        return self._call(c.HELLO, c.HELLO_RESPONSE, "Hello",
                          f.hello_fields(self._client_name, self._token))

    def status(self) -> dict:
        """What `edgeinfer status --json` prints: the server, its limits and its health."""
        hr = self.server or self.hello()
        return f.status_of(describe(self._target), hr, self.health())

    def request_raw(self, opcode: int, meta: bytes = b"", data=(), *, flags: int = 0,
                    version: int = 1, data_len: int | None = None):
        """Sends one frame built from raw parts (opcodes this client has no method for, and
        tests) and returns (opcode, metadata bytes, data bytes) of the answer. An ERROR
        answer raises its exception, like every other call."""
        with self._lock:
            if self._sock is None:
                self._connect()
            rid = self._next_id()
            data = [bytes(d) for d in data]
            dl = sum(len(d) for d in data) if data_len is None else data_len
            head = c.HEADER.pack(c.MAGIC, version, opcode, flags, rid, len(meta), 0, dl)
            data_offset, _ = c.frame_layout(len(meta), dl)
            frame = head + meta + bytes(max(0, data_offset - 32 - len(meta))) + b"".join(data)
            buf, op, ml, do, ft = self._exchange([frame], len(frame), rid)
            return op, bytes(buf[32:32 + ml]), bytes(buf[do:ft])


class ClientPool:
    """Up to `size` Clients shared by threads; each call borrows one. Connections are opened
    on first use and kept; a broken one reconnects on its next call."""

    def __init__(self, unix=None, tcp=None, *, size: int = 4, acquire_timeout: float | None =
                 None, **client_kwargs):
        parse_target(unix, tcp)
        self._args = (unix, tcp)
        self._kwargs = client_kwargs
        self._idle: queue.LifoQueue = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)
        self._acquire_timeout = acquire_timeout
        self._all: list[Client] = []
        self._all_lock = threading.Lock()

    @contextlib.contextmanager
    def client(self):
        if not self._slots.acquire(timeout=self._acquire_timeout):
            raise Timeout(f"no pooled connection free within {self._acquire_timeout} s")
        try:
            try:
                cl = self._idle.get_nowait()
            except queue.Empty:
                cl = Client(*self._args, **self._kwargs)
                with self._all_lock:
                    self._all.append(cl)
            try:
                yield cl
            finally:
                self._idle.put(cl)
        finally:
            self._slots.release()

    def predict(self, model, inputs, **kwargs) -> dict:
        with self.client() as cl:
            return cl.predict(model, inputs, **kwargs)

    def predict_by_entity(self, model, keys, **kwargs):
        with self.client() as cl:
            return cl.predict_by_entity(model, keys, **kwargs)

    def put_features(self, rows, schema_version: int) -> dict:
        with self.client() as cl:
            return cl.put_features(rows, schema_version)

    def get_features(self, entities) -> list[dict]:
        with self.client() as cl:
            return cl.get_features(entities)

    def metadata(self, model, version=None) -> dict:
        with self.client() as cl:
            return cl.metadata(model, version)

    def health(self) -> dict:
        with self.client() as cl:
            return cl.health()

    def status(self) -> dict:
        with self.client() as cl:
            return cl.status()

    def close(self):
        with self._all_lock:
            for cl in self._all:
                cl.close()
            self._all.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = ["Client", "ClientPool", "Stats"]
