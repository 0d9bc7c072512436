"""The checks capture makes before it creates anything: server, role, privileges, slot
and publication.  Each raises SourceError naming the first problem and what to do.

The capture's role needs LOGIN and REPLICATION, CONNECT on the database, USAGE on the
schemas and SELECT on the captured tables.  Creating the publication (and setting
REPLICA IDENTITY FULL) needs ownership of the tables and CREATE on the database; a role
without them uses a publication the owner made:
``CREATE PUBLICATION timefunnel_x FOR TABLE public.a, public.b;`` and ``--publication``.
An operator's publication must publish every operation of every captured table,
unfiltered (no row filter, no column list, not via the partition root), or the mirror
would silently miss changes.
"""
from __future__ import annotations

import psycopg

from funnel.errors import SourceError
from producer.sources.postgres.catalog import TableInfo, database

MIN_SERVER_VERSION = 130000


def check_server(conn: psycopg.Connection) -> None:
    """Raises SourceError for a server or role that cannot do logical decoding."""
    version, wal_level, role, replication = conn.execute(
        "SELECT current_setting('server_version_num')::int, current_setting('wal_level'), current_user, "
        "rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    if version < MIN_SERVER_VERSION:
        raise SourceError(f"PostgreSQL {conn.info.parameter_status('server_version')} is too old for capture: "
                          "13 or later needed")
    if wal_level != "logical":
        raise SourceError(f"wal_level is {wal_level!r}: capture needs 'logical'",
                          hint="ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL")
    if not replication:
        raise SourceError(f"role {role} has no REPLICATION attribute: it cannot use a replication slot",
                          hint=f"ALTER ROLE {role} REPLICATION;")


def check_privileges(conn: psycopg.Connection, tables: list[TableInfo], publication: str, own_publication: bool,
                     identity_full: bool) -> None:
    """Raises SourceError for the first privilege that install() or the copy would miss."""
    role, superuser, create = conn.execute(
        "SELECT current_user, rolsuper, has_database_privilege(current_database(), 'CREATE') "
        "FROM pg_roles WHERE rolname = current_user").fetchone()
    for table in tables:
        if not table.selectable:
            raise SourceError(f"role {role} cannot read table {table.qualified}",
                              hint=f"GRANT USAGE ON SCHEMA {table.schema} TO {role}; "
                                   f"GRANT SELECT ON {table.qualified} TO {role};")
    not_owned = [t.qualified for t in tables if not t.owned and not superuser]
    if identity_full and not_owned:
        raise SourceError(f"role {role} does not own table {not_owned[0]}, so it cannot set its "
                          "REPLICA IDENTITY FULL",
                          hint=f"have its owner run ALTER TABLE {not_owned[0]} REPLICA IDENTITY FULL, "
                               "then capture without --replica-identity-full")
    if own_publication and (not_owned or not (create or superuser)):
        missing = f"does not own table {not_owned[0]}" if not_owned else "has no CREATE privilege on the database"
        raise SourceError(
            f"role {role} {missing}, so it cannot create publication {publication}",
            hint=f"have the tables' owner run: CREATE PUBLICATION {publication} FOR TABLE "
                 f"{', '.join(t.qualified for t in tables)}; then pass --publication {publication}")


def check_slot(conn: psycopg.Connection, slot: str) -> None:
    """Raises SourceError if a slot of our name exists for another purpose, or no slot is free."""
    row = conn.execute(
        "SELECT slot_type, plugin, database FROM pg_replication_slots WHERE slot_name = %s",
        (slot,)).fetchone()
    if row is None:
        used, limit = conn.execute(
            "SELECT count(*), current_setting('max_replication_slots')::int FROM pg_replication_slots").fetchone()
        if used >= limit:
            raise SourceError(f"all {limit} replication slots of the server are in use",
                              hint="raise max_replication_slots (restart needed) or drop an unused slot")
        return
    slot_type, plugin, slot_database = row
    if slot_type != "logical" or plugin != "pgoutput" or slot_database != database(conn):
        raise SourceError(
            f"replication slot {slot} exists but is a {slot_type} slot"
            + (f" of plugin {plugin} on database {slot_database}" if slot_type == "logical" else ""),
            hint="pass another --slot, or drop that slot if nothing uses it")


def check_publication(conn: psycopg.Connection, tables: list[TableInfo], publication: str,
                      own_publication: bool) -> None:
    """Raises SourceError if a named publication is missing, does not publish every
    operation, or lacks a captured table."""
    row = conn.execute(
        "SELECT pubinsert AND pubupdate AND pubdelete AND pubtruncate, pg_has_role(pubowner, 'USAGE') "
        "FROM pg_publication WHERE pubname = %s", (publication,)).fetchone()
    create_hint = f"CREATE PUBLICATION {publication} FOR TABLE {', '.join(t.qualified for t in tables)};"
    if row is None:
        if own_publication:
            return
        raise SourceError(f"publication {publication} does not exist in database {database(conn)}",
                          hint=f"have the tables' owner run: {create_hint}")
    all_operations, owned = row
    _check_publication_filters(conn, tables, publication)
    if not all_operations:
        raise SourceError(f"publication {publication} does not publish every operation",
                          hint=f"ALTER PUBLICATION {publication} SET "
                               "(publish = 'insert, update, delete, truncate');")
    missing = unpublished_tables(conn, tables, publication)
    if missing and not own_publication:
        raise SourceError(f"publication {publication} does not include table {missing[0]}",
                          hint=f"ALTER PUBLICATION {publication} ADD TABLE {', '.join(missing)};")
    if missing and not owned:
        raise SourceError(f"publication {publication} lacks table {missing[0]} and belongs to "
                          "another role", hint=f"have its owner run: ALTER PUBLICATION {publication} "
                                               f"ADD TABLE {', '.join(missing)};")


def _check_publication_filters(conn: psycopg.Connection, tables: list[TableInfo], publication: str) -> None:
    """Raises SourceError if the publication sends a captured table through its
    partition root, or (PostgreSQL 15+) filters its rows or columns: the mirror would
    silently miss changes."""
    oids = [t.oid for t in tables]
    via_root = conn.execute(
        "SELECT p.pubviaroot AND EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = ANY(%s) AND c.relispartition) "
        "FROM pg_publication p WHERE p.pubname = %s", (oids, publication)).fetchone()[0]
    if via_root:
        raise SourceError(f"publication {publication} publishes partitions as their root table, "
                          "which capture does not read",
                          hint=f"ALTER PUBLICATION {publication} SET (publish_via_partition_root = false);")
    if conn.info.server_version < 150000:
        return
    filtered = conn.execute(
        "SELECT pr.prrelid::regclass::text FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid "
        "WHERE p.pubname = %s AND pr.prrelid = ANY(%s) AND (pr.prqual IS NOT NULL OR pr.prattrs IS NOT NULL)",
        (publication, oids)).fetchone()
    if filtered is not None:
        raise SourceError(f"publication {publication} filters the rows or columns of table {filtered[0]}: "
                          "the mirror would miss changes",
                          hint="publish the whole table (no WHERE clause, no column list)")


def unpublished_tables(conn: psycopg.Connection, tables: list[TableInfo], publication: str) -> list[str]:
    published = {(s, t) for s, t in conn.execute(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (publication,))}
    return [t.qualified for t in tables if (t.schema, t.name) not in published]
