"""Witnesses cosign the broker's checkpoints (C2SP tlog-witness, tlog-cosignature).

One loop per configured witness, each under the supervisor, none on the publish path: when a
checkpoint is signed (or every ``POLL_SECONDS``, for checkpoints other processes signed) the
loop submits the latest one with ``old`` = the size that witness last cosigned and a consistency
proof from there, each request under a deadline and retried a bounded number of times with
backoff. A 409 names the size the witness holds: the loop retries once from it. A valid
cosignature line (checked with the witness's pinned vkey before anything is stored) is kept and
served with the checkpoint. A refusal (400, 403, 404, 422, or a 409 naming a size this log does
not reach or cannot prove from) is loud: ``broker_witness_refusals_total``, a WARNING line, an
audit event (action ``witness``, decision ``deny``) when a witness starts refusing or refuses for
a new reason, and ``/v1/health`` says the log is not witnessed until that witness cosigns again.
A witness that does not answer is only counted and logged: the next round tries again.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client import Counter, Gauge

from broker.crypto import cosignature, notes
from broker.domain.records import AuditDraft, Checkpoint
from broker.domain.witnessing import Cosignature, Witnessing, WitnessState, refusal_reason, witnessing
from broker.errors import InvalidInput
from broker.services import journal, ledger
from broker.services.context import Context
from broker.storage import witnessing as store
from broker.witness_settings import WitnessSettings

log = logging.getLogger(__name__)
POLL_SECONDS = ledger.WITNESS_POLL_SECONDS
ATTEMPTS = 3  # per request: the first try and two retries
FIRST_BACKOFF_SECONDS = 0.2
SIZE_TYPE = "text/x.tlog.size"
MAX_ANSWER_BYTES = 64 * 1024
REFUSALS = Counter(
    "broker_witness_refusals",
    "Checkpoints a witness refused to cosign, by witness and HTTP status",
    ["witness", "status"],
)
UNREACHABLE = Counter(
    "broker_witness_unreachable",
    "Rounds in which a witness did not answer within its deadline and retries, by witness",
    ["witness"],
)
COSIGNERS = Gauge(
    "broker_witness_cosigners",
    "Witnesses whose valid cosignature the latest checkpoint carries (as this process last saw)",
)


class _Unreachable(Exception):
    """No usable answer within the deadline and retries."""


@dataclass(frozen=True)
class _Answer:
    status: int
    body: str
    content_type: str


def client_ssl(witness: WitnessSettings) -> ssl.SSLContext | None:
    """TLS for an https:// witness: its CA (or the system's), and our client certificate."""
    if not witness.url.startswith("https://"):
        return None
    context = ssl.create_default_context(cafile=None if witness.ca is None else str(witness.ca))
    if witness.cert is not None and witness.key is not None:
        context.load_cert_chain(str(witness.cert), str(witness.key))
    return context


async def loop(ctx: Context, witness: WitnessSettings, stop: asyncio.Event) -> None:
    """Ask ``witness`` to cosign each new checkpoint until ``stop``. Failures other than an
    unreachable witness end the call; the supervisor restarts it after a backoff."""
    key = cosignature.parse_vkey(witness.vkey, kind=cosignature.COSIGNATURE_TYPE)
    wake = asyncio.Event()
    ctx.checkpoint_waiters.add(wake)
    timeout = aiohttp.ClientTimeout(total=ctx.settings.witness_timeout_seconds)
    connector = aiohttp.TCPConnector(ssl=client_ssl(witness) or True)
    try:
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            while not stop.is_set():
                wake.clear()
                try:
                    await submit_latest(ctx, witness, key, session)
                except _Unreachable as exc:
                    UNREACHABLE.labels(witness.name).inc()
                    log.warning("witness_unreachable witness=%s error=%s", witness.name, exc)
                await _pause(stop, wake, POLL_SECONDS)
    finally:
        ctx.checkpoint_waiters.discard(wake)


async def _pause(stop: asyncio.Event, wake: asyncio.Event, seconds: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    try:
        async with asyncio.timeout(seconds):
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    except TimeoutError:
        pass
    finally:
        for waiter in waiters:
            waiter.cancel()


async def submit_latest(
    ctx: Context, witness: WitnessSettings, key: cosignature.VerifierKey, session: aiohttp.ClientSession
) -> None:
    """One round: submit the latest checkpoint unless this witness already cosigned or refused it."""
    async with ctx.db.read_transaction() as tx:
        checkpoint = await tx.latest_checkpoint()
        state = (await store.states(tx)).get(witness.name)
        held = [] if checkpoint is None else await store.cosignatures(tx, checkpoint.size)
    if checkpoint is None:
        return
    if any(c.witness == witness.name for c in held):
        COSIGNERS.set(len(held))
        return
    if state is not None and state.refused_size == checkpoint.size:
        return  # refused already: said once, not again for the same checkpoint
    old = 0 if state is None else state.cosigned_size
    answer = await _add_checkpoint(ctx, witness, session, checkpoint, old)
    if answer.status == 409:
        learned = _size(answer)
        if learned is None:
            await _refused(ctx, witness, checkpoint, state, answer.status, "witness_bad_request", None)
            return
        if learned > checkpoint.size or learned == old:
            await _refused(
                ctx, witness, checkpoint, state, 409, refusal_reason(409, proof_failed=True), learned
            )
            return
        answer = await _add_checkpoint(ctx, witness, session, checkpoint, learned)
    if answer.status == 200:
        await _cosigned(ctx, witness, key, checkpoint, state, answer.body)
    elif answer.status == 409:
        await _refused(
            ctx, witness, checkpoint, state, 409, refusal_reason(409, proof_failed=True), _size(answer)
        )
    else:
        await _refused(ctx, witness, checkpoint, state, answer.status, refusal_reason(answer.status), None)


def _size(answer: _Answer) -> int | None:
    text = answer.body
    if answer.content_type != SIZE_TYPE or not text.endswith("\n") or not text[:-1].isdigit():
        return None
    return int(text[:-1])


async def _add_checkpoint(
    ctx: Context, witness: WitnessSettings, session: aiohttp.ClientSession, checkpoint: Checkpoint, old: int
) -> _Answer:
    proof = await _proof(ctx, old, checkpoint.size)
    if proof is None:  # the witness holds a size this log cannot prove from: a 409 we cannot answer
        return _Answer(status=409, body=f"{old}\n", content_type=SIZE_TYPE)
    body = cosignature.format_add_checkpoint(old_size=old, proof=proof, note=checkpoint.note)
    return await _post(witness, session, body)


async def _proof(ctx: Context, old: int, size: int) -> list[bytes] | None:
    if old == 0 or old == size:
        return []
    try:
        proof = await ledger.consistency(ctx, first=old, second=size)
    except InvalidInput:
        return None
    return [bytes.fromhex(h) for h in proof["path"]]


async def _post(witness: WitnessSettings, session: aiohttp.ClientSession, body: bytes) -> _Answer:
    """POST add-checkpoint; 5xx, timeouts and connection errors are retried with backoff."""
    delay = FIRST_BACKOFF_SECONDS
    problem = "no attempt"
    for attempt in range(ATTEMPTS):
        if attempt:
            await asyncio.sleep(delay)  # a backoff between tries, not a synchronisation
            delay *= 2
        try:
            async with session.post(witness.endpoint, data=body) as response:
                text = (await _answer_bytes(response)).decode("utf-8", "replace")
                if response.status < 500:
                    return _Answer(status=response.status, body=text, content_type=response.content_type)
                problem = f"HTTP {response.status}"
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
    raise _Unreachable(problem)


async def _answer_bytes(response: aiohttp.ClientResponse) -> bytes:
    """The answer's body, whole, up to ``MAX_ANSWER_BYTES``: ``read(n)`` returns what has arrived
    so far, and an answer arriving in pieces was cut at the first (a cosignature taken for a bad
    one, a refusal reported for a witness that cosigned). Within the request's deadline."""
    body = bytearray()
    while len(body) < MAX_ANSWER_BYTES and (piece := await response.content.readany()):
        body += piece
    return bytes(body[:MAX_ANSWER_BYTES])


async def _cosigned(
    ctx: Context,
    witness: WitnessSettings,
    key: cosignature.VerifierKey,
    checkpoint: Checkpoint,
    state: WitnessState | None,
    body: str,
) -> None:
    line, timestamp = _valid_line(checkpoint.note, body, key)
    if line is None:
        await _refused(ctx, witness, checkpoint, state, 200, "witness_bad_cosignature", None)
        return
    now = ctx.now()
    async with ctx.db.transaction() as tx:
        await store.store_cosignature(
            tx,
            Cosignature(
                size=checkpoint.size, witness=witness.name, line=line, timestamp=timestamp, received_at=now
            ),
        )
        known = (await store.states(tx)).get(witness.name)
        if known is None or known.cosigned_size <= checkpoint.size:
            await store.save_state(
                tx, WitnessState(witness=witness.name, cosigned_size=checkpoint.size, updated_at=now)
            )
        held = await store.cosignatures(tx, checkpoint.size)
    COSIGNERS.set(len(held))
    log.info("witness_cosigned witness=%s size=%s", witness.name, checkpoint.size)


def _valid_line(note: str, body: str, key: cosignature.VerifierKey) -> tuple[str | None, int]:
    """The answer's line that is a valid cosignature by ``key`` on ``note``, and its timestamp."""
    for line in body.splitlines():
        if not line.startswith(f"{notes.DASH} {key.name} "):
            continue
        try:
            found = cosignature.cosigners(note + line + "\n", [key])
        except (cosignature.CosignatureError, notes.NoteError):
            continue
        if key.name in found:
            return line + "\n", found[key.name]
    return None, 0


async def _refused(
    ctx: Context,
    witness: WitnessSettings,
    checkpoint: Checkpoint,
    state: WitnessState | None,
    status: int,
    reason: str,
    witness_size: int | None,
) -> None:
    REFUSALS.labels(witness.name, str(status)).inc()
    log.warning(
        "witness_refused witness=%s status=%s reason=%s size=%s witness_size=%s",
        witness.name,
        status,
        reason,
        checkpoint.size,
        witness_size,
    )
    now = ctx.now()
    details: dict[str, Any] = {"witness": witness.name, "status": status, "size": checkpoint.size}
    if witness_size is not None:
        details["witness_size"] = witness_size
    async with ctx.db.transaction() as tx:
        known = (await store.states(tx)).get(witness.name) or state
        cosigned = 0 if known is None else known.cosigned_size
        new = WitnessState(
            witness=witness.name,
            cosigned_size=cosigned,
            updated_at=now,
            refused_size=checkpoint.size,
            refused_status=status,
            refused_reason=reason,
        )
        if known is None or known.refused_reason != reason:  # the head before the state's row
            draft = AuditDraft(
                action="witness", actor="broker", decision="deny", reason=reason, details=details
            )
            await journal.record(tx, [draft], now=now)
        await store.save_state(tx, new)


async def status(ctx: Context) -> Witnessing:
    """Whether the latest checkpoint is witnessed, for /v1/health."""
    async with ctx.db.read_transaction() as tx:
        checkpoint = await tx.latest_checkpoint()
        held = [] if checkpoint is None else await store.cosignatures(tx, checkpoint.size)
        states = await store.states(tx)
    configured = {w.name for w in ctx.settings.witnesses}
    return witnessing(
        quorum=ctx.settings.witness_quorum,
        latest=[c for c in held if c.witness in configured],
        states=[s for name, s in states.items() if name in configured],
    )
