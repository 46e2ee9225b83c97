"""The schema's indexes: every foreign key can be followed from its referenced row (a
delete cascades, a project's rows are found) by an index that starts with its column, and no
plain index is a prefix of another one, which would serve every query it serves while each
write pays an entry in both."""

from __future__ import annotations

import pytest
from django.db import connection

pytestmark = pytest.mark.django_db

# Each btree index of the app's tables: (table, name, columns in order, unique, partial).
INDEXES = """
SELECT t.relname, i.relname, array_agg(a.attname ORDER BY k.n), x.indisunique,
       x.indpred IS NOT NULL
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_am am ON am.oid = i.relam AND am.amname = 'btree'
CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, n)
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
WHERE t.relname LIKE 'annotations\\_%%' AND t.relkind = 'r'
GROUP BY t.relname, i.relname, x.indisunique, x.indpred
"""

# Each single-column foreign key of the app's tables: (table, column).
FOREIGN_KEYS = """
SELECT t.relname, a.attname
FROM pg_constraint c
JOIN pg_class t ON t.oid = c.conrelid
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = c.conkey[1]
WHERE c.contype = 'f' AND t.relname LIKE 'annotations\\_%%' AND cardinality(c.conkey) = 1
"""


def _rows(sql: str) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchall()


def test_every_foreign_key_is_the_first_column_of_an_index():
    first = {(table, columns[0]) for table, _, columns, _, partial in _rows(INDEXES) if not partial}
    uncovered = sorted(set(_rows(FOREIGN_KEYS)) - first)
    assert not uncovered, uncovered


# Django makes this table and its indexes itself (an adjudication's readings, a
# ManyToManyField): its index on the adjudication is one the unique pair covers.
DJANGOS_OWN = {"annotations_adjudication_readings"}


def test_no_plain_index_is_a_prefix_of_another():
    indexes = _rows(INDEXES)
    redundant = [
        (table, name, other)
        for table, name, columns, unique, partial in indexes
        if not unique and not partial and table not in DJANGOS_OWN
        for table2, other, columns2, _, partial2 in indexes
        if table2 == table
        and other != name
        and not partial2
        and len(columns2) > len(columns)
        and columns2[: len(columns)] == columns
    ]
    assert not redundant, redundant
