"""The combined write: a transaction's queued writes as one statement on PostgreSQL.

Writes whose results nobody reads (the head, new reports, audit events, Merkle nodes, NOTIFY)
are queued by ``Tx`` and run here at the front of its next trip, or of its commit.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    Executable,
    Insert,
    Select,
    String,
    Text,
    bindparam,
    cast,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.types import TypeEngine

from broker.storage import statements as st


@dataclass(frozen=True)
class Write:
    """A queued write: ``statement`` with its rows (an insert or the head's update), or the
    NOTIFY (no rows)."""

    statement: Executable
    rows: list[dict[str, Any]]


def flush(connection: Connection, writes: Sequence[Write], *, combine: bool) -> None:
    """Run the queued writes in order. On PostgreSQL (``combine``) they go as one statement: each
    insert a data-modifying WITH clause reading its rows from one array parameter per column
    (``unnest``), the head's update another, the NOTIFY the statement's own SELECT. PostgreSQL runs
    every data-modifying clause once, in the statement's snapshot, and checks constraints at its
    end; the statement's text depends only on which tables and columns are written, never on the
    row counts, so it is built and compiled once per shape. One round trip instead of one per
    write."""
    shape = _shape(writes) if combine and len(writes) > 1 else None
    if shape is None:
        for write in writes:
            if write.rows:
                connection.execute(write.statement, write.rows)
            else:
                connection.execute(write.statement)
        return
    connection.execute(_combined(shape), _parameters(connection.dialect, writes, shape))


def _parameters(dialect: Dialect, writes: Sequence[Write], shape: Shape) -> dict[str, Any]:
    """The combined statement's parameters: one array per inserted column, the head's values."""
    parameters: dict[str, Any] = {}
    for index, (write, (kind, _keys)) in enumerate(zip(writes, shape, strict=True)):
        if kind == "head":
            parameters.update({f"w{index}_{k}": v for k, v in write.rows[0].items()})
        elif kind not in ("skip", "notify"):
            table = st.COMBINABLE[kind]
            for key in write.rows[0]:
                values = [row[key] for row in write.rows]
                if isinstance(table.c[key].type, JSON):  # sent as text (a list would nest the array)
                    values = _json_texts(dialect, table.c[key].type, values)
                parameters[f"w{index}_{key}"] = values
    return parameters


def _json_texts(dialect: Dialect, kind: TypeEngine[Any], values: list[Any]) -> list[Any]:
    """``values`` as the column type would serialise them (its bind processor)."""
    process = kind.dialect_impl(dialect).bind_processor(dialect)
    return [process(v) for v in values] if process is not None else [json.dumps(v) for v in values]


Shape = tuple[tuple[str, tuple[str, ...]], ...]


def _shape(writes: Sequence[Write]) -> Shape | None:
    """What the combined statement for ``writes`` depends on: per write, its table and columns
    (``notify`` for the NOTIFY, ``skip`` for a head update a later one supersedes). None when the
    writes cannot be combined."""
    last_save = max((i for i, w in enumerate(writes) if w.statement is st.SAVE_HEAD), default=-1)
    shape: list[tuple[str, tuple[str, ...]]] = []
    for index, write in enumerate(writes):
        if not write.rows:
            shape.append(("notify", ()))
        elif write.statement is st.SAVE_HEAD:
            # A row may be updated once per statement; each save sets every column of the head,
            # so the last one leaves what sequential execution would have.
            shape.append(("head" if index == last_save else "skip", tuple(write.rows[0])))
        elif isinstance(write.statement, Insert) and write.statement.table.name in st.COMBINABLE:
            keys = tuple(write.rows[0])
            if any(tuple(row) != keys for row in write.rows):
                return None
            shape.append((write.statement.table.name, keys))
        else:
            return None
    return tuple(shape)


def _unnest(name: str, kind: TypeEngine[Any]) -> ColumnElement[Any]:
    """One column's rows from its array parameter. JSON values travel as text and are cast
    back: an array of JSON lists would otherwise be read as a two-dimensional array."""
    if isinstance(kind, JSON):
        return cast(func.unnest(bindparam(name, type_=ARRAY(Text)), type_=Text), kind)
    wire = _wire(kind)
    return func.unnest(bindparam(name, type_=ARRAY(wire)), type_=wire)


def _wire(kind: TypeEngine[Any]) -> TypeEngine[Any]:
    """The type a value is bound as: strings as unbounded text, so the column's own length is
    checked on assignment (an over-long value is refused, as one by one); an explicit cast to
    ``varchar(n)`` would truncate it silently."""
    return Text() if isinstance(kind, String) else kind


@functools.lru_cache(maxsize=512)
def _combined(shape: Shape) -> Executable:
    """The statement for the writes of ``shape``."""
    clauses = []
    notify = False
    for index, (kind, keys) in enumerate(shape):
        if kind == "head":
            values = {k: bindparam(f"w{index}_{k}", type_=_wire(st.HEAD.c[k].type)) for k in keys}
            clauses.append(update(st.HEAD).where(st.HEAD.c.id == 1).values(values).cte(f"w{index}"))
        elif kind == "notify":
            notify = True
        elif kind != "skip":
            table = st.COMBINABLE[kind]
            rows = select(*(_unnest(f"w{index}_{k}", table.c[k].type) for k in keys))
            clauses.append(insert(table).from_select(list(keys), rows).cte(f"w{index}"))
    final: Select[Any] = st.NOTIFY if notify else select(literal(1))
    return final.add_cte(*clauses)
