"""Starts `eali serve` for the tritonclient and curl tests on free ports and stops it with SIGTERM."""

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def eali_bin():
    explicit = os.environ.get("EALI_BIN")
    if explicit:
        return explicit
    for profile in ("release", "debug"):
        path = os.path.join(ROOT, "target", profile, "eali")
        if os.path.exists(path):
            return path
    raise RuntimeError("build eali first (cargo build --release) or set EALI_BIN")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, *extra):
        self.http = free_port()
        self.grpc = free_port()
        self.proc = subprocess.Popen(
            [eali_bin(), "serve", "--http", f"127.0.0.1:{self.http}", "--grpc", f"127.0.0.1:{self.grpc}", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("eali serve exited: " + self.proc.stdout.read().decode())
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/v2/health/ready", timeout=1) as r:
                    if json.load(r).get("ready"):
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("eali serve did not become ready")

    @property
    def rest_url(self):
        return f"127.0.0.1:{self.http}"

    @property
    def grpc_url(self):
        return f"127.0.0.1:{self.grpc}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.returncode


@pytest.fixture(scope="module")
def simulated():
    """ResNet-50 on a simulated V100, no outputs computed."""
    s = Server("--model", "resnet50", "--slo-ms", "100", "--max-batch", "8", "--policy", "eali")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def computed():
    """MobileNet-V2 with real outputs from the CPU reference executor."""
    s = Server("--model", "mobilenet_v2", "--slo-ms", "60000", "--max-batch", "2",
               "--policy", "maxPerformance", "--compute", "cpu")
    yield s
    s.stop()
