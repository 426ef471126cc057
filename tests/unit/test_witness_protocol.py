"""The witness's add-checkpoint rules as pure functions, in the order C2SP tlog-witness lists
them, and signed-note's rule for a note's trusted signature lines (notes.signed_by)."""

from __future__ import annotations

import base64
import os

import pytest

from broker.crypto import cosignature, notes
from broker.witness import protocol
from broker.witness.protocol import Latest, Refused
from tests.integration.witness_log import EMPTY_ROOT, forked_trees

ORIGIN = "log.example/a"
KEY = os.urandom(32)
LOGS = protocol.logs_by_origin([cosignature.parse_vkey(notes.vkey(ORIGIN, notes.public_key(KEY)), kind=0x01)])
TREE, FORK = forked_trees(shared=4, size=20, seed=b"unit")


def _body(
    old: int, size: int, root: bytes, proof: list[bytes], *, key: bytes = KEY, origin: str = ORIGIN
) -> bytes:
    note, _ = notes.sign(notes.CheckpointBody(origin, size, root), name=origin, private_key=key)
    return cosignature.format_add_checkpoint(old_size=old, proof=proof, note=note)


def _status(body: bytes, latest: Latest | None) -> int:
    try:
        protocol.check(protocol.read(body, LOGS), latest)
    except Refused as refused:
        return refused.status
    return 200


AT_8 = Latest(size=8, root=TREE.root(8))
CASES = [
    ("first checkpoint", _body(0, 8, TREE.root(8), []), None, 200),
    ("empty tree", _body(0, 0, EMPTY_ROOT, []), None, 200),
    ("size 0, other root", _body(0, 0, TREE.root(1), []), None, 422),
    ("proof from 0", _body(0, 8, TREE.root(8), [TREE.root(1)]), None, 422),
    ("extends", _body(8, 12, TREE.root(12), TREE.proof(8, 12)), AT_8, 200),
    ("same again", _body(8, 8, TREE.root(8), []), AT_8, 200),
    ("same size, other root", _body(8, 8, FORK.root(8), []), AT_8, 409),
    ("fork", _body(8, 12, FORK.root(12), FORK.proof(8, 12)), AT_8, 422),
    ("stale old", _body(0, 12, TREE.root(12), []), AT_8, 409),
    ("old above size", _body(9, 8, TREE.root(8), []), AT_8, 400),
    ("unknown origin", _body(0, 0, EMPTY_ROOT, [], origin="other.example"), None, 404),
    ("another key", _body(0, 0, EMPTY_ROOT, [], key=os.urandom(32)), None, 403),
    ("malformed", b"old 0\n\nnot a note\n", None, 400),
]


@pytest.mark.parametrize(("body", "latest", "status"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_rule_answers_its_status(body: bytes, latest: Latest | None, status: int) -> None:
    assert _status(body, latest) == status


def test_the_409_carries_the_stored_size_and_refusals_after_the_signature_are_evidence() -> None:
    with pytest.raises(Refused) as refused:
        protocol.check(protocol.read(_body(3, 12, TREE.root(12), TREE.proof(3, 12)), LOGS), AT_8)
    assert (refused.value.status, refused.value.latest_size, refused.value.signed) == (409, 8, True)
    with pytest.raises(Refused) as unsigned:
        protocol.read(_body(0, 0, EMPTY_ROOT, [], key=os.urandom(32)), LOGS)
    assert not unsigned.value.signed


def test_signed_by_ignores_unknown_lines_and_fails_on_a_failing_trusted_one() -> None:
    note, _ = notes.sign(notes.CheckpointBody(ORIGIN, 1, TREE.root(1)), name=ORIGIN, private_key=KEY)
    stranger, _ = notes.sign(
        notes.CheckpointBody(ORIGIN, 1, TREE.root(1)), name="x", private_key=os.urandom(32)
    )
    both = note + stranger.split("\n\n")[1]
    body, lines = notes.signed_by(both, [(ORIGIN, notes.public_key(KEY))])
    assert body.size == 1 and lines == [note.split("\n\n")[1]]
    raw = bytearray(base64.b64decode(note.split(" ")[-1]))
    raw[20] ^= 1  # in the signature, after the key id: a trusted line that fails
    forged = f"{notes.DASH} {ORIGIN} {base64.b64encode(bytes(raw)).decode()}\n"
    with pytest.raises(notes.NoteError):
        notes.signed_by(note + forged, [(ORIGIN, notes.public_key(KEY))])
    with pytest.raises(notes.NoteError):
        notes.signed_by(stranger, [(ORIGIN, notes.public_key(KEY))])
