"""Real ``kindex-node`` processes for the tests.

The binary is ``$KINDEX_NODE_BIN``, else ``$CARGO_TARGET_DIR/debug/kindex-node``
(scripts/python-tests.sh sets the first). Every node listens on its own
loopback address with the default ports (gRPC 7070, HTTP 7080, Raft 7071, Admin 7072):
ports reserved by binding :0 can be taken meanwhile by an outgoing
connection's ephemeral port. Addresses are ``127.<A>.<n>.<i>``: ``A`` from
this process id (50..89, apart from the Rust tests' 100..199), ``n`` one per
node set started, ``i`` the replica. Every wait is bounded; every process is
killed at the end, by its pid.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Optional, Sequence

import grpc
import pytest

from kindex.v1 import admin_pb2, admin_pb2_grpc

WAIT = 60.0
_octet = 50 + os.getpid() % 40
_sets = itertools.count(1)


def node_binary() -> str:
    env = os.environ.get("KINDEX_NODE_BIN")
    if env:
        return env
    target = os.environ.get("CARGO_TARGET_DIR") or str(Path.home() / ".cache/kindex/target")
    return str(Path(target) / "debug" / "kindex-node")


class Node:
    def __init__(self, ip: str, data: Path, args: list[str]) -> None:
        self.ip = ip
        self.data = data
        self.args = args
        self.log = data.with_suffix(".log")
        self.proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def grpc(self) -> str:
        return f"{self.ip}:7070"

    @property
    def admin(self) -> str:
        # Admin RPCs have a port of their own; the data port does not answer them.
        return f"{self.ip}:7072"

    @property
    def http(self) -> str:
        return f"http://{self.ip}:7080"

    def start(self) -> None:
        assert self.proc is None
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [node_binary(), "--data-dir", str(self.data), "--listen", self.ip, *self.args],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
            )

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=WAIT)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=WAIT)
            self.proc = None

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http}/readyz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def status(self) -> Optional[admin_pb2.StatusResponse]:
        try:
            with grpc.insecure_channel(self.admin) as ch:
                return admin_pb2_grpc.AdminStub(ch).Status(admin_pb2.StatusRequest(), timeout=2)
        except grpc.RpcError:
            return None

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def wait_for(what: str, cond, timeout: float = WAIT, nodes: tuple[Node, ...] = ()):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    logs = "\n".join(f"--- {n.ip} ---\n{n.tail()}" for n in nodes)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}\n{logs}")


class NodeSet:
    """One shard of ``replicas`` nodes (a standalone node when 1)."""

    def __init__(self, replicas: int, dimension: int, metric: str, args: Sequence[str] = ()) -> None:
        n = next(_sets)
        assert n < 255, "too many node sets in one test process"
        self.tmp = Path(tempfile.mkdtemp(prefix="kindex-py-"))
        ips = [f"127.{_octet}.{n}.{i + 1}" for i in range(replicas)]
        common = ["--dimension", str(dimension), "--metric", metric, *args]
        if replicas > 1:
            peers = ",".join(f"{i}={ip}:7071" for i, ip in enumerate(ips))
            common += [
                "--peers", peers, "--bootstrap",
                "--raft-heartbeat-ms", "100", "--raft-election-timeout-ms", "800",
            ]
        self.nodes = [
            Node(ip, self.tmp / f"node-{i}", common + (["--node-id", str(i)] if replicas > 1 else []))
            for i, ip in enumerate(ips)
        ]
        for node in self.nodes:
            node.start()
        wait_for("nodes ready", lambda: all(x.ready() for x in self.nodes), nodes=tuple(self.nodes))

    @property
    def grpc_addrs(self) -> list[str]:
        return [x.grpc for x in self.nodes]

    def leader(self, exclude: Optional[Node] = None) -> Node:
        """The node that is leader by its own word and that every running node agrees on."""

        def find() -> Optional[Node]:
            running = [x for x in self.nodes if x.proc is not None and x is not exclude]
            st = [(x, x.status()) for x in running]
            leaders = [x for x, s in st if s is not None and s.role == "leader"]
            if len(leaders) != 1:
                return None
            lid = leaders[0].status()
            if lid is None:
                return None
            if all(s is not None and s.HasField("leader_id") and s.leader_id == lid.node_id for _, s in st):
                return leaders[0]
            return None

        return wait_for("one agreed leader", find, nodes=tuple(self.nodes))  # type: ignore[no-any-return]

    def close(self) -> None:
        for x in self.nodes:
            x.kill9()
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def node_bin() -> str:
    b = node_binary()
    if not os.access(b, os.X_OK):
        pytest.fail(f"kindex-node binary not found at {b}: build it (cargo build -p kindex-node) or set KINDEX_NODE_BIN")
    return b


@pytest.fixture(scope="module")
def node(node_bin: str) -> Iterator[Node]:
    """A standalone node: 4-d l2 vectors."""
    s = NodeSet(1, 4, "l2")
    try:
        yield s.nodes[0]
    finally:
        s.close()


@pytest.fixture
def cluster(node_bin: str) -> Iterator[NodeSet]:
    """A fresh 3-replica shard (8-d l2) per test."""
    s = NodeSet(3, 8, "l2")
    try:
        yield s
    finally:
        s.close()
