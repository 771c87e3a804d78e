"""The shared-memory transport (docs/protocol.md §11): numpy views straight over the rings.

    from edgeinfer import ShmClient
    with ShmClient(unix="/run/edgeinfer/edgeinferd.sock") as c:
        req = c.request("churn", {"float_input": (np.float32, (1, 20))})
        req.inputs["float_input"][:] = x        # written in the request ring, in place
        rid = req.send()
        ans = c.recv()                           # ans.outputs: views over the response ring
        p = ans.outputs["probabilities"]         # valid until the next recv() or predict()

The HELLO goes over the Unix socket and asks for rings; the server passes a memfd and a
doorbell socket with SCM_RIGHTS. Requests are frames written into the request ring; answers
are read where the server wrote them. Both sides poll first, then sleep on the doorbell
(§11.4); the client rings the server's only when the server's sleeping word says so.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import socket
import threading
import time

import numpy as np

from . import _codec as c
from .errors import ConnectionClosed, ProtocolError, Timeout, server_error

CLIENT_NAME = "edgeinfer-python-shm/0.1"

# The layout of §11.2 (edgeinfer_proto::shm on the Rust side).
CONTROL_BYTES = 4096
SHM_MAGIC = 0x4D534945
REQ_HEAD, REQ_TAIL, RESP_HEAD, RESP_TAIL = 64 // 8, 128 // 8, 192 // 8, 256 // 8
SERVER_SLEEPING, CLIENT_SLEEPING = 320 // 4, 384 // 4
SERVER_CPU, CLIENT_CPU = 448 // 4, 512 // 4
WRAP_OPCODE = 0x00
DEFAULT_SPIN_S = 50e-6


try:
    _sched_getcpu = ctypes.CDLL(None, use_errno=True).sched_getcpu
    _sched_getcpu.restype = ctypes.c_int
    _sched_getcpu.argtypes = []
except (OSError, AttributeError):  # not glibc/Linux: never assume a shared CPU
    _sched_getcpu = None


def _cpu_word() -> int:
    """1 + the CPU this thread runs on, 0 when unknown (the control page's CPU words)."""
    cpu = _sched_getcpu() if _sched_getcpu is not None else -1
    return cpu + 1 if cpu >= 0 else 0


class Answer:
    """One answer, read in place: `header`, `message` (dict), `outputs` ({name: array}, for a
    PREDICT_RESPONSE). The arrays are read-only views over the response ring, valid until the
    client's next `recv`/`predict` hands the bytes back to the server."""

    __slots__ = ("header", "message", "outputs")

    def __init__(self, header, message, outputs):
        self.header, self.message, self.outputs = header, message, outputs

    @property
    def request_id(self) -> int:
        return self.header["request_id"]


class Request:
    """A PREDICT being written into the request ring: fill `inputs` (writable numpy views
    over the ring), then `send()`. Unsent, nothing is published."""

    def __init__(self, client, rid, wrap_at, nxt, inputs):
        self._client, self.request_id = client, rid
        self._wrap_at, self._next = wrap_at, nxt
        self.inputs = inputs

    def send(self) -> int:
        self._client._publish(self._wrap_at, self._next)
        self.inputs = {}
        return self.request_id


class ShmClient:
    """A shared-memory session over the Unix socket at `unix` (same host only)."""

    def __init__(self, unix: str, *, ring_bytes: int = 1 << 20, token: str | None = None,
                 timeout: float | None = 30.0, spin_s: float = DEFAULT_SPIN_S):
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._sock.connect(unix)
        self._fence_lock = threading.Lock()
        self._spin = spin_s
        self._timeout = timeout
        self._next_id = 1
        self._wr = 0
        self._rd = 0
        self._req_tail = 0  # the server's request tail as last read (reloaded when full)
        self._cpu = 0
        # Waits for the server that slept on the doorbell, and that polled first.
        self.doorbell_waits = 0
        self.polled_waits = 0
        self._lent_end = None
        self.in_flight = 0
        hello = {"versions": [1], "client": CLIENT_NAME, "token": token or "",
                 "shm_ring_bytes": max(1, int(ring_bytes))}
        self._sock.sendall(c.encode_frame(c.HELLO, self._take_id(), hello))
        # The grant's fds ride on its first bytes: recvmsg for the header.
        head, fds, _, _ = socket.recv_fds(self._sock, c.HEADER_LEN, 2)
        adopted = 0
        try:
            head += self._recv_exact(c.HEADER_LEN - len(head))
            h = c.decode_header(head)
            _, total = c.frame_layout(h["meta_len"], h["data_len"])
            frame = head + self._recv_exact(total - c.HEADER_LEN)
            header, msg, _ = c.decode_frame(frame)
            if header["opcode"] == c.ERROR:
                raise server_error(msg["code"], msg["message"], msg["retry_after_ms"],
                                   header["request_id"])
            if header["opcode"] != c.HELLO_RESPONSE or len(fds) != 2:
                raise ProtocolError("the HELLO_RESPONSE carried no memfd and doorbell")
            ring = msg["shm_ring_bytes"]
            if ring < 65536 or ring & (ring - 1):
                raise ProtocolError(f"the server granted no usable ring size ({ring})")
            self.server = msg
            self.ring_bytes = ring
            self._mm = mmap.mmap(fds[0], CONTROL_BYTES + 2 * ring, mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE)
            self._bell = socket.socket(fileno=fds[1])
            adopted = 2
        finally:
            # The memfd's mapping keeps the memory; the doorbell's fd now belongs to
            # its socket. Anything else received is closed.
            for i, fd in enumerate(fds):
                if i != 1 or adopted < 2:
                    os.close(fd)
            if adopted < 2:
                self._sock.close()
        self._bell.setblocking(True)
        self._bell.settimeout(timeout)
        self._u64 = np.frombuffer(self._mm, dtype="<u8", count=CONTROL_BYTES // 8)
        self._u32 = np.frombuffer(self._mm, dtype="<u4", count=CONTROL_BYTES // 4)
        if int(self._u32[0]) != SHM_MAGIC or int(self._u64[1]) != ring:
            raise ProtocolError("the shared memory's control page is not edgeinfer's")
        self._req = CONTROL_BYTES
        self._resp = CONTROL_BYTES + ring
        self._limits = dict(c.DEFAULT_LIMITS, max_frame_bytes=min(msg["max_frame_bytes"], ring))

    # === plumbing ===

    def _recv_exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            b = self._sock.recv(n - len(out))
            if not b:
                raise ConnectionClosed("the server closed the connection during HELLO")
            out += b
        return out

    def _take_id(self) -> int:
        rid = self._next_id
        self._next_id = (self._next_id + 1) & ((1 << 64) - 1) or 1
        return rid

    def _fence(self):
        # A full barrier between our store and the load of the other side's word (§11.4): a
        # lock's acquire and release are locked instructions.
        self._fence_lock.acquire()
        self._fence_lock.release()

    def _ring_server(self):
        self._fence()
        if int(self._u32[SERVER_SLEEPING]):
            try:
                self._bell.send(b"\x01")
            except BlockingIOError:
                pass

    def _shares_cpu(self) -> bool:
        """Whether the server's session runs on this thread's CPU (then polling only keeps
        it from running); publishes this thread's CPU for the server when it changed."""
        mine = _cpu_word()
        if mine != self._cpu:
            self._cpu = mine
            self._u32[CLIENT_CPU] = mine
        return mine != 0 and int(self._u32[SERVER_CPU]) == mine

    @property
    def shares_server_cpu(self) -> bool:
        """Whether this thread runs on the CPU the server's session runs on (it then never
        polls: it sleeps on the doorbell at once)."""
        return self._shares_cpu()

    @property
    def server_cpu(self) -> int | None:
        """The CPU the server says this session runs on, once it said so."""
        w = int(self._u32[SERVER_CPU])
        return w - 1 if w else None

    def _wait_for(self, ready):
        if ready():
            return
        spin = 0.0 if self._shares_cpu() else self._spin
        if spin > 0:
            self.polled_waits += 1
        t0 = time.perf_counter()
        while not ready():
            if time.perf_counter() - t0 < spin:
                continue
            self._u32[CLIENT_SLEEPING] = 1
            self._fence()
            if ready():
                self._u32[CLIENT_SLEEPING] = 0
                break
            self.doorbell_waits += 1
            try:
                b = self._bell.recv(64)
            except socket.timeout:
                raise Timeout(f"no answer within {self._timeout} s") from None
            finally:
                self._u32[CLIENT_SLEEPING] = 0
            if not b:
                raise ConnectionClosed("the server ended the shared-memory session")

    def _release(self):
        if self._lent_end is not None:
            self._rd = self._lent_end
            self._lent_end = None
            self._u64[RESP_TAIL] = self._rd
            self._ring_server()

    def _reserve(self, n: int):
        """Room for a frame of n bytes: (ring offset, WRAP offset or None, next head)."""
        self._release()
        ring = self.ring_bytes
        if n > ring:
            raise ProtocolError(f"a frame of {n} bytes does not fit the {ring}-byte ring")
        at = self._wr % ring
        if at + n <= ring:
            start, wrap_at = self._wr, None
        else:
            start, wrap_at = self._wr + ring - at, at
        nxt = c.align64(start + n)
        if nxt - self._req_tail > ring:
            self._wait_for(lambda: nxt - int(self._u64[REQ_TAIL]) <= ring)
            self._req_tail = int(self._u64[REQ_TAIL])
        return start % ring, wrap_at, nxt

    def _publish(self, wrap_at, nxt):
        if wrap_at is not None:
            o = self._req + wrap_at
            self._mm[o:o + c.HEADER_LEN] = c.encode_header(WRAP_OPCODE, 0, 0, 0)
        self._wr = nxt
        self._u64[REQ_HEAD] = nxt
        self.in_flight += 1
        self._ring_server()

    # === requests ===

    def request(self, model: str, specs: dict, *, version: str | None = None,
                outputs=(), deadline_us: int = 0, routing_key: bytes = b"") -> Request:
        """A PREDICT whose inputs are {name: (dtype, shape)}; fill `Request.inputs` in place."""
        tens = []
        for name, (dtype, shape) in specs.items():
            dt = np.dtype(dtype).newbyteorder("<")
            shape = tuple(int(d) for d in shape)
            tens.append((name, c.DTYPE_CODES[dt], shape, dt.itemsize * int(np.prod(shape))))
        metas, data_len = c.layout(tens)
        msg = {"model": model, "version": version, "inputs": metas, "outputs": list(outputs),
               "deadline_us": deadline_us, "routing_key": routing_key}
        meta = c.encode_message("PredictRequest", msg)
        data_offset, total = c.frame_layout(len(meta), data_len)
        rid = self._take_id()
        at, wrap_at, nxt = self._reserve(total)
        base = self._req + at
        head = c.encode_header(c.PREDICT, rid, len(meta), data_len) + meta
        self._mm[base:base + data_offset] = head + bytes(data_offset - len(head))
        views = {}
        for m, (name, code, shape, nbytes) in zip(metas, tens):
            dt = c.DTYPES[code]
            views[name] = np.frombuffer(self._mm, dtype=dt, count=nbytes // dt.itemsize,
                                        offset=base + data_offset + m["offset"]).reshape(shape)
        return Request(self, rid, wrap_at, nxt, views)

    def send_predict(self, model: str, inputs: dict, **kw) -> int:
        """Sends a PREDICT, copying `inputs` ({name: array}) into the ring; its request id."""
        arrays = {k: np.asarray(v) for k, v in inputs.items()}
        req = self.request(model, {k: (a.dtype, a.shape) for k, a in arrays.items()}, **kw)
        for k, a in arrays.items():
            req.inputs[k][...] = a
        return req.send()

    def send_frame(self, frame: bytes) -> None:
        """Sends bytes as one frame (for tests of the server's checks)."""
        at, wrap_at, nxt = self._reserve(len(frame))
        o = self._req + at
        self._mm[o:o + len(frame)] = frame
        self._publish(wrap_at, nxt)

    def recv(self) -> Answer:
        """The next answer, in place (see Answer). An ERROR is returned, not raised."""
        self._release()
        ring = self.ring_bytes
        while True:
            rd = self._rd
            self._wait_for(lambda: int(self._u64[RESP_HEAD]) != rd)
            head = int(self._u64[RESP_HEAD])
            off = rd % ring
            o = self._resp + off
            h = c.decode_header(self._mm[o:o + c.HEADER_LEN], self._limits)
            if h["opcode"] == WRAP_OPCODE:
                self._rd = rd + ring - off
                continue
            _, total = c.frame_layout(h["meta_len"], h["data_len"])
            if off + total > ring or rd + total > head:
                raise ProtocolError("an answer runs past the response ring or its head")
            view = memoryview(self._mm)[o:o + total]
            header, msg, tensors = c.decode_frame(view, self._limits)
            self._lent_end = c.align64(rd + total)
            self.in_flight -= 1
            outs = {}
            if header["opcode"] == c.PREDICT_RESPONSE:
                for m, t in zip(msg["outputs"], tensors):
                    t.flags.writeable = False
                    outs[m["name"]] = t
            return Answer(header, msg, outs)

    def predict(self, model: str, inputs: dict, **kw) -> dict:
        """One PREDICT: {name: array} in, {name: read-only view over the ring} out (valid
        until the next call; copy what you keep). Server errors are raised, typed."""
        rid = self.send_predict(model, inputs, **kw)
        a = self.recv()
        if a.header["opcode"] == c.ERROR:
            m = a.message
            raise server_error(m["code"], m["message"], m["retry_after_ms"], a.request_id)
        if a.request_id != rid:
            raise ProtocolError(f"answer to request {a.request_id} while waiting for {rid}")
        return a.outputs

    # === for tests of the server's checks ===

    def scribble(self, offset: int, data: bytes):
        """Writes bytes into the request ring without publishing."""
        o = self._req + offset
        self._mm[o:o + len(data)] = data

    def publish_raw_head(self, head: int):
        self._u64[REQ_HEAD] = head
        self._ring_server()

    @property
    def request_head(self) -> int:
        return self._wr

    def close(self):
        for name in ("_u64", "_u32"):
            self.__dict__.pop(name, None)
        if getattr(self, "_bell", None) is not None:
            self._bell.close()
        if getattr(self, "_mm", None) is not None:
            try:
                self._mm.close()
            except BufferError:
                pass  # numpy views still point into it: the mapping goes with them
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
