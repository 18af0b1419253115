"""Create the least-privileged database login the pipeline runs as (MariaDB/MySQL and PostgreSQL).

Run it once as an administrator (a user who may create users and tables), and again after each upgrade of
stock-etl: it creates the database and every table the pipeline uses (or adds what an upgrade brings), then
creates the role (default `etl`), sets its password, and grants it only what the stages do on that database:

  SELECT, INSERT  on every table
  UPDATE          on all but the record of trades and rejects (transactions, rejected_transactions)
  DELETE          only on the tables rebuilt from the trades (positions, lots, checkpoints, risk, history)

  MariaDB/MySQL also: CREATE TEMPORARY TABLES on the database (a chunk that repeats stored trades is
  classified through a temporary table of the session's own)
  PostgreSQL also: CONNECT and TEMPORARY on the database (the load's COPY goes through a temporary table),
  USAGE on schema public and USAGE, SELECT on its sequences (the ids); PUBLIC's CREATE on schema public of
  this database is revoked (already so from PostgreSQL 15).

No CREATE, ALTER, DROP, FILE or GRANT: the role cannot change the schema, rewrite a trade or delete an alert.
An existing role is only given a new password and the grants when it has no other privileges (a role this
script made); an administrator's account, a superuser or a reserved name is refused.

The password comes from the environment variable ETL_PASSWORD, else is asked for on a terminal; it is never
printed. Then run the stages with DATABASE_URL=mysql+pymysql://etl:PASSWORD@HOST:3306/DATABASE (or
postgresql+psycopg://etl:PASSWORD@HOST:5432/DATABASE).
"""
import early_signals  # noqa: F401  (first: Ctrl+C during the imports below ends in one line)
import getpass
import logging
import os
import re
import sys
from typing import Callable, NamedTuple

from sqlalchemy import literal, text

import cli
import db_config
import schema

ROLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")  # pasted into CREATE USER: letters, digits, underscore
RESERVED_ROLES = {"root", "postgres", "public", "mysql", "none", "current_user", "session_user"}  # any case
MYSQL_HOST = re.compile(r"[A-Za-z0-9_.%:-]{1,255}")  # a MariaDB account's host part: a name, an address or '%'
PASSWORD_VARIABLE = "ETL_PASSWORD"
logger = logging.getLogger(__name__)
RECORD_TABLES = ("transactions", "rejected_transactions")  # written once, never updated or deleted
REBUILT_TABLES = ("portfolios", "position_lots", "position_checkpoints", "symbol_last_trades", "investor_risk",
                  "investor_daily", "investor_daily_builds", "investor_returns", "performance_closes",
                  "performance_actions")  # the only tables the stages delete rows from: rebuilt from the trades
# what an existing role may already hold
ROLE_PRIVILEGES = {"USAGE", "SELECT", "INSERT", "UPDATE", "DELETE", "CREATE TEMPORARY TABLES"}


class Role(NamedTuple):
    name: str
    password: str
    host: str  # MariaDB/MySQL only: where the role may connect from


class Quoted(NamedTuple):
    """A role's parts as SQL literals and identifiers, quoted by the connection's dialect."""
    name: str
    password: str
    host: str
    database: str


def main(argv=None):
    parser = cli.make_parser(__doc__)
    parser.add_argument("--role", default="etl", help="name of the role to create (default: %(default)s)")
    parser.add_argument("--host", default="%", help="MariaDB/MySQL only: the host the role may connect from "
                                                    "(default: any, %%; e.g. 10.0.0.%% or localhost)")
    args = parser.parse_args(argv)
    cli.setup_logging(args)
    if not ROLE_NAME.fullmatch(args.role):
        parser.error(f"--role {args.role!r}: use letters, digits and underscores (at most 32, not a digit first)")
    if args.role.lower() in RESERVED_ROLES or args.role.lower().startswith("pg_"):
        parser.error(f"--role {args.role}: a name the server reserves or an administrator's; choose another")
    if not MYSQL_HOST.fullmatch(args.host):
        parser.error(f"--host {args.host!r}: use a host name, an address or a pattern with %")

    def work():
        url = db_config.parse_url(db_config.database_url(args.database_url))
        if url.get_backend_name() == "sqlite":
            raise cli.InputError("a SQLite file has no roles: it is protected by its file permissions (owner only)")
        engine = db_config.get_engine(url.render_as_string(hide_password=False))
        try:
            created = create_role(engine, Role(args.role, role_password(), args.host))
        finally:
            engine.dispose()
        print(f"role {args.role} {'created' if created else 'updated'}: {GRANTS_SUMMARY} on database "
              f"{url.database}")
        return cli.EXIT_OK

    return cli.run(work, args, "create_etl_role")


GRANTS_SUMMARY = (f"SELECT, INSERT on every table, UPDATE on all but {' and '.join(RECORD_TABLES)}, DELETE only on "
                  f"the {len(REBUILT_TABLES)} tables rebuilt from the trades")


def role_password():
    """The role's password: $ETL_PASSWORD, else asked for on a terminal; InputError when neither gives one."""
    password = os.environ.get(PASSWORD_VARIABLE)
    if password is None and sys.stdin.isatty():
        password = getpass.getpass("password for the role: ")
    if not password:
        raise cli.InputError(f"no password: set {PASSWORD_VARIABLE}, or run on a terminal to be asked for one")
    return password


def create_role(engine, role):
    """Create `role` (or give an existing one of its kind the password), grant it the pipeline's privileges;
    return whether it was created. InputError for an existing role that holds more."""
    backend = MYSQL if engine.dialect.name == "mysql" else POSTGRESQL
    with engine.begin() as connection:
        names = quoted(connection, role)
        existed = backend.existing(connection, role, names)
        for statement in backend.statements(names, existed):
            connection.execution_options(no_parameters=True).exec_driver_sql(statement)
    return not existed


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


def table_grants(database, grantee, qualify):
    """GRANT statements of the three privilege levels; qualify(database, table) names a table."""
    tables = [table.name for table in schema.metadata.sorted_tables]
    updated = [name for name in tables if name not in RECORD_TABLES]
    return [f"GRANT SELECT, INSERT ON {qualify(database, '*')} TO {grantee}",
            *(f"GRANT UPDATE ON {qualify(database, name)} TO {grantee}" for name in updated),
            *(f"GRANT DELETE ON {qualify(database, name)} TO {grantee}" for name in REBUILT_TABLES)]


def refuse(role, what):
    raise cli.InputError(f"role {role.name} already exists and {what}: it is not a role this script made; choose "
                         "another --role")


class Backend(NamedTuple):
    existing: Callable  # (connection, role, quoted) -> bool; refuses a role that holds more than the pipeline's
    statements: Callable  # (quoted, existed) -> [SQL]


def mysql_existing(connection, role, names):
    hosts = set(connection.execute(text("SELECT Host FROM mysql.user WHERE User = :name"),
                                   {"name": role.name}).scalars())
    if hosts - {role.host}:  # the server picks the most specific account: a login from there would be that one
        refuse(role, f"also exists for host {sorted(hosts - {role.host})[0]!r}, which a login from there would use")
    anonymous = sorted(connection.execute(text("SELECT Host FROM mysql.user WHERE User = ''")).scalars())
    if anonymous:
        logger.warning("anonymous accounts exist (''@%s): a login from those hosts matches them before %s@%s and "
                       "is refused; drop them (mariadb-secure-installation does)", ", ''@".join(anonymous),
                       role.name, role.host)
    if role.host not in hosts:
        return False
    for (grant,) in connection.execute(text(f"SHOW GRANTS FOR {names.name}@{names.host}")):
        privileges, _, target = grant.partition(" ON ")
        held = {privilege.strip() for privilege in privileges.removeprefix("GRANT ").split(",")}
        if not held <= ROLE_PRIVILEGES or "WITH GRANT OPTION" in grant or (
                target.startswith("*.*") and held != {"USAGE"}):
            refuse(role, f"holds more than the pipeline needs ({grant.split(' IDENTIFIED')[0]})")
    return True


def mysql_statements(names, existed):
    account = f"{names.name}@{names.host}"
    create = [] if existed else [f"CREATE USER {account} IDENTIFIED BY {names.password}"]
    return [*create, f"ALTER USER {account} IDENTIFIED BY {names.password}",
            f"GRANT CREATE TEMPORARY TABLES ON {names.database}.* TO {account}",  # the load's staging table
            *table_grants(names.database, account, lambda database, table: f"{database}.{table}")]


def postgresql_existing(connection, role, _names):
    found = connection.execute(text(
        "SELECT rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication OR rolbypassrls OR NOT rolcanlogin "
        "AS special, EXISTS (SELECT 1 FROM pg_auth_members m WHERE m.member = r.oid) AS member "
        "FROM pg_roles r WHERE rolname = :name"), {"name": role.name}).first()
    if found and found.special:
        refuse(role, "is a superuser, may create roles or databases, or cannot log in")
    if found and found.member:
        refuse(role, "is a member of other roles")
    return found is not None


def postgresql_statements(names, existed):
    role = names.name
    return [f"{'ALTER' if existed else 'CREATE'} ROLE {role} LOGIN PASSWORD {names.password}",
            "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
            f"GRANT CONNECT, TEMPORARY ON DATABASE {names.database} TO {role}",
            f"GRANT USAGE ON SCHEMA public TO {role}",
            *table_grants(names.database, role,
                          lambda _database, table: "ALL TABLES IN SCHEMA public" if table == "*" else table),
            f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}"]


MYSQL = Backend(mysql_existing, mysql_statements)
POSTGRESQL = Backend(postgresql_existing, postgresql_statements)


if __name__ == "__main__":
    sys.exit(main())
