"""Group commit: acts that arrive while a transaction is in flight share the next one.

Each caller waits until the transaction holding its act has committed, so an answer still
means "durably stored"; a burst of N concurrent acts costs about one transaction (one lock of
the head, one fsync) instead of N. A caller alone pays nothing extra: its act commits at once.

Every wait has a deadline (``Database.deadline``): a caller whose act is not committed in time
gets 503 (an act not yet taken into a transaction is withdrawn; one in flight may still commit,
as for a caller that went away, so a client retries with its idempotency key), and a flush that
outlives it is abandoned, so one stuck transaction never holds the lock, and every publish of the
process behind it, for longer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from broker.errors import BrokerError, Unavailable
from broker.services import metrics
from broker.storage.database import Database
from broker.storage.repos import Tx

Item = TypeVar("Item")
Result = TypeVar("Result")

# Applies a batch of acts in one transaction; one outcome per act, in order. A BrokerError in
# the list fails that act alone (it must have written nothing); an exception raised fails the
# whole transaction, and each act is then retried in a transaction of its own (unless the
# database is unavailable: then every act of the batch fails with that).
Apply = Callable[[Tx, Sequence[Item]], Awaitable[list["Result | BrokerError"]]]


class GroupCommit(Generic[Item, Result]):
    def __init__(self, db: Database, apply: Apply[Item, Result], *, max_batch: int = 256) -> None:
        self._db = db
        self._apply = apply
        self._max_batch = max_batch
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._lock = asyncio.Lock()
        self.transactions = 0  # counters for benchmarks and tests
        self.acts = 0

    async def submit(self, item: Item) -> Result:
        """Return ``item``'s outcome once the transaction holding it has committed."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        try:
            async with asyncio.timeout(self._db.deadline):
                while not future.done():
                    await self._lock.acquire()
                    if future.done():
                        self._lock.release()
                        break
                    # A task that holds the lock until it ends, and shielded: a caller that goes
                    # away mid-commit neither aborts the others' acts nor lets the next flush
                    # begin beside this one.
                    flush = asyncio.ensure_future(self._flush())
                    flush.add_done_callback(lambda _: self._lock.release())
                    await asyncio.shield(flush)
        except TimeoutError:
            self._pending = [waiting for waiting in self._pending if waiting[1] is not future]
            if not future.done():
                future.cancel()
                raise Unavailable("the database did not commit in time") from None
        return future.result()

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let acts scheduled in this same tick join
        batch = self._pending[: self._max_batch]
        del self._pending[: len(batch)]
        if not batch:
            return
        try:
            outcomes = await self._run([item for item, _ in batch])
        except Exception as exc:
            if len(batch) == 1 or isinstance(exc, Unavailable):
                # The database is down or locked out: one attempt each would only fail slower.
                for _, future in batch:
                    _settle(future, exc)
                return
            # One act may have broken the batch (say, a row another process inserted a moment
            # ago): give each its own transaction, so only that one fails.
            for item, future in batch:
                try:
                    _settle(future, (await self._run([item]))[0])
                except Exception as single:
                    _settle(future, single)
            return
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            _settle(future, outcome)

    async def _run(self, items: list[Item]) -> list[Result | BrokerError]:
        try:
            with metrics.COMMIT_SECONDS.time():
                async with asyncio.timeout(self._db.deadline), self._db.transaction() as tx:
                    outcomes = await self._apply(tx, items)
        except TimeoutError as exc:  # abandoned (rolled back by _ended), so the lock is free again
            raise Unavailable("the database did not commit in time") from exc
        self.transactions += 1
        self.acts += len(items)
        return outcomes


def _settle(future: asyncio.Future[Result], outcome: Result | BaseException) -> None:
    if future.done():  # its caller was cancelled (client went away): the act still stands
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
