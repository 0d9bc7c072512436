"""Change capture from a production PostgreSQL database (13 or later) by logical decoding.

How it works
------------
``PostgresSource(url, ...)`` checks everything first and creates nothing: server version,
``wal_level = logical``, the role's REPLICATION attribute, every table's key and the
privileges that the next steps need.  ``install()`` creates (or widens) the publication
and, if asked, sets REPLICA IDENTITY FULL.  ``snapshot()`` creates the permanent logical
replication slot with the built-in ``pgoutput`` plugin and copies the tables inside the
snapshot that the slot exports.  ``transactions_after()`` streams the slot's changes,
``acknowledge()`` tells the server what is safely in Kafka.

The package, one module per seam (``pgoutput`` and ``assembly`` are pure and unit-tested):

- ``names``: the slot's and the publication's default names;
- ``catalog``: the captured tables, their columns, types and keys;
- ``checks``: server, role, privileges, slot and publication, before anything is created;
- ``values``: text form -> event value, and the session settings that fix the text form;
- ``connection``: the capture's ordinary and replication sessions;
- ``stream``: the libpq replication connection (slot creation, the COPY-both stream);
- ``pgoutput``: bytes of the stream -> decoded messages;
- ``assembly``: decoded messages -> whole funnel transactions;
- ``reader``: the stream read as transactions, and the slot's position;
- ``snapshot``: the slot with its exported snapshot, and the initial copy;
- ``source``: ``PostgresSource``, which puts them together, and ``uninstall``.

Limits
------
- Tables are captured with the columns they have; a column added later is captured from
  its first change (pgoutput resends the relation), but tables created later are not,
  unless ``capture_ddl`` (``ddl``: schema changes become DDL events, in order).
- Changing the set of captured tables of an existing funnel adds them to the publication
  without copying their existing rows: start a new funnel for that.
- A large source transaction is held in memory whole, as in the SQLite source.
- Unlogged and temporary tables are not in the WAL and cannot be captured; partitioned
  tables are captured partition by partition.

Not thread-safe: use one instance from one thread.
"""
from producer.sources.postgres.catalog import ColumnInfo, TableInfo, inspect_tables
from producer.sources.postgres.connection import connect, conninfo
from producer.sources.postgres.names import default_publication_name, default_slot_name
from producer.sources.postgres.snapshot import PostgresSnapshot
from producer.sources.postgres.source import PostgresSource, uninstall
from producer.sources.postgres.values import SESSION_OPTIONS

__all__ = ["ColumnInfo", "PostgresSnapshot", "PostgresSource", "SESSION_OPTIONS", "TableInfo", "connect", "conninfo",
           "default_publication_name", "default_slot_name", "inspect_tables", "uninstall"]
