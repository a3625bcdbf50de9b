"""Start-up compiles the write path's statements (driver_sql.compile_all), so the first
requests and a fresh worker's first batch do not; statements made later compile later."""

from sqlalchemy import bindparam, select
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite

from careloop.adapters.db.driver_sql import DriverStatement, compile_all
from careloop.adapters.db.tables import cases


def test_compile_all_compiles_each_statement_once_per_dialect() -> None:
    import careloop.bootstrap  # noqa: F401 - imports every store, hence their statements

    dialect = PGDialect_psycopg()
    compile_all(dialect)
    assert compile_all(dialect) == 0  # nothing left to compile
    later = DriverStatement(select(cases.c.id).where(cases.c.id == bindparam("case_id")))
    assert compile_all(dialect) == 1
    assert "%(case_id)s" in later._plan_for(dialect).sql
    sqlite = SQLiteDialect_pysqlite()
    assert compile_all(sqlite) >= 1
    assert "?" in later._plan_for(sqlite).sql
