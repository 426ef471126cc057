"""A test log for the witness tests: Merkle trees (RFC 9162, built with broker.crypto.merkle's
hashes) that give roots and consistency proofs, and a witness process to start and kill."""

from __future__ import annotations

import hashlib
import os
import selectors
import subprocess
import sys
import time
from functools import cache
from pathlib import Path

from broker.crypto import merkle

ROOT = Path(__file__).resolve().parent.parent.parent
EMPTY_ROOT = hashlib.sha256(b"").digest()


class Tree:
    """A Merkle tree over ``leaves``: the root at any size and the proof between two sizes."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.leaves = leaves
        self.hashes = [merkle.hash_leaf(leaf) for leaf in leaves]
        self._node = cache(self._mth)

    def __len__(self) -> int:
        return len(self.hashes)

    def _mth(self, lo: int, hi: int) -> bytes:
        if hi - lo == 1:
            return self.hashes[lo]
        k = _split(hi - lo)
        return merkle.hash_children(self._node(lo, lo + k), self._node(lo + k, hi))

    def root(self, size: int) -> bytes:
        return EMPTY_ROOT if size == 0 else self._node(0, size)

    def proof(self, old: int, new: int) -> list[bytes]:
        """RFC 9162 section 2.1.4.1 PROOF(old, D[0:new]); empty when old is 0 or new."""
        return [] if old in (0, new) else self._subproof(old, 0, new, complete=True)

    def _subproof(self, m: int, lo: int, hi: int, *, complete: bool) -> list[bytes]:
        if m == hi - lo:
            return [] if complete else [self._node(lo, hi)]
        k = _split(hi - lo)
        if m <= k:
            return [*self._subproof(m, lo, lo + k, complete=complete), self._node(lo + k, hi)]
        return [*self._subproof(m - k, lo + k, hi, complete=False), self._node(lo, lo + k)]


def _split(n: int) -> int:
    """The largest power of two below n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def forked_trees(*, shared: int, size: int, seed: bytes) -> tuple[Tree, Tree]:
    """Two trees of ``size`` leaves that agree on the first ``shared`` and differ after."""
    common = [seed + b"/common/%d" % i for i in range(shared)]
    a = common + [seed + b"/a/%d" % i for i in range(shared, size)]
    b = common + [seed + b"/b/%d" % i for i in range(shared, size)]
    return Tree(a), Tree(b)


def witness_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def start_witness(
    folder: Path, *logs: str, extra: tuple[str, ...] = (), seconds: float = 20
) -> tuple[subprocess.Popen[bytes], int]:
    """``python -m broker witness serve`` on a free loopback port; the process and its port,
    once it logged that it listens. AssertionError with its output if it ends or takes longer."""
    args = [sys.executable, "-m", "broker", "witness", "serve", "--dir", str(folder), "--port", "0", *extra]
    for log in logs:
        args += ["--log", log]
    proc = subprocess.Popen(
        args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=witness_env(), cwd=ROOT
    )
    marker = b"://127.0.0.1:"
    output = read_until(proc, b"serving on", seconds=seconds)
    port = int(output.rsplit(marker, 1)[1].split(b"\n", 1)[0])
    return proc, port


def read_until(proc: subprocess.Popen[bytes], marker: bytes, *, seconds: float) -> bytes:
    """What ``proc`` wrote to stderr up to the line holding ``marker``, within ``seconds``."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    output = b""
    deadline = time.monotonic() + seconds
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while marker not in output or not output.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise AssertionError(f"no {marker!r} within {seconds} s: {output.decode(errors='replace')}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"the witness ended ({proc.wait()}): {output.decode(errors='replace')}")
            output += chunk
    return output
