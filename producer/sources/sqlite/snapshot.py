"""The initial copy of the captured tables, consistent with a changelog position."""
from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from funnel.databases.names import column_list, quote_ident
from funnel.errors import SourceError
from funnel.events import Op, Row, TableChanges
from producer.sources.sqlite.catalog import Layout


class Snapshot:
    """A consistent initial copy: ``position`` and the rows as TableChanges chunks.

    Iterate once; the read transaction ends when iteration finishes or on ``close()``.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        position: int,
        layouts: list[Layout],
        chunk_rows: int,
        path: str,
    ) -> None:
        self.position = position
        self.tables = [layout.table for layout in layouts]
        self._conn: sqlite3.Connection | None = conn
        self._layouts = layouts
        self._chunk_rows = chunk_rows
        self._path = path

    def __iter__(self) -> Iterator[TableChanges]:
        """Yields chunks of at most chunk_rows rows, table by table, in memory one at a time.

        Raises SourceError if a row cannot be read (for example text that is not UTF-8).
        """
        if self._conn is None:
            raise SourceError(f"snapshot of {self._path} was already read or closed")
        try:
            for layout in self._layouts:
                yield from self._chunks(layout)
        finally:
            self.close()

    def _chunks(self, layout: Layout) -> Iterator[TableChanges]:
        assert self._conn is not None
        select = column_list(layout.columns)
        try:
            cursor = self._conn.execute(f"SELECT {select} FROM {quote_ident(layout.table)}")
            empty = True
            while rows := cursor.fetchmany(self._chunk_rows):
                empty = False
                yield TableChanges(
                    layout.event_table, Op.SNAPSHOT, list(layout.columns), list(layout.key),
                    [Row(None, list(values)) for values in rows],
                )
            if empty:
                # An empty table is announced all the same, so that mirrors create it:
                # after a takeover, applications expect every table to exist.
                yield TableChanges(layout.event_table, Op.SNAPSHOT, list(layout.columns), list(layout.key), [])
        except sqlite3.Error as exc:
            raise SourceError(
                f'cannot read table "{layout.table}" of {self._path} for the snapshot: {exc}'
            ) from exc

    def close(self) -> None:
        """Ends the read transaction (lets WAL checkpoints and writers proceed)."""
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()  # closing rolls the read transaction back

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
