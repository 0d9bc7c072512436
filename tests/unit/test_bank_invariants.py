"""The fault drill's invariant checker catches what it is there to catch."""
from __future__ import annotations

import random
import sqlite3

from tests.support import bank


def make_bank(tmp_path, transfers: int = 30) -> sqlite3.Connection:
    path = str(tmp_path / "bank.db")
    bank.create_bank(path)
    conn = sqlite3.connect(path, isolation_level=None)
    rng = random.Random(7)
    for _ in range(transfers):
        bank.transfer(conn, rng)
    return conn


def test_a_consistent_bank_has_no_violation(tmp_path):
    assert bank.violations(make_bank(tmp_path)) == []


def test_a_lost_transaction_shows_as_a_gap_and_an_unbalanced_account(tmp_path):
    conn = make_bank(tmp_path)
    conn.execute("DELETE FROM ledger WHERE n = 10")
    found = bank.violations(conn)
    assert any("gap" in v for v in found) and any("disagree" in v for v in found), found


def test_half_a_transaction_shows_in_the_sum(tmp_path):
    conn = make_bank(tmp_path)
    conn.execute("UPDATE accounts SET balance = balance - 5 WHERE id = 1")
    assert any("not 10000" in v for v in bank.violations(conn))


def test_ledger_read_back_counts_missing_and_doubled_numbers():
    assert bank.ledger_counts([1, 2, 3]) == ([], [])
    assert bank.ledger_counts([1, 3, 3, 4]) == ([2], [3])
