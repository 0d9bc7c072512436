"""One home per database kind for what capture, apply and switchback share.

``names``: timefunnel's own object names and identifier quoting (the same rule on both
database kinds).  ``postgres``: the one PostgreSQL connection factory, which forces the
role's ``application_name`` so that a switchback freeze can tell timefunnel's sessions
from the application's.  ``postgres_catalog``: the catalog reads (tables, columns, keys)
that the capture and the switchback share.  ``sqlite``: the SQLite file rules every side uses.
See docs/ARCHITECTURE.md ("One home per database", under "The layers").
"""
