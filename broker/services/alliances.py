"""Alliances and their members over time: define, join, leave, list, seed from the
configuration. Every change is audited."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from broker.config_files import AllianceSeed
from broker.domain.alliances import HISTORY_VALUES, Alliance, Membership
from broker.domain.nations import check_alliance_id, is_nation
from broker.domain.records import AuditDraft, NodeRecord
from broker.errors import Conflict, InvalidInput, NotFound
from broker.services import audit, auth
from broker.services.context import Context
from broker.services.wire.requests import not_a_nation


def _nation(value: str) -> str:
    if not is_nation(value):
        raise InvalidInput(not_a_nation(value, "nation"), code="unknown_nation")
    return value


def _history(alliance_id: str, nation: str, periods: list[Membership]) -> str:
    """A nation's membership periods of an alliance, in words, for messages."""
    if not periods:
        return f"{nation} has never been a member of {alliance_id}"
    spans = [
        f"from {p.joined.isoformat()} " + (f"to {p.left.isoformat()}" if p.left else "with no end")
        for p in sorted(periods, key=lambda p: p.joined)
    ]
    return f"{nation}'s membership of {alliance_id}: " + "; ".join(spans)


async def create_alliance(
    ctx: Context, alliance_id: str, *, name: str, history: str = "full", actor: str
) -> dict[str, Any]:
    """Create an alliance with no members."""
    if history not in HISTORY_VALUES or not name or len(name) > 200:
        raise InvalidInput(
            "name must be 1-200 characters; history full or since-join", code="invalid_alliance"
        )
    alliance = Alliance(
        id=check_alliance_id(alliance_id),
        name=name,
        history="since-join" if history == "since-join" else "full",
    )
    async with ctx.db.transaction() as tx:
        await tx.lock_head()  # first: ``Tx.lock_head``'s lock order
        if alliance.id in (await tx.load_directory()).alliances:
            raise Conflict(f"alliance {alliance.id!r} already exists", code="alliance_exists")
        now = ctx.now()
        await tx.insert_alliance(alliance, at=now)
        await audit.record(
            tx,
            [
                AuditDraft(
                    action="alliance_create",
                    actor=actor,
                    decision="allow",
                    details={"alliance": alliance.id, "history": history},
                )
            ],
            now=now,
            changed=True,
        )
    return {"id": alliance.id, "name": name, "history": alliance.history}


async def join(
    ctx: Context,
    alliance_id: str,
    nation: str,
    *,
    at: datetime | None,
    actor: str,
    by: NodeRecord | None = None,
) -> dict[str, Any]:
    """Record that ``nation`` joins ``alliance_id`` at ``at`` (default: now). 409 when it is
    already a member. An alliance named like a nation (left from before that was refused)
    takes no new members: its id would be read as that nation in every label."""
    nation = _nation(nation)
    if is_nation(alliance_id):
        check_alliance_id(alliance_id)
    async with auth.admin_act(ctx, by), ctx.db.transaction() as tx:
        await auth.confirm_admin(tx, by, now=ctx.now())
        directory = await tx.load_directory()
        if alliance_id not in directory.alliances:
            raise NotFound(f"no alliance {alliance_id!r}", code="not_found")
        now = ctx.now()
        joined = at or now
        periods = [m for m in directory.memberships.get(alliance_id, ()) if m.nation == nation]
        # A new period runs from ``joined`` with no end: it may not overlap one on record, or
        # the history would say two things about the same moment.
        if any(m.left is None or m.left > joined for m in periods):
            raise Conflict(_join_refusal(alliance_id, nation, joined, periods), code="already_member")
        await tx.insert_membership(Membership(alliance=alliance_id, nation=nation, joined=joined))
        await audit.record(
            tx,
            [
                AuditDraft(
                    action="membership_join",
                    actor=actor,
                    nation=nation,
                    decision="allow",
                    details={"alliance": alliance_id, "joined": joined.isoformat()},
                )
            ],
            now=now,
            changed=True,
        )
    return {"alliance": alliance_id, "nation": nation, "joined": joined.isoformat()}


def _join_refusal(alliance_id: str, nation: str, joined: datetime, periods: list[Membership]) -> str:
    current = [m for m in periods if m.left is None and m.joined <= joined]
    if current:
        return f"{nation} is already a member of {alliance_id} (since {current[0].joined.isoformat()})"
    history = _history(alliance_id, nation, periods)
    if any(m.left is None for m in periods):
        advice = "leave first, or record the join on that period's date"
    else:
        last = max(m.left for m in periods if m.left is not None)
        advice = f"a new period may start on or after {last.isoformat()}"
    return (
        f"{nation} cannot join {alliance_id} on {joined.isoformat()}: the period would overlap "
        f"its history ({history}); {advice}"
    )


async def leave(
    ctx: Context,
    alliance_id: str,
    nation: str,
    *,
    at: datetime | None,
    actor: str,
    by: NodeRecord | None = None,
) -> dict[str, Any]:
    """Record that ``nation`` leaves ``alliance_id``; it stops receiving at once. A leave dated
    before the open period's join is refused (422): the period would then hold no moment at all,
    erasing a membership under which the nation may already have received reports."""
    nation = _nation(nation)
    async with auth.admin_act(ctx, by), ctx.db.transaction() as tx:
        await auth.confirm_admin(tx, by, now=ctx.now())
        now = ctx.now()
        left = at or now
        directory = await tx.load_directory()
        for period in directory.memberships.get(alliance_id, ()):
            if period.nation == nation and period.left is None and left < period.joined:
                raise InvalidInput(
                    f"{nation} cannot leave {alliance_id} on {left.isoformat()}: it joined on "
                    f"{period.joined.isoformat()}, after that date",
                    code="leave_before_join",
                )
        if not await tx.close_membership(alliance=alliance_id, nation=nation, at=left):
            periods = [m for m in directory.memberships.get(alliance_id, ()) if m.nation == nation]
            raise NotFound(
                f"{nation} is not a member of {alliance_id} ({_history(alliance_id, nation, periods)})",
                code="not_member",
            )
        await audit.record(
            tx,
            [
                AuditDraft(
                    action="membership_leave",
                    actor=actor,
                    nation=nation,
                    decision="allow",
                    details={"alliance": alliance_id, "left": left.isoformat()},
                )
            ],
            now=now,
            changed=True,
        )
    return {"alliance": alliance_id, "nation": nation, "left": left.isoformat()}


async def list_alliances(ctx: Context) -> list[dict[str, Any]]:
    """Every alliance with its current members and its full membership history."""
    async with ctx.db.transaction() as tx:
        directory = await tx.load_directory()
    now = ctx.now()
    return [
        {
            "id": a.id,
            "name": a.name,
            "history": a.history,
            "members": sorted(directory.members_at(a.id, now)),
            "memberships": [
                {
                    "nation": m.nation,
                    "joined": m.joined.isoformat(),
                    "left": None if m.left is None else m.left.isoformat(),
                }
                for m in directory.memberships.get(a.id, ())
            ],
        }
        for a in sorted(directory.alliances.values(), key=lambda a: a.id)
    ]


async def seed_alliances(ctx: Context, seeds: tuple[AllianceSeed, ...]) -> int:
    """Load the configured alliances into an empty database; returns how many were added.

    Every seed is checked first (as ``create_alliance`` would), so a bad one adds nothing."""
    for seed in seeds:
        check_alliance_id(seed.alliance.id)
        for membership in seed.members:
            _nation(membership.nation)
    async with ctx.db.transaction() as tx:
        # Under the head lock: a second `broker db upgrade` started at the same moment waits,
        # then finds the alliances the first one committed (instead of a duplicate key).
        await tx.lock_head()
        if await tx.count_alliances() > 0:
            return 0
        now = ctx.now()
        for seed in seeds:
            await tx.insert_alliance(seed.alliance, at=now)
            for membership in seed.members:
                await tx.insert_membership(membership)
        drafts = [
            AuditDraft(
                action="alliance_seed",
                actor="config",
                decision="allow",
                details={"alliance": s.alliance.id, "members": len(s.members)},
            )
            for s in seeds
        ]
        await audit.record(tx, drafts, now=now, changed=True)
    return len(seeds)
