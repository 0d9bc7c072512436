"""One naming rule for events and mirrors: distinct production tables never share a mirror table."""
from __future__ import annotations

import pytest

from applier.sinks import postgres_sql, sqlite_sql
from funnel.errors import SourceError
from funnel.tablenames import check_distinct, postgres_identifier, sqlite_event_name


def test_sqlite_tables_keep_distinct_names_on_both_mirrors():
    tables = ["a.b", "a_b", "main.t", "t", "public.x", "x.y.z", "x_y.z"]
    events = [sqlite_event_name(t) for t in tables]
    assert events == ["main.a.b", "a_b", "main.main.t", "t", "main.public.x", "main.x.y.z", "main.x_y.z"]
    # a SQLite mirror gets the production's own names back
    assert [sqlite_sql.mirror_table_name(e) for e in events] == tables
    assert len({postgres_sql.mirror_table_name(e) for e in events}) == len(tables)
    check_distinct(events, "prod.db")  # nothing to refuse


@pytest.mark.parametrize(
    ("tables", "mirror_table"),
    [
        (["public.sales_orders", "sales.orders"], "sales_orders"),
        (["public.t", "public.T"], "T"),  # SQLite table names ignore case
        (["a_b.c", "a.b_c"], "a_b_c"),
        (["public.orders", "main.orders"], "orders"),
    ],
)
def test_tables_a_sqlite_mirror_would_merge_are_refused_naming_both(tables, mirror_table):
    with pytest.raises(SourceError) as caught:
        check_distinct(["public.other", *tables], "database shop")
    message = str(caught.value)
    assert all(f'"{t}"' in message for t in tables) and "database shop" in message
    assert f'SQLite table "{mirror_table}"' in message


def test_long_names_a_postgresql_mirror_would_cut_to_one_are_refused_naming_both():
    stem = "l" * 70
    with pytest.raises(SourceError, match=rf'"{stem}_one" and "{stem}_two" of prod.db .* PostgreSQL table '
                                          rf'"public"."{"l" * 63}"'):
        check_distinct([f"{stem}_one", f"{stem}_two"], "prod.db")
    # cut at a character boundary, as PostgreSQL does: 31 two-byte characters, not 31.5
    assert postgres_identifier("é" * 40) == "é" * 31
    check_distinct(["l" * 61 + "_a", "l" * 61 + "_b"], "prod.db")  # 63 bytes: kept whole
