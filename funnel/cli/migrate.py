"""``funnel migrate SOURCE_URL --sql ...``: run an application's SQLite migration that capture's triggers would block.

SQLite refuses ``ALTER TABLE ... DROP COLUMN`` on a column that a trigger names, and
capture's triggers name every captured column.  This runs the migration in one write
transaction with the capture's triggers released for the dropped column; the running
capture then follows it as any migration (``producer.sources.sqlite``).  Other
migrations need no help: capture follows them by itself.
"""
from __future__ import annotations

import pathlib

import click

from funnel.errors import ConfigError


@click.command()
@click.argument("source_url")
@click.option("--sql", "sql_text", default=None, metavar="SQL", help="The migration's statements.")
@click.option("--file", "sql_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Read the statements from this file.")
def migrate(source_url: str, sql_text: str | None, sql_file: str | None) -> None:
    """Run a migration on a captured SQLite database, in one transaction, even where SQLite's triggers block it."""
    from funnel.urls import sqlite_path
    from producer.sources.sqlite import SqliteSource

    if (sql_text is None) == (sql_file is None):
        raise ConfigError("give the migration with exactly one of --sql and --file",
                          hint="funnel migrate sqlite:///app.db --sql 'ALTER TABLE orders DROP COLUMN note'")
    if not source_url.startswith("sqlite:"):
        raise ConfigError(f"funnel migrate is for SQLite sources, not {source_url!r}",
                          hint="PostgreSQL runs the migration as it is: run it with psql")
    script = sql_text if sql_text is not None else pathlib.Path(sql_file).read_text(encoding="utf-8")
    # The tables and triggers come from what capture installed, whatever it was asked for.
    with SqliteSource(sqlite_path(source_url), None, rowid_key=True) as source:
        count = source.migrate(script)
    click.echo(f"ran {count} statement(s) in one transaction; the running capture follows the change")
