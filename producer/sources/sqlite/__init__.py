"""Change capture from a production SQLite file that an application keeps writing.

The package, one module per concern: ``catalog`` (layouts, reading the schema),
``triggers`` (install, uninstall, migrations the triggers would block), ``changelog``
(sealing and reading groups), ``follow`` (schema changes), ``ddl`` (what a schema change
was, as DDL events), ``snapshot`` (the initial copy) and ``source`` (``SqliteSource``).

How it works
------------
``install()`` puts AFTER INSERT/UPDATE/DELETE triggers on every captured table.
Each trigger appends one row to ``_timefunnel_changelog`` inside the application's
own write transaction, so a change is in the changelog exactly when it is committed.
``seal()`` cuts the changelog into groups (our source transactions), ``transactions_after``
reads them back, ``acknowledge`` deletes what is safely in Kafka, and ``snapshot``
makes the consistent initial copy that the changes continue from.

Row images are stored as native values in untyped columns (``changelog`` says why);
a *layout* per table version says what they hold (``catalog``).

Known limits (the application's SQLite decides these, not us)
-------------------------------------------------------------
- ``INSERT OR REPLACE`` deletes a conflicting row without firing DELETE triggers unless
  the application's connection sets ``PRAGMA recursive_triggers=ON``: the mirror then
  sees only the insert (fine for a conflict on the primary key, which the sink upserts;
  a row removed for a conflict on another UNIQUE index is missed).
- Generated columns are not captured: the mirror computes them itself.
- Schema changes are followed at the next seal (``follow``; ``ddl`` tells renames from
  drops and adds by reading our own triggers, which SQLite rewrites): the rows recorded
  so far are sealed with the old columns, then one more group holds the DDL events and
  the current images of the rows the DDL may have changed, and the triggers are rebuilt, all in one write transaction.  A changed primary key or a new
  table without one cannot be followed: ``seal()`` raises SchemaChangedError, sealing
  nothing.  SQLite refuses ``DROP COLUMN`` on a column a trigger names: ``migrate()``
  runs such a migration.
- A table whose name holds a dot is ``main.<name>`` in events (``funnel.tablenames``).
- Every captured row write also writes a changelog row: bulk inserts in WAL mode ran
  at about half their speed (424k -> 230k rows/s at 100 rows per commit).
- The changelog has ``2 * columns`` value columns of the widest captured table, so a
  table may have at most about 990 columns (SQLite's default limit is 2000).
"""
from __future__ import annotations

from funnel.databases.names import INTERNAL_PREFIX as PREFIX
from funnel.databases.names import SQLITE_CAPTURED as CAPTURED
from funnel.databases.names import SQLITE_CHANGELOG as CHANGELOG
from funnel.databases.names import SQLITE_GROUPS as GROUPS
from funnel.databases.names import SQLITE_LAYOUTS as LAYOUTS
from funnel.databases.names import quote_ident
from producer.sources.sqlite.catalog import Layout
from producer.sources.sqlite.snapshot import Snapshot
from producer.sources.sqlite.source import SqliteSource
from producer.sources.sqlite.triggers import quote_text, uninstall

__all__ = ["CAPTURED", "CHANGELOG", "GROUPS", "LAYOUTS", "PREFIX", "Layout", "Snapshot", "SqliteSource",
           "quote_ident", "quote_text", "uninstall"]
