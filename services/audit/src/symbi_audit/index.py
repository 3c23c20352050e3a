"""The query index: SQLite over the event segments (derived; rebuilt from them if lost).

One row per event with the fields queries filter on and where the event lives
(segment and offset), plus one row per data label. WAL mode lets readers (other
replicas, report builders) query while the writer appends; ``synchronous=NORMAL``
is enough because the segments, not the index, are the record: a crash that loses
index rows is repaired on open by replaying the segments past the last indexed
sequence. ``event_id`` is unique, which is also how redelivered events are found.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from symbi_proto.v1 import audit_pb2

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    sequence INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    ts INTEGER NOT NULL,
    agent_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    tenant TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    outcome INTEGER NOT NULL,
    segment INTEGER NOT NULL,
    offset INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_agent ON events(agent_id, sequence);
CREATE INDEX IF NOT EXISTS events_type ON events(event_type, sequence);
CREATE INDEX IF NOT EXISTS events_ts ON events(ts, sequence);
CREATE INDEX IF NOT EXISTS events_correlation ON events(correlation_id);
CREATE TABLE IF NOT EXISTS labels (sequence INTEGER NOT NULL, label TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS labels_label ON labels(label, sequence);
"""
DEFAULT_PAGE, MAX_PAGE = 100, 1000


@dataclass(frozen=True, slots=True)
class Location:
    sequence: int
    segment: int
    offset: int


def ts_nanos(event: audit_pb2.AuditEvent) -> int:
    return event.timestamp.seconds * 1_000_000_000 + event.timestamp.nanos


class Index:
    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
        self.db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA busy_timeout = 5000")
        if not readonly:
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = NORMAL")
            self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def last_sequence(self) -> int:
        """The highest indexed sequence, or -1."""
        row = self.db.execute("SELECT MAX(sequence) FROM events").fetchone()
        return -1 if row[0] is None else int(row[0])

    def add(self, rows: Sequence[tuple[audit_pb2.AuditEvent, int, int]]) -> None:
        """Index (event, segment, offset) rows in one transaction."""
        self.db.execute("BEGIN")
        try:
            self.db.executemany(
                "INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        e.sequence, e.event_id, ts_nanos(e), e.agent_id, e.event_type, e.tenant,
                        e.correlation_id, int(e.outcome), segment, offset,
                    )
                    for e, segment, offset in rows
                ],
            )  # fmt: skip
            self.db.executemany(
                "INSERT INTO labels VALUES (?,?)",
                [(e.sequence, label) for e, _, _ in rows for label in e.data_labels],
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def truncate_after(self, sequence: int) -> None:
        """Drop rows past ``sequence`` (their events did not survive a crash)."""
        self.db.execute("DELETE FROM events WHERE sequence > ?", (sequence,))
        self.db.execute("DELETE FROM labels WHERE sequence > ?", (sequence,))

    def known(self, event_ids: Iterable[str]) -> set[str]:
        ids = list(event_ids)
        found: set[str] = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT event_id FROM events WHERE event_id IN ({marks})"  # noqa: S608 - placeholders only
            found.update(row[0] for row in self.db.execute(sql, chunk))
        return found

    def locate(self, sequence: int) -> Location | None:
        row = self.db.execute("SELECT sequence, segment, offset FROM events WHERE sequence = ?", (sequence,)).fetchone()
        return Location(*row) if row else None

    def by_event_id(self, event_id: str) -> Location | None:
        row = self.db.execute("SELECT sequence, segment, offset FROM events WHERE event_id = ?", (event_id,)).fetchone()
        return Location(*row) if row else None

    def query(self, request: audit_pb2.AuditQueryRequest) -> tuple[list[Location], str, int]:
        """Matching locations for one page, the next page token (or ""), and the total count."""
        where: list[str] = ["1 = 1"]
        args: list[str | int] = []
        if request.agent_id:
            where.append("agent_id = ?")
            args.append(request.agent_id)
        types = list(request.event_types)
        if types:
            exact = [t for t in types if not t.endswith(".*")]
            prefixes = [t[:-1] for t in types if t.endswith(".*")]
            parts = []
            if exact:
                parts.append(f"event_type IN ({','.join('?' * len(exact))})")
                args.extend(exact)
            for prefix in prefixes:
                parts.append("substr(event_type, 1, ?) = ?")
                args.extend([len(prefix), prefix])
            where.append("(" + " OR ".join(parts) + ")")
        if request.HasField("since"):
            where.append("ts >= ?")
            args.append(request.since.seconds * 1_000_000_000 + request.since.nanos)
        if request.HasField("until"):
            where.append("ts < ?")
            args.append(request.until.seconds * 1_000_000_000 + request.until.nanos)
        if request.HasField("from_sequence"):
            where.append("sequence >= ?")
            args.append(request.from_sequence)
        if request.HasField("to_sequence"):
            where.append("sequence < ?")
            args.append(request.to_sequence)
        for column in ("correlation_id", "tenant"):
            value = getattr(request, column)
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        if request.outcome:
            where.append("outcome = ?")
            args.append(int(request.outcome))
        clause = " AND ".join(where)
        total = int(self.db.execute(f"SELECT COUNT(*) FROM events WHERE {clause}", args).fetchone()[0])  # noqa: S608
        order = "DESC" if request.descending else "ASC"
        if request.page.page_token:
            where.append("sequence < ?" if request.descending else "sequence > ?")
            args.append(int(request.page.page_token))
        size = min(request.page.page_size or DEFAULT_PAGE, MAX_PAGE)
        sql = (
            f"SELECT sequence, segment, offset FROM events WHERE {' AND '.join(where)} "  # noqa: S608 - placeholders only
            f"ORDER BY sequence {order} LIMIT ?"
        )
        rows = [Location(*row) for row in self.db.execute(sql, [*args, size + 1])]
        more = len(rows) > size
        rows = rows[:size]
        return rows, (str(rows[-1].sequence) if more and rows else ""), total

    def labelled(self, labels: Iterable[str], since_ns: int, until_ns: int) -> list[int]:
        wanted = list(labels)
        marks = ",".join("?" * len(wanted))
        sql = (
            "SELECT DISTINCT e.sequence FROM labels l JOIN events e ON e.sequence = l.sequence "  # noqa: S608
            f"WHERE l.label IN ({marks}) AND e.ts >= ? AND e.ts < ? ORDER BY e.sequence"
        )
        return [r[0] for r in self.db.execute(sql, [*wanted, since_ns, until_ns])]
