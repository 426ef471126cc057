"""The SDK's client (see ``broker.client`` for the error tree; the errors are in
``broker.client.errors``, the checkpoint checks in ``broker.client.checkpoints``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import ssl
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from broker.client import checkpoints
from broker.client.checkpoints import agrees_with_note, verify_witnessed
from broker.client.errors import (
    ApiError,
    ClientError,
    SealedError,
    SignatureError,
    StreamClosed,
    Unreachable,
    WitnessError,
)
from broker.crypto import notes, seal, signing
from broker.crypto.keys import Ed25519PrivateKey, X25519PrivateKey
from broker.domain.canonical import canonical

PERMANENT_CLOSE_CODES = {4001: "node revoked", 4400: "the broker rejected a client message"}
# A refused handshake with one of these (or any 5xx) is retried with the backoff, like a dropped
# connection: too many streams or requests now, or a broker (or proxy) that is briefly unwell.
# Any other 4xx means the request itself is refused and is raised as ApiError.
RETRY_STATUSES = frozenset({408, 425, 429})
MAX_RETRY_AFTER = 3600.0
DEDUP_WINDOW = 100_000


class _Interrupted(Exception):
    """A stream's report could not be opened for a passing reason: reconnect and resume."""


Tls = ssl.SSLContext | tuple[str | Path, str | Path, str | Path]


def tls_context(tls: Tls) -> ssl.SSLContext:
    """An SSL context as given, or one from (CA file, client certificate, client key)."""
    if isinstance(tls, ssl.SSLContext):
        return tls
    ca, cert, key = tls
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(str(cert), str(key))
    return context


@dataclass(frozen=True)
class Received:
    """A report as received: ``payload`` opened, ``verified`` True when the originator's
    signature checked out, False when the originator has no signing key."""

    id: str
    sequence: int
    originator: dict[str, str]
    label: dict[str, Any]
    topics: list[str]
    created: str
    payload: dict[str, Any]
    signature: str | None
    verified: bool
    was_sealed: bool


@dataclass(frozen=True)
class Recall:
    """A recall notice: the report ``id`` (stream sequence ``sequence``) was recalled or erased
    at the broker; any copy of it must be dropped."""

    id: str
    sequence: int


def _retry_after(headers: Mapping[str, str] | None) -> float:
    """The seconds a ``Retry-After`` header asks for (0 when absent or a date)."""
    raw = (headers or {}).get("Retry-After", "")
    try:
        return min(max(float(raw), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        return 0.0


@dataclass
class _Resume:
    """Where a stream resumes after a dropped connection, and the ids it yielded lately."""

    last: int | None
    seen: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def saw(self, report_id: str) -> None:
        self.seen[report_id] = None
        if len(self.seen) > DEDUP_WINDOW:
            self.seen.popitem(last=False)


class BrokerClient:
    """A node's connection to one broker. Use as ``async with BrokerClient(...) as client``."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        signing_key: Ed25519PrivateKey | None = None,
        sealing_key: X25519PrivateKey | None = None,
        trusted_keys: Mapping[str, str] | None = None,
        tls: Tls | None = None,
        reconnect_delay: float = 0.2,
        max_reconnect_delay: float = 10.0,
        give_up_after: float | None = 300.0,
        keep: int = 1000,
        trusted_checkpoint: str | None = None,
    ) -> None:
        """``trusted_keys`` maps node ids to Ed25519 public keys (base64) learnt out of band; a
        node not in it has its key fetched from the broker (which then has to be trusted).

        ``tls``: an ``ssl.SSLContext``, or (CA file, client certificate, client key) for mutual
        TLS, where the certificate identifies the node and ``token`` may be left out. Streams
        reconnect with exponential backoff and jitter (``reconnect_delay`` doubling up to
        ``max_reconnect_delay``) and raise ``Unreachable`` after ``give_up_after`` seconds
        without a connection (None: never).

        ``held``: the last ``keep`` reports its streams yielded, by id; a recall notice removes
        the recalled report from it (and is passed to the stream's ``on_recall``).

        ``trusted_checkpoint``: a checkpoint note this auditor verified before (an earlier
        client's ``trusted_checkpoint``), which ``witnessed_checkpoint`` then requires the
        broker's checkpoints to extend; WitnessError now if it is no checkpoint note, and at the
        first ``witnessed_checkpoint`` if it is not one of that log."""
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._ssl = None if tls is None else tls_context(tls)
        self._max_delay = max_reconnect_delay
        self._give_up = give_up_after
        self._signing_key = signing_key
        self._sealing_key = sealing_key
        self._trusted = dict(trusted_keys or {})
        self._fetched: dict[str, str | None] = {}
        self._delay = reconnect_delay
        self._session: aiohttp.ClientSession | None = None
        self._keep = keep
        self.held: OrderedDict[str, Received] = OrderedDict()
        self._checkpoint = checkpoints.Remembered(trusted_checkpoint)

    async def __aenter__(self) -> BrokerClient:
        connector = aiohttp.TCPConnector(ssl=self._ssl) if self._ssl is not None else None
        self._session = aiohttp.ClientSession(connector=connector)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def trusted_checkpoint(self) -> str | None:
        """The note of the largest checkpoint this client verified (or was given): save it, and
        pass it as ``trusted_checkpoint`` to the next client, so that a broker cannot roll its log
        back or fork it between two runs either. None before the first."""
        return self._checkpoint.note

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise ClientError("use the client as `async with BrokerClient(...)`")
        return self._session

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Any:
        try:
            async with self.session.request(
                method,
                self.base_url + path,
                json=body,
                params=params,
                headers={**self._headers, **(headers or {})},
            ) as resp:
                answer = await resp.json(content_type=None)
                if resp.status >= 400:
                    raise ApiError(resp.status, answer if isinstance(answer, dict) else {})
                return answer
        except aiohttp.ClientError as exc:  # the SDK's own error, never a bare aiohttp one
            raise Unreachable(f"{method} {path}: {exc}") from exc
        except ValueError as exc:
            raise ClientError(f"{method} {path}: the broker's answer is not JSON") from exc

    async def publish(
        self,
        *,
        label: Mapping[str, Any],
        payload: Mapping[str, Any],
        topics: Sequence[str] = (),
        idempotency_key: str | None = None,
        report_id: str | None = None,
    ) -> dict[str, Any]:
        """Publish a report, signed when the client has a signing key. Returns the receipt."""
        body: dict[str, Any] = {"label": dict(label), "topics": list(topics), "payload": dict(payload)}
        if report_id is not None:
            body["id"] = report_id
        if self._signing_key is not None:
            message = signing.signing_message(
                canonical_label=canonical(body["label"]), canonical_payload=canonical(body["payload"])
            )
            body["signature"] = signing.sign(private_key=self._signing_key, message=message)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return dict(await self._call("POST", "/v1/reports", body=body, headers=headers))

    async def witnessed_checkpoint(
        self, *, log_key: str, witnesses: Sequence[str], quorum_size: int
    ) -> dict[str, Any]:
        """The latest checkpoint (role audit), returned only if ``verify_witnessed`` holds, the
        fields beside its note (``size``, ``head``, ``root``, ``origin``) say what the note says,
        and it extends ``trusted_checkpoint``, the largest one this client verified before, which
        it then replaces. WitnessError for a smaller one (a rollback), another root at the same
        size, or a larger one the broker's consistency proof does not join to it (a fork); the
        broker's refusal to give that proof is raised as ApiError. ``cosigners`` is replaced by
        the witnesses whose cosignatures verified."""
        checkpoint = await self._call("GET", "/v1/audit/checkpoints/latest")
        if not isinstance(checkpoint, dict):
            raise WitnessError("the broker's checkpoint is not a JSON object")
        note = str(checkpoint.get("note", ""))
        verdict = verify_witnessed(note, log_key=log_key, witnesses=witnesses, quorum_size=quorum_size)
        body = notes.parse(note)[1]
        agrees_with_note(checkpoint, body)
        await self._remember(note, body, log_key=log_key)
        cosigners = sorted(verdict.cosigners.items())
        return {**checkpoint, "cosigners": [{"name": n, "timestamp": t} for n, t in cosigners]}

    async def _remember(self, note: str, body: notes.CheckpointBody, *, log_key: str) -> None:
        """Remember ``note`` once it extends the checkpoint remembered (WitnessError if not)."""
        async with self._checkpoint.lock:
            known = self._checkpoint.known(log_key=log_key)
            if known is not None and checkpoints.needs_proof(known, body):
                params = {"first": str(known.size), "second": str(body.size)}
                answer = await self._call("GET", "/v1/audit/proofs/consistency", params=params)
                checkpoints.check_consistency(known, body, answer)
            self._checkpoint.note = note

    async def read(self, report_id: str) -> Received:
        return await self.open(await self._call("GET", f"/v1/reports/{report_id}"))

    async def list(
        self, *, after: int = 0, limit: int = 100, topics: Sequence[str] = ()
    ) -> tuple[list[Received], int]:
        params = {"after": str(after), "limit": str(limit)}
        if topics:
            params["topics"] = ",".join(topics)
        page = await self._call("GET", "/v1/reports", params=params)
        return [await self.open(r) for r in page["reports"]], int(page["next_after"])

    async def recall(self, report_id: str) -> None:
        await self._call("POST", f"/v1/reports/{report_id}/recall")

    async def _originator_key(self, node_id: str) -> str | None:
        if node_id in self._trusted:
            return self._trusted[node_id]
        if node_id not in self._fetched:
            self._fetched[node_id] = (await self._call("GET", f"/v1/nodes/{node_id}"))["ed25519_public_key"]
        return self._fetched[node_id]

    async def open(self, report: Mapping[str, Any]) -> Received:
        """Open a sealed payload and verify the originator's signature (fail closed)."""
        label, report_id = report["label"], report["id"]
        if "sealed" in report:
            if self._sealing_key is None:
                raise SealedError("the payload is sealed but this client has no sealing key")
            try:
                plaintext = seal.open_sealed(
                    sealed=report["sealed"],
                    private_key=self._sealing_key,
                    report_id=report_id,
                    canonical_label=canonical(label),
                )
            except Exception as exc:  # cryptography raises opaque errors; all mean "cannot open"
                raise SealedError(f"cannot open the payload of {report_id}") from exc
            payload = json.loads(plaintext)
        else:
            payload = report["payload"]
        verified = await self._verify(report, payload)
        return Received(
            id=report_id,
            sequence=int(report["sequence"]),
            originator=dict(report["originator"]),
            label=dict(label),
            topics=list(report["topics"]),
            created=str(report["created"]),
            payload=payload,
            signature=report.get("signature"),
            verified=verified,
            was_sealed="sealed" in report,
        )

    async def _verify(self, report: Mapping[str, Any], payload: Any) -> bool:
        key = await self._originator_key(report["originator"]["node"])
        signature = report.get("signature")
        if key is None:
            return False
        if not signature:
            raise SignatureError(f"report {report['id']} is unsigned but its originator has a key")
        message = signing.signing_message(
            canonical_label=canonical(report["label"]), canonical_payload=canonical(payload)
        )
        if not signing.verify(public_key_b64=key, signature_b64=signature, message=message):
            raise SignatureError(f"report {report['id']} does not verify against its originator's key")
        return True

    async def stream(
        self,
        *,
        after: int | None = None,
        topics: Sequence[str] = (),
        name: str = "default",
        ack: bool = True,
        reconnect: bool = True,
        on_recall: Callable[[Recall], None] | None = None,
    ) -> AsyncGenerator[Received, None]:
        """Yield reports as they arrive, forever. ``after=None`` resumes after the last ack on
        ``name``. On a dropped connection (or a slow-consumer close) it reconnects from the last
        sequence it yielded; reports are deduplicated by id. A report is acked when the caller
        asks for the next one, so a crash while handling it means it is delivered again.

        A handshake refused with 408, 429 or 5xx (an overloaded broker, a proxy in front that is
        briefly unwell) is retried like a dropped connection, waiting at least its
        ``Retry-After``; any other refusal (and any refusal when ``reconnect`` is False) raises
        ``ApiError`` with the broker's problem document.

        A recall notice drops the report from ``held`` and is passed to ``on_recall``."""
        resume = _Resume(after)
        attempt, since = 0, time.monotonic()  # failures in a row, and since when
        while True:
            params = {"name": name}
            if resume.last is not None:
                params["after"] = str(resume.last)
            if topics:
                params["topics"] = ",".join(topics)
            try:
                async with self.session.ws_connect(
                    self.base_url + "/v1/stream", headers=self._headers, params=params, autoping=True
                ) as ws:
                    attempt, since = 0, time.monotonic()
                    received = self._received(ws, resume, ack=ack, reconnect=reconnect, on_recall=on_recall)
                    async with contextlib.aclosing(received):
                        async for opened in received:
                            yield opened
                    code = ws.close_code or 1006
            except aiohttp.WSServerHandshakeError as exc:
                if not reconnect or (exc.status not in RETRY_STATUSES and exc.status < 500):
                    await self._handshake_problem(exc, params)  # raises ApiError with its detail
                code, wait_at_least = 1006, _retry_after(exc.headers)
                self._give_up_unless_recent(since, exc)
            except (TimeoutError, aiohttp.ClientError, ConnectionError, _Interrupted) as exc:
                code, wait_at_least = 1006, 0.0
                self._give_up_unless_recent(since, exc)
            else:
                wait_at_least = 0.0
            if code in PERMANENT_CLOSE_CODES:
                raise StreamClosed(code, PERMANENT_CLOSE_CODES[code])
            if not reconnect:
                return
            attempt += 1
            await asyncio.sleep(max(self._backoff(attempt), min(wait_at_least, self._max_delay)))

    async def _received(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        resume: _Resume,
        *,
        ack: bool,
        reconnect: bool,
        on_recall: Callable[[Recall], None] | None,
    ) -> AsyncGenerator[Received, None]:
        """The reports one connection delivers, each opened and yielded once, and acked when the
        caller asks for the next; recall notices passed on."""
        async for message in ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            frame = json.loads(message.data)
            if frame.get("type") == "recall":
                self._recalled(frame, on_recall)
            if frame.get("type") != "report":
                continue
            report = frame["report"]
            if report["id"] not in resume.seen:
                opened = await self._open_or_resume(report, reconnect=reconnect)
                resume.saw(report["id"])
                self._hold(opened)
                yield opened
            resume.last = int(report["sequence"])
            if ack:
                await ws.send_json({"type": "ack", "sequence": resume.last})

    def _hold(self, report: Received) -> None:
        if self._keep > 0:
            self.held[report.id] = report
            while len(self.held) > self._keep:
                self.held.popitem(last=False)

    def _recalled(self, frame: Mapping[str, Any], on_recall: Callable[[Recall], None] | None) -> None:
        notice = Recall(id=str(frame["id"]), sequence=int(frame["sequence"]))
        self.held.pop(notice.id, None)
        if on_recall is not None:
            on_recall(notice)

    async def _open_or_resume(self, report: dict[str, Any], *, reconnect: bool) -> Received:
        """``open(report)``; when that fails for a passing reason (fetching the originator's key
        met a 5xx, 408, 425 or 429, or no connection), ``_Interrupted``: the stream reconnects
        from before this report, as after a dropped connection, instead of ending."""
        try:
            return await self.open(report)
        except ApiError as exc:
            if not reconnect or (exc.status not in RETRY_STATUSES and exc.status < 500):
                raise
            raise _Interrupted(str(exc)) from exc
        except Unreachable as exc:
            if not reconnect:
                raise
            raise _Interrupted(str(exc)) from exc

    def _give_up_unless_recent(self, since: float, exc: Exception) -> None:
        """``Unreachable`` once there has been no stream for ``give_up_after`` seconds."""
        if self._give_up is not None and time.monotonic() - since > self._give_up:
            raise Unreachable(f"no connection to {self.base_url} for {self._give_up:.0f} s: {exc}") from exc

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter, so many clients do not reconnect in step."""
        ceiling = min(self._max_delay, self._delay * 2 ** min(attempt - 1, 30))
        return random.uniform(self._delay / 2, max(ceiling, self._delay / 2))  # noqa: S311 (not crypto)

    async def _handshake_problem(
        self, exc: aiohttp.WSServerHandshakeError, params: Mapping[str, str]
    ) -> None:
        """Raise the refused handshake's problem document (aiohttp keeps no body of a refused
        upgrade): the same request without the upgrade is refused with it, before the broker
        looks for the upgrade. Anything else answered then: the handshake's bare status."""
        try:
            await self._call("GET", "/v1/stream", params=params)
        except ApiError as problem:
            if problem.status == exc.status:
                raise
        raise ApiError(exc.status, {"type": "handshake", "detail": exc.message}) from exc
