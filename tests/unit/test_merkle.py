"""The Merkle tree against the published transparency-dev/merkle (RFC 6962) values, and
properties against a direct implementation of the RFC's definitions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.crypto import merkle

# Leaf inputs and expected hashes published with transparency-dev/merkle (testonly/constants.go
# and reference_test.go); the tests around them are ours.
LEAVES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
ROOTS = [
    bytes.fromhex(h)
    for h in [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
]
H = {
    "l1": "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "l0": "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "l4": "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    "n1_0": "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "n1_1": "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
    "n1_2": "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
    "n1_3": "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    "n2_0": "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "n2_1": "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
}
INCLUSION = [
    (0, 1, []),
    (0, 2, ["l1"]),
    (1, 2, ["l0"]),
    (2, 3, ["n1_0"]),
    (1, 5, ["l0", "n1_1", "l4"]),
    (0, 8, ["l1", "n1_1", "n2_1"]),
    (5, 8, ["l4", "n1_3", "n2_0"]),
]
CONSISTENCY = [
    (1, 1, []),
    (1, 8, ["l1", "n1_1", "n2_1"]),
    (2, 5, ["n1_1", "l4"]),
    (6, 8, ["n1_2", "n1_3", "n2_0"]),
]


def build(leaves: list[bytes]) -> tuple[dict[merkle.Coord, bytes], list[merkle.Node]]:
    frontier, created = merkle.append([], [merkle.hash_leaf(x) for x in leaves], 0)
    return {(lvl, idx): h for lvl, idx, h in created}, frontier


def test_roots_for_every_size() -> None:
    for size, expected in enumerate(ROOTS):
        nodes, frontier = build(LEAVES[:size])
        assert merkle.root_of(frontier) == expected
        assert merkle.range_root(0, size, nodes) == expected


def test_incremental_appends_match_bulk() -> None:
    frontier: list[merkle.Node] = []
    for size, leaf in enumerate(LEAVES):
        frontier, _ = merkle.append(frontier, [merkle.hash_leaf(leaf)], size)
        assert merkle.root_of(frontier) == ROOTS[size + 1]


@pytest.mark.parametrize(("index", "size", "want"), INCLUSION)
def test_inclusion_vectors(index: int, size: int, want: list[str]) -> None:
    nodes, _ = build(LEAVES)
    proof = [merkle.range_root(lo, hi, nodes) for lo, hi in merkle.inclusion_ranges(index, size)]
    assert [p.hex() for p in proof] == [H[w] for w in want]
    assert merkle.verify_inclusion(
        index=index, size=size, leaf_hash=merkle.hash_leaf(LEAVES[index]), proof=proof, root=ROOTS[size]
    )


@pytest.mark.parametrize(("first", "second", "want"), CONSISTENCY)
def test_consistency_vectors(first: int, second: int, want: list[str]) -> None:
    nodes, _ = build(LEAVES)
    proof = [merkle.range_root(lo, hi, nodes) for lo, hi in merkle.consistency_ranges(first, second)]
    assert [p.hex() for p in proof] == [H[w] for w in want]
    assert merkle.verify_consistency(
        first=first, second=second, first_root=ROOTS[first], second_root=ROOTS[second], proof=proof
    )


def _reference_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 MTH, written straight from its definition."""
    if not leaves:
        return merkle.EMPTY_ROOT
    if len(leaves) == 1:
        return merkle.hash_leaf(leaves[0])
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return merkle.hash_children(_reference_root(leaves[:k]), _reference_root(leaves[k:]))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 70), st.data())
def test_proofs_verify_and_tampering_fails(size: int, data: st.DataObject) -> None:
    leaves = [i.to_bytes(4, "big") for i in range(size)]
    nodes, frontier = build(leaves)
    root = merkle.root_of(frontier)
    assert root == _reference_root(leaves)
    index = data.draw(st.integers(0, size - 1))
    proof = [merkle.range_root(lo, hi, nodes) for lo, hi in merkle.inclusion_ranges(index, size)]
    leaf = merkle.hash_leaf(leaves[index])
    assert merkle.verify_inclusion(index=index, size=size, leaf_hash=leaf, proof=proof, root=root)
    assert not merkle.verify_inclusion(
        index=index, size=size, leaf_hash=merkle.hash_leaf(b"x"), proof=proof, root=root
    )
    assert len(merkle.needed(merkle.inclusion_ranges(index, size))) <= 2 * size.bit_length()
    first = data.draw(st.integers(1, size))
    proof = [merkle.range_root(lo, hi, nodes) for lo, hi in merkle.consistency_ranges(first, size)]
    first_root = _reference_root(leaves[:first])
    assert merkle.verify_consistency(
        first=first, second=size, first_root=first_root, second_root=root, proof=proof
    )
    if first < size:
        assert not merkle.verify_consistency(
            first=first, second=size, first_root=merkle.hash_leaf(b"x"), second_root=root, proof=proof
        )
