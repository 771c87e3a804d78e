"""Fixtures: the daemons daemon/tests/python_client.rs started (their addresses come in
EDGEINFER_TEST_* variables), fresh daemons with special settings started from the
EDGEINFER_DAEMON binary, and the golden files of tests/fixtures/golden."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import time

import numpy as np
import pytest

from edgeinfer import Client

REPO = pathlib.Path(__file__).resolve().parents[2]


def env(name: str) -> str:
    v = os.environ.get(name)
    if not v:
        raise RuntimeError(f"{name} is not set: these tests run under "
                           "`cargo test -p edgeinferd --test python_client` (tools/ci/test.sh), "
                           "which starts the daemons")
    return v


@pytest.fixture(scope="session")
def sock_path() -> str:
    return env("EDGEINFER_TEST_SOCKET")


@pytest.fixture(scope="session")
def tcp_addr() -> tuple[str, int]:
    host, port = env("EDGEINFER_TEST_TCP").rsplit(":", 1)
    return host, int(port)


@pytest.fixture(scope="session")
def demo_sock() -> str:
    return env("EDGEINFER_TEST_DEMO_SOCKET")


@pytest.fixture
def client(sock_path):
    c = Client(unix=sock_path, timeout=30)
    yield c
    c.close()


# Models the main daemon serves: name -> golden file stem (python_client.rs loads them).
MODELS = {
    "churn": "churn_rf", "logreg": "logreg", "mlp": "mlp", "cnn": "cnn", "identity": "identity",
    "gb_binary": "gb_binary", "gb_multiclass": "gb_multiclass", "rf_regressor": "rf_regressor",
    "svm": "tract_unsupported_svm",
}


def golden(stem: str):
    g = json.loads((REPO / "tests/fixtures/golden" / f"{stem}.json").read_text())
    dt = {"f32": np.float32, "f64": np.float64, "i64": np.int64, "i32": np.int32, "u8": np.uint8,
          "bool": np.bool_}

    def arr(t):
        return np.array(t["data"], dtype=dt[t["dtype"]]).reshape(t["shape"])

    return ({t["name"]: arr(t) for t in g["inputs"]}, {t["name"]: arr(t) for t in g["outputs"]})


def assert_matches(got: dict, want: dict):
    """Labels exactly, floats within 1e-4 (tests/fixtures/README.md)."""
    assert sorted(got) == sorted(want)
    for name, w in want.items():
        g = got[name]
        assert g.dtype == w.dtype, name
        assert g.shape == w.shape, name
        if w.dtype.kind == "f":
            np.testing.assert_allclose(g, w, atol=1e-4, rtol=0, err_msg=name)
        else:
            np.testing.assert_array_equal(g, w, err_msg=name)


class Daemon:
    """edgeinferd started here with its own socket and settings (for limits the main daemon
    must not have); stopped with SIGTERM."""

    def __init__(self, tmp: pathlib.Path, args: list[str], config: str | None = None):
        self.dir = tmp
        self.sock = str(tmp / "d.sock")
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        cmd = [env("EDGEINFER_DAEMON"), "--state-dir", str(tmp / "var"), "--unix-socket",
               self.sock, "--tcp", f"127.0.0.1:{self.port}", "--http", ""]
        if config is not None:
            (tmp / "edgeinferd.toml").write_text(config)
            cmd += ["--config", str(tmp / "edgeinferd.toml")]
        self.log = open(tmp / "daemon.log", "wb")
        self.proc = subprocess.Popen(cmd + args, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, EDGEINFER_LOG="warn"))
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"edgeinferd exited {self.proc.returncode}:\n"
                                   + (tmp / "daemon.log").read_text())
            try:
                c = socket.socket(socket.AF_UNIX)
                c.connect(self.sock)
                c.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("edgeinferd did not listen within 60 s")
                time.sleep(0.02)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def start_daemon(tmp_path):
    started = []

    def start(*args: str, config: str | None = None) -> Daemon:
        d = Daemon(tmp_path / f"d{len(started)}", list(args), config)
        started.append(d)
        return d

    for i in range(8):
        (tmp_path / f"d{i}").mkdir()
    yield start
    for d in started:
        d.stop()


def model_arg(name: str, stem: str) -> str:
    return f"{name}={REPO / 'tests/fixtures/models' / (stem + '.onnx')}"
