"""A chunk of validated trades classified inside the database, through a temporary staging table.

For a chunk that repeats trades already stored (a file re-sent with new rows added, say), inserting every row and
then reading the stored values of the skipped ones back would cost about as much per repeated row as a new one.
Instead the chunk goes into the temporary table staging_transactions by the database's bulk path, and three
statements do the rest where the trades are: insert the rows whose txn_ref is not stored yet, count the rows
whose stored trade has the same values text (dialects.values_sql on both sides: duplicates), and list only the
rest (conflicts, rare). load_transactions chooses this path when a sample of the chunk's refs is already stored
(holds_stored_refs); the outcome is the same either way.
"""
from typing import NamedTuple

from sqlalchemy import bindparam, text

import bulk_insert
import dialects

SAMPLE_REFS = 200  # refs of a chunk looked up to choose the staging path
INSERT_NEW_SQL = {  # by bulk path: the staged rows whose txn_ref is not stored, in line order; a ref that another
    # loader stores meanwhile is skipped (and then classified like the others)
    "insert_or_ignore": "INSERT OR IGNORE INTO transactions ({names}) SELECT {names} FROM staging_transactions s "
                        "{new}",
    "load_data": "INSERT IGNORE INTO transactions ({names}) SELECT {names} FROM staging_transactions s {new}",
    "copy": "INSERT INTO transactions ({names}) SELECT {names} FROM staging_transactions s {new} "
            "ON CONFLICT (txn_ref) DO NOTHING",
}
NEW_ROWS = ("WHERE NOT EXISTS (SELECT 1 FROM transactions t WHERE t.txn_ref = s.txn_ref) "
            "ORDER BY s.source_line")
# The staged rows that were not inserted, each with the stored trade of its ref (none: 'missing')
SKIPPED_CTE = """
WITH skipped AS (
    SELECT s.txn_ref, s.source_line, t.txn_id, t.batch_id, t.source_line AS stored_line,
           CASE WHEN t.txn_id IS NULL THEN 'missing'
                WHEN {stored_values} = {staged_values} THEN 'same'
                ELSE 'conflict' END AS outcome
    FROM staging_transactions s
    LEFT JOIN transactions t ON t.txn_ref = s.txn_ref
    WHERE t.txn_id IS NULL OR t.batch_id IS NULL OR t.batch_id <> :batch_id OR t.source_line IS NULL
       OR t.source_line <> s.source_line
)"""
COUNT_SAME_SQL = "SELECT COUNT(*) FROM skipped WHERE outcome = 'same'"
OTHERS_SQL = ("SELECT txn_ref, source_line, outcome, txn_id, batch_id, stored_line FROM skipped "
              "WHERE outcome <> 'same' ORDER BY source_line")


class Unmatched(NamedTuple):
    """A staged row that was neither inserted nor the same as the stored trade of its ref."""
    txn_ref: str
    line_number: int
    outcome: str  # 'conflict', or 'missing': skipped although no trade holds its ref
    txn_id: int
    batch_id: int
    stored_line: int


class Classified(NamedTuple):
    """What became of a staged chunk."""
    inserted: int
    duplicates: int
    unmatched: list  # Unmatched rows, in line order


def sample_refs(refs):
    """SAMPLE_REFS of these txn_refs spread over them (a sample's sample is itself)."""
    return refs[::max(1, len(refs) // SAMPLE_REFS)][:SAMPLE_REFS]


def holds_stored_refs(connection, refs):
    """Are some of a sample of these txn_refs (sample_refs) stored already?"""
    statement = text("SELECT COUNT(*) FROM transactions WHERE txn_ref IN :refs").bindparams(
        bindparam("refs", expanding=True))
    return connection.execute(statement, {"refs": sample_refs(refs)}).scalar() > 0


def insert_and_classify(connection, columns, batch_id, tsv=None):
    """Stage the chunk's rows (bulk_insert.INSERT_COLUMNS lists), insert the new ones and classify the others."""
    dialect_name = connection.dialect.name
    bulk_insert.stage_columns(connection, columns, tsv)
    names = ", ".join(bulk_insert.INSERT_COLUMNS)
    insert_new = INSERT_NEW_SQL[dialects.bulk_path(dialect_name)].format(names=names, new=NEW_ROWS)
    inserted = connection.exec_driver_sql(insert_new).rowcount
    skipped = SKIPPED_CTE.format(stored_values=dialects.values_sql(dialect_name, "t"),
                                 staged_values=dialects.values_sql(dialect_name, "s"))
    duplicates = connection.execute(text(skipped + COUNT_SAME_SQL), {"batch_id": batch_id}).scalar()
    unmatched = [Unmatched(*row) for row in connection.execute(text(skipped + OTHERS_SQL), {"batch_id": batch_id})]
    connection.exec_driver_sql("DELETE FROM staging_transactions")
    return Classified(inserted, duplicates, unmatched)
