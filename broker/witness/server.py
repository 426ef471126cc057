"""The witness's HTTP interface (C2SP tlog-witness): ``POST /add-checkpoint`` and the monitoring
``GET /<sha256 hex of origin>/checkpoint``.

Answers are plain text, as the specification has them: 200 with the cosignature line, 409 with
the stored size (``text/x.tlog.size``), and for the other refusals a one-line reason. Bad input
never reaches a 500: the body is bounded (413) and must arrive in time (408), and every check of
its content is a ``Refused``. The state is used from one thread of its own, so the event loop
never waits on the disk and the transactions are serialised in this process too.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from broker.crypto import cosignature
from broker.crypto.cosignature import VerifierKey
from broker.web.connections import CONNECTIONS, ConnectionGuard, GuardedSite, head_arrived
from broker.witness.directory import Identity
from broker.witness.protocol import Refused, Submission, read
from broker.witness.state import State

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 64 * 1024
BODY_SECONDS = 10.0
HEAD_SECONDS = 10.0
KEEPALIVE_SECONDS = 75.0
LINGER_SECONDS = 2.0
PER_SOURCE = 256  # a log asks over a few kept-alive connections; this only stops a flood
SIZE_TYPE = "text/x.tlog.size"


class Witness:
    """The witness's key, the logs it accepts, and its state, used from one worker thread."""

    def __init__(self, identity: Identity, logs: Mapping[str, Sequence[VerifierKey]], state: State) -> None:
        self.identity = identity
        self.logs = logs
        self._state = state
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="witness-state")

    async def add(self, submission: Submission, body: bytes) -> str:
        """Check, store and cosign (C2SP tlog-witness add-checkpoint), committed before this returns."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, self._add, submission, body)

    def _add(self, submission: Submission, body: bytes) -> str:
        now = int(time.time())

        def cosign() -> str:
            return cosignature.cosign(
                submission.text, name=self.identity.name, private_key=self.identity.private_key, timestamp=now
            )

        return self._state.add(submission, body=body, now=now, cosign=cosign)

    async def note(self, hashed_origin: str) -> str | None:
        return await asyncio.get_running_loop().run_in_executor(self._worker, self._state.note, hashed_origin)

    def close(self) -> None:
        self._worker.shutdown(wait=True)
        self._state.close()


WITNESS = web.AppKey("witness", Witness)
BODY_DEADLINE = web.AppKey("body_deadline", float)


async def add_checkpoint(request: web.Request) -> web.Response:
    witness = request.app[WITNESS]
    try:
        async with asyncio.timeout(request.app[BODY_DEADLINE]):
            body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        log.info("witness_refused status=413 reason=body_too_large")
        return _closing(413, f"the body exceeds {MAX_BODY_BYTES} bytes\n")
    except TimeoutError:
        log.info("witness_refused status=408 reason=body_timeout")
        return _closing(408, "the body did not arrive in time\n")
    try:
        submission = read(body, witness.logs)
        line = await witness.add(submission, body)
    except Refused as refused:
        return _refusal(refused, body)
    log.info(
        "witness_cosigned origin=%r size=%d old=%d",
        submission.origin,
        submission.checkpoint.size,
        submission.old_size,
    )
    return web.Response(text=line, content_type="text/plain", charset="utf-8")


def _closing(status: int, text: str) -> web.Response:
    """An answer after which the connection closes: the rest of the body is never read."""
    response = web.Response(status=status, text=text)
    response.force_close()
    return response


def _refusal(refused: Refused, body: bytes) -> web.Response:
    log.info(
        "witness_refused status=%d reason=%r evidence=%s bytes=%d",
        refused.status,
        refused.reason[:200],
        "kept" if refused.signed else "no",
        len(body),
    )
    if refused.status == 409:
        return web.Response(status=409, body=f"{refused.latest_size}\n".encode(), content_type=SIZE_TYPE)
    return web.Response(status=refused.status, text=refused.reason + "\n")


async def monitoring_checkpoint(request: web.Request) -> web.Response:
    note = await request.app[WITNESS].note(request.match_info["origin_hash"])
    if note is None:
        return web.Response(status=404, text="this witness has cosigned no checkpoint of that log\n")
    return web.Response(text=note, content_type="text/plain", charset="utf-8")


def create_app(
    witness: Witness, *, head_seconds: float = HEAD_SECONDS, body_seconds: float = BODY_SECONDS
) -> web.Application:
    """The witness's aiohttp application: the two routes, a bounded body that must arrive within
    ``body_seconds``, and a request head within ``head_seconds``."""
    app = web.Application(middlewares=[head_arrived], client_max_size=MAX_BODY_BYTES)
    app[CONNECTIONS] = ConnectionGuard(head_seconds=head_seconds, per_source=PER_SOURCE)
    app[WITNESS] = witness
    app[BODY_DEADLINE] = body_seconds
    app.router.add_post("/add-checkpoint", add_checkpoint)
    app.router.add_get("/{origin_hash:[0-9a-f]{64}}/checkpoint", monitoring_checkpoint)
    return app


async def start(
    witness: Witness,
    *,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    head_seconds: float = HEAD_SECONDS,
    body_seconds: float = BODY_SECONDS,
) -> tuple[web.AppRunner, int]:
    """Serve ``witness`` until the runner is cleaned up; the port listened on (0 picks one)."""
    app = create_app(witness, head_seconds=head_seconds, body_seconds=body_seconds)
    # lingering_time: after a 408 or 413, the unread rest of a body is drained for at most this
    runner = web.AppRunner(
        app, keepalive_timeout=KEEPALIVE_SECONDS, lingering_time=LINGER_SECONDS, access_log=None
    )
    await runner.setup()
    site = GuardedSite(runner, host, port, ssl_context=ssl_context)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, site.port
