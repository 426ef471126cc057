"""The cosignature module against the C2SP texts' own shapes (the independent check of the
formats, written from the specification, lives in the witness tests)."""

from __future__ import annotations

import base64
import os

import pytest

from broker.crypto import cosignature, notes


def _checkpoint() -> tuple[str, str]:
    body = notes.CheckpointBody(origin="example.org/log", size=5, root=bytes(range(32)))
    note, _ = notes.sign(body, name="example.org/log", private_key=os.urandom(32))
    return note, body.text()


def test_cosignature_round_trip_and_key_id_type() -> None:
    private = os.urandom(32)
    public = notes.public_key(private)
    note, text = _checkpoint()
    line = cosignature.cosign(text, name="w1.example", private_key=private, timestamp=1_700_000_000)
    assert line.startswith("\u2014 w1.example ") and line.endswith("\n")
    key = cosignature.parse_vkey(cosignature.cosigner_vkey("w1.example", public), kind=0x04)
    assert cosignature.cosigners(cosignature.merge(note, line), [key]) == {"w1.example": 1_700_000_000}
    # the log's own key type (0x01) is not accepted as a cosigner key
    with pytest.raises(cosignature.CosignatureError):
        cosignature.parse_vkey(notes.vkey("w1.example", public), kind=0x04)


def test_a_line_by_the_pinned_key_that_fails_is_an_error_not_a_skip() -> None:
    private = os.urandom(32)
    note, text = _checkpoint()
    line = cosignature.cosign(text, name="w1", private_key=private, timestamp=7)
    raw = bytearray(base64.b64decode(line.split(" ")[2]))
    raw[-1] ^= 1
    forged = f"\u2014 w1 {base64.b64encode(bytes(raw)).decode()}\n"
    key = cosignature.parse_vkey(cosignature.cosigner_vkey("w1", notes.public_key(private)), kind=0x04)
    with pytest.raises(cosignature.CosignatureError):
        cosignature.cosigners(note + forged, [key])


@pytest.mark.parametrize(
    "body",
    [
        b"old 01\n\nx",
        b"old 1\nnotbase64\n\nx",
        b"old 1\nx",
        b"new 1\n\nx",
        b"\xff\n\nx",
        b"old 18446744073709551616\n\nx",  # 2^64: a Go witness's uint64 cannot hold it
        b"old 99999999999999999999\n\nx",
        ("old 1\n" + "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n" * 64 + "\nx").encode(),
    ],
)
def test_malformed_add_checkpoint_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(cosignature.CosignatureError):
        cosignature.parse_add_checkpoint(body)


def test_add_checkpoint_round_trip() -> None:
    note, _ = _checkpoint()
    proof = [bytes([i]) * 32 for i in range(3)]
    parsed = cosignature.parse_add_checkpoint(
        cosignature.format_add_checkpoint(old_size=3, proof=proof, note=note)
    )
    assert (parsed.old_size, list(parsed.proof), parsed.note) == (3, proof, note)


def test_sizes_past_uint64_are_not_a_checkpoint() -> None:
    """C2SP sizes are uint64: 2^64 - 1 parses, 2^64 and above (20 digits fit the pattern) do not."""
    biggest = notes.CheckpointBody(origin="example.org/log", size=2**64 - 1, root=bytes(32))
    note, _ = notes.sign(biggest, name="example.org/log", private_key=os.urandom(32))
    assert notes.parse(note)[1].size == 2**64 - 1
    for size in ("18446744073709551616", "99999999999999999999"):
        with pytest.raises(notes.MalformedNote):
            notes.parse(note.replace("18446744073709551615", size, 1))
