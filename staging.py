"""A chunk of validated trades classified inside the database, through a temporary staging table.

For a chunk that repeats trades already stored (a file re-sent with new rows added, say), inserting every row and
then reading the stored values of the skipped ones back would cost about as much per repeated row as a new one.
Instead the chunk goes into the temporary table staging_transactions by the database's bulk path, and the rest is
done where the trades are: one statement counts the staged rows by outcome (no trade holds the ref yet; the stored
trade has the same values text, dialects.same_values_sql: a duplicate; or other values: a conflict),
the rows whose txn_ref is not stored are inserted (only if there are any: a chunk of repeats inserts nothing), and
the rows that are neither inserted nor duplicates are listed (only if there are any: conflicts are rare).
load_transactions chooses this path when a sample of the chunk's refs is already stored (holds_stored_refs); the
outcome is the same either way.
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
# The staged rows, each with the stored trade of its ref (none: 'missing'), but for those this batch stored from
# the same line (inserted from this chunk)
CLASSIFIED_CTE = """
WITH classified AS (
    SELECT s.txn_ref, s.source_line, t.txn_id, t.batch_id, t.source_line AS stored_line,
           CASE WHEN t.txn_id IS NULL THEN 'missing'
                WHEN {same_values} THEN 'same'
                ELSE 'conflict' END AS outcome
    FROM staging_transactions s
    LEFT JOIN transactions t ON t.txn_ref = s.txn_ref
    WHERE t.txn_id IS NULL OR t.batch_id IS NULL OR t.batch_id <> :batch_id OR t.source_line IS NULL
       OR t.source_line <> s.source_line
)"""
COUNT_OUTCOMES_SQL = ("SELECT COUNT(CASE WHEN outcome = 'missing' THEN 1 END), "
                      "COUNT(CASE WHEN outcome = 'same' THEN 1 END), "
                      "COUNT(CASE WHEN outcome = 'conflict' THEN 1 END) FROM classified")
OTHERS_SQL = ("SELECT txn_ref, source_line, outcome, txn_id, batch_id, stored_line FROM classified "
              "WHERE outcome <> 'same' ORDER BY source_line")


class Outcomes(NamedTuple):
    """How many staged rows have each outcome of CLASSIFIED_CTE."""
    missing: int  # no trade holds the ref: before the insert, the new rows; after it, rows skipped but not stored
    same: int
    conflict: int


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
    """SAMPLE_REFS of these txn_refs spread over them (taken by the preparing process, for holds_stored_refs)."""
    return refs[::max(1, len(refs) // SAMPLE_REFS)][:SAMPLE_REFS]


def holds_stored_refs(connection, sampled_refs):
    """Are some of these txn_refs (a chunk's sample_refs) stored already?"""
    statement = text("SELECT COUNT(*) FROM transactions WHERE txn_ref IN :refs").bindparams(
        bindparam("refs", expanding=True))
    return connection.execute(statement, {"refs": sampled_refs}).scalar() > 0


def insert_and_classify(connection, columns, batch_id, tsv=None):
    """Stage the chunk's rows (bulk_insert.INSERT_COLUMNS lists), insert the new ones and classify the others."""
    bulk_insert.stage_columns(connection, columns, tsv)
    classified = CLASSIFIED_CTE.format(same_values=dialects.same_values_sql(connection.dialect.name, "t", "s"))
    outcomes = count_outcomes(connection, classified, batch_id)
    inserted = insert_new(connection) if outcomes.missing else 0
    if inserted == outcomes.missing:  # trades are never deleted: the rows inserted are the missing ones
        outcomes = outcomes._replace(missing=0)
    else:  # another loader stored some of the missing refs meanwhile (the insert skipped them): count again
        outcomes = count_outcomes(connection, classified, batch_id)
    unmatched = list_unmatched(connection, classified, batch_id) if outcomes.missing or outcomes.conflict else []
    bulk_insert.empty_staging(connection)
    return Classified(inserted, outcomes.same, unmatched)


def count_outcomes(connection, classified, batch_id):
    """The Outcomes of the staged rows in one pass (classified: CLASSIFIED_CTE formatted for the dialect)."""
    return Outcomes(*connection.execute(text(classified + COUNT_OUTCOMES_SQL), {"batch_id": batch_id}).one())


def insert_new(connection):
    """Insert the staged rows whose txn_ref is not stored, in line order; return how many were inserted."""
    names = ", ".join(bulk_insert.INSERT_COLUMNS)
    statement = INSERT_NEW_SQL[dialects.bulk_path(connection.dialect.name)].format(names=names, new=NEW_ROWS)
    return connection.exec_driver_sql(statement).rowcount


def list_unmatched(connection, classified, batch_id):
    """The Unmatched staged rows, in line order (classified: CLASSIFIED_CTE formatted for the dialect)."""
    return [Unmatched(*row) for row in connection.execute(text(classified + OTHERS_SQL), {"batch_id": batch_id})]
