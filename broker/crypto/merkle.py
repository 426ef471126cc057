"""RFC 6962 / RFC 9162 Merkle tree: hashing, compact appends, and O(log n) proofs.

Storage model: every *perfect* subtree, once complete, is stored as a node ``(level, index)``
(level 0 = leaves; the node covers leaves ``[index << level, (index + 1) << level)``). The root
of any prefix, and every hash an inclusion or consistency proof needs, is the right fold of at
most O(log n) such nodes. The "frontier" is the list of perfect subtrees covering the whole
tree, largest first: enough to append and to compute the current root without reading anything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

Coord = tuple[int, int]  # (level, index)
Node = tuple[int, int, bytes]  # (level, index, hash)
EMPTY_ROOT = hashlib.sha256(b"").digest()


def hash_leaf(data: bytes) -> bytes:
    """SHA-256(0x00 || data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def hash_children(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(size: int) -> int:
    """The largest power of two smaller than ``size`` (size >= 2)."""
    return 1 << ((size - 1).bit_length() - 1)


def _is_perfect(lo: int, hi: int) -> bool:
    size = hi - lo
    return size > 0 and size & (size - 1) == 0 and lo % size == 0


def perfect_parts(lo: int, hi: int) -> list[Coord]:
    """Stored nodes whose right fold is the RFC 6962 hash of leaves ``[lo, hi)``."""
    parts: list[Coord] = []
    while lo < hi:
        size = hi - lo
        step = size if _is_perfect(lo, hi) else _split(size)
        level = step.bit_length() - 1
        parts.append((level, lo >> level))
        lo += step
    return parts


def fold(hashes: Sequence[bytes]) -> bytes:
    """Right fold: H(h0, H(h1, ... H(h[n-2], h[n-1])))."""
    result = hashes[-1]
    for value in reversed(hashes[:-1]):
        result = hash_children(value, result)
    return result


def range_root(lo: int, hi: int, nodes: Mapping[Coord, bytes]) -> bytes:
    """Hash of leaves ``[lo, hi)`` from stored perfect-subtree nodes."""
    if lo == hi:
        return EMPTY_ROOT
    return fold([nodes[c] for c in perfect_parts(lo, hi)])


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """Leaf ranges whose hashes form the inclusion proof of ``index`` in a tree of ``size``,
    in proof order (nearest the leaf first)."""
    if not 0 <= index < size:
        raise ValueError("index must be below size")
    ranges: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        mid = lo + _split(hi - lo)
        if index < mid:
            ranges.append((mid, hi))
            hi = mid
        else:
            ranges.append((lo, mid))
            lo = mid
    return ranges[::-1]


def consistency_ranges(first: int, second: int) -> list[tuple[int, int]]:
    """Leaf ranges whose hashes form the consistency proof between sizes ``first`` and
    ``second`` (RFC 9162 section 2.1.4.1), in proof order."""
    if not 0 < first <= second:
        raise ValueError("need 0 < first <= second")
    ranges: list[tuple[int, int]] = []
    lo, hi, have_root = 0, second, True
    while first != hi - lo:
        mid = lo + _split(hi - lo)
        if first <= mid - lo:
            ranges.append((mid, hi))
            hi = mid
        else:
            ranges.append((lo, mid))
            first -= mid - lo
            lo, have_root = mid, False
    if not have_root:
        ranges.append((lo, hi))
    return ranges[::-1]


def needed(ranges: Iterable[tuple[int, int]]) -> set[Coord]:
    """Every stored node the given ranges' hashes are folded from."""
    return {c for lo, hi in ranges for c in perfect_parts(lo, hi)}


def append(
    frontier: Sequence[Node], leaf_hashes: Sequence[bytes], size: int
) -> tuple[list[Node], list[Node]]:
    """Append leaves to a tree of ``size`` leaves with the given frontier. Returns the new
    frontier and every node completed on the way (the leaves included), to be stored."""
    stack = list(frontier)
    created: list[Node] = []
    for offset, leaf in enumerate(leaf_hashes):
        node: Node = (0, size + offset, leaf)
        created.append(node)
        while stack and stack[-1][0] == node[0]:
            left = stack.pop()
            node = (node[0] + 1, node[1] >> 1, hash_children(left[2], node[2]))
            created.append(node)
        stack.append(node)
    return stack, created


def root_of(frontier: Sequence[Node]) -> bytes:
    """The root hash of the tree the frontier covers."""
    return fold([n[2] for n in frontier]) if frontier else EMPTY_ROOT


def verify_inclusion(*, index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2."""
    if not 0 <= index < size:
        return False
    fn, sn, result = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            result = hash_children(p, result)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            result = hash_children(result, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and result == root


def verify_consistency(
    *, first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 section 2.1.4.2."""
    if first == second:
        return not proof and first_root == second_root
    if not 0 < first < second or not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = hash_children(c, fr), hash_children(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = hash_children(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == first_root and sr == second_root
