"""Create the least-privileged database login the pipeline runs as (MariaDB/MySQL and PostgreSQL).

Run it once as an administrator (a user who may create users and tables), and again after each upgrade of
stock-etl: it creates the database and every table the pipeline uses (or adds what an upgrade brings), then
creates the role (default `etl`) if it does not exist, sets its password, and grants it only what the stages
need on that one database:

  MariaDB/MySQL  SELECT, INSERT, UPDATE, DELETE on the database's tables. LOAD DATA LOCAL INFILE (the bulk
                 load) needs only INSERT; the named locks (GET_LOCK) need no grant.
  PostgreSQL     CONNECT and TEMPORARY on the database (the load's COPY goes through a temporary staging
                 table), USAGE on schema public, SELECT, INSERT, UPDATE, DELETE on its tables and USAGE, SELECT
                 on its sequences (the ids).

No CREATE, ALTER, DROP, FILE, GRANT or access to another database: the role cannot change the schema, so a
stage run as it against a database that an upgrade has not been applied to ends with one line naming the
missing column (run this script again as the administrator). It grants and never revokes.

The password comes from the environment variable ETL_PASSWORD, else is asked for on a terminal; it is never
printed. Then run the stages with DATABASE_URL=mysql+pymysql://etl:PASSWORD@HOST:3306/DATABASE (or
postgresql+psycopg://etl:PASSWORD@HOST:5432/DATABASE).
"""
import getpass
import os
import re
import sys
from typing import NamedTuple

from sqlalchemy import literal, text

import cli
import db_config

ROLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")  # pasted into CREATE USER: letters, digits, underscore
MYSQL_HOST = re.compile(r"[A-Za-z0-9_.%:-]{1,255}")  # a MariaDB account's host part: a name, an address or '%'
PASSWORD_VARIABLE = "ETL_PASSWORD"


class Role(NamedTuple):
    name: str
    password: str
    host: str  # MariaDB/MySQL only: where the role may connect from


def main(argv=None):
    parser = cli.make_parser(__doc__)
    parser.add_argument("--role", default="etl", help="name of the role to create (default: %(default)s)")
    parser.add_argument("--host", default="%", help="MariaDB/MySQL only: the host the role may connect from "
                                                    "(default: %(default)s, any; e.g. 10.0.0.% or localhost)")
    args = parser.parse_args(argv)
    cli.setup_logging(args)
    if not ROLE_NAME.fullmatch(args.role):
        parser.error(f"--role {args.role!r}: use letters, digits and underscores (at most 32, not a digit first)")
    if not MYSQL_HOST.fullmatch(args.host):
        parser.error(f"--host {args.host!r}: use a host name, an address or a pattern with %")

    def work():
        engine = db_config.get_engine(args.database_url)
        try:
            granted = create_role(engine, Role(args.role, role_password(), args.host))
        finally:
            engine.dispose()
        print(f"role {args.role} may use database {engine.url.database}: {granted}")
        return cli.EXIT_OK

    return cli.run(work, args, "create_etl_role")


def role_password():
    """The role's password: $ETL_PASSWORD, else asked for on a terminal; InputError when neither gives one."""
    password = os.environ.get(PASSWORD_VARIABLE)
    if password is None and sys.stdin.isatty():
        password = getpass.getpass("password for the role: ")
    if not password:
        raise cli.InputError(f"no password: set {PASSWORD_VARIABLE}, or run on a terminal to be asked for one")
    return password


def create_role(engine, role):
    """Create `role` (or set its password) and grant it the pipeline's privileges; return what was granted."""
    backend = engine.dialect.name
    if backend == "sqlite":
        raise cli.InputError("a SQLite file has no roles: it is protected by its file permissions (owner only)")
    statements = mysql_statements if backend == "mysql" else postgresql_statements
    with engine.begin() as connection:
        for statement in statements(connection, quoted(connection, role)):
            connection.execution_options(no_parameters=True).exec_driver_sql(statement)
    return MYSQL_GRANTS if backend == "mysql" else POSTGRESQL_GRANTS


class Quoted(NamedTuple):
    """A role's parts as SQL literals and identifiers, quoted by the connection's dialect."""
    name: str
    password: str
    host: str
    database: str


def quoted(connection, role):
    """The role's name, password and host, and the connection's database, ready to paste into SQL."""
    preparer = connection.dialect.identifier_preparer
    return Quoted(preparer.quote_identifier(role.name), sql_literal(connection, role.password),
                  sql_literal(connection, role.host), preparer.quote_identifier(connection.engine.url.database))


def sql_literal(connection, value):
    """A string as an SQL literal of the connection's dialect (CREATE USER takes no bound parameter). The
    dialect doubles each % for its driver's parameter style; statements here run without parameters."""
    compiled = literal(value).compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True})
    return str(compiled).replace("%%", "%")


MYSQL_GRANTS = "SELECT, INSERT, UPDATE, DELETE"


def mysql_statements(_connection, role):
    account = f"{role.name}@{role.host}"
    return [f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY {role.password}",
            f"ALTER USER {account} IDENTIFIED BY {role.password}",
            f"GRANT {MYSQL_GRANTS} ON {role.database}.* TO {account}"]


POSTGRESQL_GRANTS = ("CONNECT, TEMPORARY on the database; USAGE on schema public; SELECT, INSERT, UPDATE, DELETE "
                     "on its tables; USAGE, SELECT on its sequences")


def postgresql_statements(connection, role):
    exists = connection.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :name"),
                                {"name": role.name.strip('"')}).first()
    create = "ALTER ROLE" if exists else "CREATE ROLE"
    return [f"{create} {role.name} LOGIN PASSWORD {role.password}",
            f"GRANT CONNECT, TEMPORARY ON DATABASE {role.database} TO {role.name}",
            f"GRANT USAGE ON SCHEMA public TO {role.name}",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role.name}",
            f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role.name}"]


if __name__ == "__main__":
    sys.exit(main())
