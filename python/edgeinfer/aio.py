"""AsyncClient: asyncio, many requests in flight on one connection, answers matched by
request id (docs/protocol.md §7.1).

It drives a non-blocking socket with the loop's add_reader/add_writer rather than an asyncio
transport, for the same reasons as the blocking client: requests go out with sendmsg from the
caller's own array buffers (several requests per syscall when they queue up in one loop
iteration), and answers are received into a buffer that becomes the frame the output arrays
view. Frames above 64 KiB are read straight into their own buffer; smaller ones are copied
once out of the receive buffer.
"""

from __future__ import annotations

import asyncio
import socket

from . import _codec as c
from . import _fast as f
from .client import CLIENT_NAME, describe, parse_target
from .errors import ConnectionClosed, ProtocolError, Timeout, Unavailable

_CHUNK = 256 << 10
_DIRECT = 64 << 10
_IOV_MAX = 1024


class _Pending:
    __slots__ = ("fut", "want", "spec", "pin", "timer", "limited")

    def __init__(self, fut, want, spec, pin, limited):
        self.fut = fut
        self.want = want
        self.spec = spec
        self.pin = pin
        self.timer = None
        self.limited = limited  # holds one of the client's in-flight slots


class _Conn:
    """One connection: its socket, request ids, pending answers and send queue."""

    def __init__(self, client: "AsyncClient", sock: socket.socket, loop):
        self.client = client
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = loop
        self.rid = 0
        self.pending: dict[int, _Pending] = {}
        self.out: list = []
        self.flush_scheduled = False
        self.writer = False
        self.closing = False  # the server said it closes: take no new requests
        self.closed = False
        self.chunk = bytearray(_CHUNK)
        self.chunk_view = memoryview(self.chunk)
        self.cstart = self.cend = 0
        self.frame = None  # a large frame being read in place
        self.frame_view = None
        self.fill = 0
        self.peak_in_flight = 0
        loop.add_reader(self.fd, self._on_readable)

    # === sending ===

    def next_id(self) -> int:
        self.rid = self.rid + 1 if self.rid < (1 << 64) - 1 else 1
        return self.rid

    def send(self, parts):
        self.out.extend(parts)
        if not self.flush_scheduled and not self.writer:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self):
        self.flush_scheduled = False
        out = self.out
        while out and not self.closed:
            batch = out[:_IOV_MAX]
            try:
                n = self.sock.sendmsg(batch)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as e:
                self.fail(ConnectionClosed(f"sending to {describe(self.client._target)}: {e}"))
                return
            i = 0
            while i < len(batch):
                ln = memoryview(batch[i]).nbytes
                if n < ln:
                    break
                n -= ln
                i += 1
            if i < len(batch):
                del out[:i]
                if n:
                    out[0] = f.byte_view(out[0])[n:]
                if not self.writer:
                    self.writer = True
                    self.loop.add_writer(self.fd, self._on_writable)
                return
            del out[:i]
        if self.writer:
            self.writer = False
            self.loop.remove_writer(self.fd)

    def _on_writable(self):
        self._flush()

    # === receiving ===

    def _on_readable(self):
        try:
            if self.frame is not None:
                k = self.sock.recv_into(self.frame_view[self.fill:])
                if k == 0:
                    raise ConnectionClosed("the server closed the connection mid-answer")
                self.fill += k
                if self.fill == len(self.frame):
                    frame, self.frame, self.frame_view = self.frame, None, None
                    self._dispatch(frame)
                return
            if len(self.chunk) - self.cend < _DIRECT:
                rest = self.cend - self.cstart
                self.chunk_view[:rest] = self.chunk_view[self.cstart:self.cend]
                self.cstart, self.cend = 0, rest
            k = self.sock.recv_into(self.chunk_view[self.cend:])
            if k == 0:
                raise ConnectionClosed("the server closed the connection")
            self.cend += k
            self._parse()
        except (BlockingIOError, InterruptedError):
            return
        except ConnectionClosed as e:
            self.fail(e)
        except ProtocolError as e:
            self.fail(e)
        except OSError as e:
            self.fail(ConnectionClosed(f"connection to {describe(self.client._target)} "
                                       f"failed: {e}"))

    def _parse(self):
        view = self.chunk_view
        limits = self.client.limits
        while self.cend - self.cstart >= 32:
            s = self.cstart
            op, rid, ml, data_offset, total = f.check_header(view[s:s + 32], limits)
            have = self.cend - s
            if have >= total:
                frame = bytearray(view[s:s + total])
                self.cstart = s + total
                self._dispatch(frame)
                if self.closed:
                    return
            elif total > _DIRECT:
                self.frame = bytearray(total)
                self.frame_view = memoryview(self.frame)
                self.frame_view[:have] = view[s:self.cend]
                self.fill = have
                self.cstart = self.cend = 0
                return
            else:
                break
        if self.cstart == self.cend:
            self.cstart = self.cend = 0

    def _dispatch(self, buf: bytearray):
        op, rid, ml, data_offset, total = f.check_header(buf, self.client.limits)
        if op == c.ERROR and rid == 0:
            # A header error: the server cannot say which request; it closes.
            err = f.decode_error(buf, 32 + ml, 0)
            self.fail(err)
            return
        p = self.pending.pop(rid, None)
        if p is None:
            return  # the answer to a request that timed out: dropped
        if p.timer is not None:
            p.timer.cancel()
        self.client._release(p.limited)
        fut = p.fut
        if fut.done():
            return
        try:
            if op == c.ERROR:
                err = f.decode_error(buf, 32 + ml, rid)
                if err.closes:
                    self.closing = True
                fut.set_exception(err)
            elif p.want == c.PREDICT_RESPONSE:
                if op != c.PREDICT_RESPONSE:
                    raise ProtocolError(f"expected PREDICT_RESPONSE, got opcode {op:#04x}")
                out, ver, backend, q, comp = f.decode_predict_response(buf, 32 + ml,
                                                                       data_offset, total)
                if p.pin is None and p.spec.version and ver != p.spec.version:
                    self.client._specs.pop((p.spec.name, None), None)
                fut.set_result(out)
            elif p.want == c.PREDICT_BY_ENTITY_RESPONSE:
                if op != c.PREDICT_BY_ENTITY_RESPONSE:
                    raise ProtocolError("expected PREDICT_BY_ENTITY_RESPONSE, got opcode "
                                        f"{op:#04x}")
                fut.set_result(c.decode_entity_response(buf, 32 + ml, data_offset, total,
                                                        self.client.limits))
            elif p.want is None:
                fut.set_result((op, bytes(buf[32:32 + ml]), bytes(buf[data_offset:total])))
            else:
                fut.set_result(f.decode_reply(buf, op, p.want, 32 + ml, rid))
        except ProtocolError as e:
            fut.set_exception(e)

    def expire(self, rid: int):
        p = self.pending.pop(rid, None)
        if p is not None:
            self.client._release(p.limited)
            if not p.fut.done():
                p.fut.set_exception(Timeout(f"no answer to request {rid} within "
                                            f"{self.client._timeout} s"))

    def fail(self, exc: BaseException):
        """The connection is gone: every pending request fails with `exc`."""
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.fd)
        if self.writer:
            self.loop.remove_writer(self.fd)
        self.sock.close()
        pending, self.pending = self.pending, {}
        for p in pending.values():
            if p.timer is not None:
                p.timer.cancel()
            self.client._release(p.limited)
            if not p.fut.done():
                p.fut.set_exception(exc)


class AsyncClient:
    """The asyncio client. Same arguments and methods as `Client`, as coroutines:

        async with AsyncClient(unix=path) as c:
            out = await c.predict("churn", {"float_input": x})
            outs = await asyncio.gather(*(c.predict("churn", {"float_input": r}) for r in rows))

    All calls share one connection (opened on first use, reopened after an error that
    closes it). Up to the server's max_in_flight (from HELLO) are on the wire at once; more
    wait here for a free slot. `timeout` bounds each call from when it is sent.
    """

    def __init__(self, unix=None, tcp=None, *, token: str | None = None,
                 timeout: float | None = 60.0, connect_timeout: float = 5.0,
                 hello: bool = True, validate: bool = True, allow_non_finite: bool = False,
                 client_name: str = CLIENT_NAME, max_in_flight: int | None = None):
        self._target = parse_target(unix, tcp)
        self._token = token
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._hello = hello or bool(token)
        self.validate = validate
        self.allow_non_finite = allow_non_finite
        self._client_name = client_name
        self._max_in_flight = max_in_flight
        self._conn: _Conn | None = None
        self._connecting: asyncio.Future | None = None
        self._specs: dict = {}
        self._spec_futs: dict = {}
        self._slots: asyncio.Semaphore | None = None
        self.server: dict | None = None
        self.limits = dict(c.DEFAULT_LIMITS)
        self.peak_in_flight = 0
        self._in_flight = 0

    async def __aenter__(self):
        await self.connect()
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def close(self):
        if self._conn is not None:
            self._conn.fail(ConnectionClosed("the client was closed"))
            self._conn = None

    def _release(self, limited: bool):
        self._in_flight -= 1
        if limited:
            self._slots.release()

    # === connection ===

    async def connect(self) -> None:
        await self._get_conn()

    async def _get_conn(self) -> _Conn:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.closing:
            return conn
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        try:
            conn = await self._open(loop)
        except BaseException as e:
            self._connecting.set_exception(e)
            self._connecting.exception()  # retrieved: no "never retrieved" warning
            self._connecting = None
            raise
        self._connecting.set_result(conn)
        self._connecting = None
        return conn

    async def _open(self, loop) -> _Conn:
        kind, addr = self._target
        if kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            infos = await loop.getaddrinfo(addr[0], addr[1], type=socket.SOCK_STREAM)
            sock = socket.socket(infos[0][0], socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            addr = infos[0][4]
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, addr), self._connect_timeout)
        except asyncio.TimeoutError:
            sock.close()
            raise Timeout(f"no connection to {describe(self._target)} within "
                          f"{self._connect_timeout} s") from None
        except OSError as e:
            sock.close()
            raise Unavailable(f"cannot connect to {describe(self._target)}: {e}") from e
        conn = _Conn(self, sock, loop)
        if self._hello:
            msg = f.hello_fields(self._client_name, self._token)
            try:
                hr = await asyncio.wait_for(
                    self._send_message(conn, c.HELLO, c.HELLO_RESPONSE, "Hello", msg,
                                       limited=False), self._connect_timeout)
            except asyncio.TimeoutError:
                conn.fail(Timeout("no HELLO_RESPONSE"))
                raise Timeout(f"no HELLO_RESPONSE from {describe(self._target)} within "
                              f"{self._connect_timeout} s") from None
            except BaseException:
                conn.fail(ConnectionClosed("HELLO failed"))
                raise
            self.server = hr
            f.apply_hello(self.limits, hr)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._max_in_flight or self.limits["max_in_flight"])
        self._conn = conn
        return conn

    # === requests ===

    def _submit(self, conn: _Conn, rid: int, parts, want, spec=None, pin=None,
                limited=True):
        fut = conn.loop.create_future()
        p = _Pending(fut, want, spec, pin, limited)
        conn.pending[rid] = p
        self._in_flight += 1
        if self._in_flight > self.peak_in_flight:
            self.peak_in_flight = self._in_flight
        # HELLO (not limited) is bounded by the connect timeout instead.
        if self._timeout and limited:
            p.timer = conn.loop.call_later(self._timeout, conn.expire, rid)
        conn.send(parts)
        return fut

    async def _send_message(self, conn, opcode, want, name, fields, limited=True):
        # HELLO goes before the in-flight slots exist (they are sized by its answer).
        if limited:
            await self._slots.acquire()
        rid = conn.next_id()
        frame = f.encode_message_frame(opcode, rid, name, fields)
        return await self._submit(conn, rid, [frame], want, limited=limited)

    async def _call(self, opcode, want, name, fields):
        conn = await self._get_conn()
        return await self._send_message(conn, opcode, want, name, fields)

    async def _spec(self, model, version):
        key = (model, version)
        spec = self._specs.get(key)
        if spec is not None:
            return spec
        if not self.validate:
            spec = f.unchecked_spec(model, version)
            self._specs[key] = spec
            return spec
        fut = self._spec_futs.get(key)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._spec_futs[key] = fut
        try:
            md = await self._call(c.METADATA, c.METADATA_RESPONSE, "MetadataRequest",
                                  {"model": model, "version": version})
            spec = f.ModelSpec(model, version, md)
            self._specs[key] = spec
            fut.set_result(spec)
            return spec
        except BaseException as e:
            fut.set_exception(e)
            fut.exception()
            raise
        finally:
            self._spec_futs.pop(key, None)

    async def predict(self, model: str, inputs: dict, version: str | None = None,
                      outputs=None, deadline_us: int | None = None, routing_key=None) -> dict:
        """As `Client.predict`; the arrays must not change until the call returns."""
        spec = self._specs.get((model, version))
        if spec is None:
            spec = await self._spec(model, version)
        conn = self._conn
        if conn is None or conn.closed or conn.closing:
            conn = await self._get_conn()
        # Checked and encoded before waiting for a slot: bad input never waits.
        parts, _ = f.encode_predict(spec, 0, inputs, outputs, deadline_us, routing_key,
                                    self.validate, self.allow_non_finite, self.limits)
        await self._slots.acquire()
        if conn.closed or conn.closing:
            try:
                conn = await self._get_conn()
            except BaseException:
                self._slots.release()
                raise
        rid = conn.next_id()
        head = parts[0]
        parts[0] = head[:8] + rid.to_bytes(8, "little") + head[16:]
        return await self._submit(conn, rid, parts, c.PREDICT_RESPONSE, spec, version)

    # === the feature cache ===

    async def predict_by_entity(self, model: str, keys, version: str | None = None,
                                overrides=None, outputs=None, deadline_us: int | None = None,
                                routing_key=None, schema_version: int = 0
                                ) -> c.EntityPrediction:
        """As `Client.predict_by_entity`."""
        # Checked before waiting for a slot: bad input never waits.
        fields = c.predict_by_entity_fields(model, keys, version, overrides, outputs,
                                            deadline_us, routing_key, schema_version)
        return await self._call(c.PREDICT_BY_ENTITY, c.PREDICT_BY_ENTITY_RESPONSE,
                                "PredictByEntityRequest", fields)

    async def put_features(self, rows, schema_version: int) -> dict:
        """As `Client.put_features`."""
        return await self._call(c.PUT_FEATURES, c.PUT_FEATURES_RESPONSE, "PutFeaturesRequest",
                                c.put_features_fields(rows, schema_version))

    async def get_features(self, entities) -> list[dict]:
        """As `Client.get_features`."""
        msg = await self._call(c.GET_FEATURES, c.GET_FEATURES_RESPONSE, "GetFeaturesRequest",
                               {"entities": c.entity_keys(entities)})
        return c.stored_features(msg)

    async def metadata(self, model: str, version: str | None = None) -> dict:
        return f.named_dtypes(await self._call(c.METADATA, c.METADATA_RESPONSE,
                                               "MetadataRequest",
                                               {"model": model, "version": version}))

    async def health(self) -> dict:
        return await self._call(c.HEALTH, c.HEALTH_RESPONSE, "HealthRequest", {})

    async def status(self) -> dict:
        conn = await self._get_conn()
        hr = self.server or await self._send_message(
            conn, c.HELLO, c.HELLO_RESPONSE, "Hello", f.hello_fields(self._client_name,
                                                                    self._token))
        return f.status_of(describe(self._target), hr, await self.health())

    async def request_raw(self, opcode: int, meta: bytes = b"", data=(), *, flags: int = 0,
                          version: int = 1):
        """As `Client.request_raw`: (opcode, metadata bytes, data bytes) of the answer."""
        conn = await self._get_conn()
        await self._slots.acquire()
        rid = conn.next_id()
        data = b"".join(bytes(d) for d in data)
        head = c.HEADER.pack(c.MAGIC, version, opcode, flags, rid, len(meta), 0, len(data))
        data_offset, _ = c.frame_layout(len(meta), len(data))
        frame = head + meta + bytes(max(0, data_offset - 32 - len(meta))) + data
        return await self._submit(conn, rid, [frame], None)
