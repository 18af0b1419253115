"""What differs between the databases (SQLite, MySQL/MariaDB, PostgreSQL), kept in one place."""
from sqlalchemy.dialects import mysql, postgresql, sqlite

_CONFLICT_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def upsert(connection, table, update_columns):
    """An INSERT of `table` rows that updates `update_columns` where the primary key exists: one atomic
    statement, so that two writers of the same key cannot both insert it."""
    dialect = connection.dialect.name
    if dialect == "mysql":
        statement = mysql.insert(table)
        return statement.on_duplicate_key_update({column: statement.inserted[column] for column in update_columns})
    statement = _CONFLICT_INSERTS[dialect](table)
    return statement.on_conflict_do_update(index_elements=list(table.primary_key.columns),
                                           set_={column: statement.excluded[column] for column in update_columns})
