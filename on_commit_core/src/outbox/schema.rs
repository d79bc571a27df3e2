//! The outbox table's schema and its embedded migrations (O9): the SQL
//! files under `migrations/outbox/<backend>/` are the source, for users of
//! `diesel migration` to copy; [`Outbox::run_migrations`] runs the same
//! text with the table's name substituted, and records the version in the
//! `<table>_meta` table.

use diesel::connection::{Connection, LoadConnection};
use diesel::deserialize::{self, QueryableByName};
use diesel::result::{Error, QueryResult};
use diesel::row::NamedRow;
use diesel::RunQueryDsl;

use crate::outbox::backend::sealed::{Dialect, Sealed};
use crate::outbox::backend::{OutboxBackend, Sql};
use crate::outbox::OutboxTable;

/// The outbox: its schema today; its workers (`Outbox::builder`) in a later
/// release.
///
/// ```
/// use diesel::prelude::*;
/// use diesel_on_commit::outbox::{Outbox, OutboxTable};
///
/// let mut conn = SqliteConnection::establish(":memory:")?;
/// Outbox::run_migrations(&mut conn)?;           // creates diesel_on_commit_outbox
/// Outbox::run_migrations(&mut conn)?;           // already there: does nothing
/// assert_eq!(Outbox::schema_version(&mut conn, &OutboxTable::default())?, Some(Outbox::SCHEMA_VERSION));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Outbox {
    _private: (),
}

const PG_V1: &str = include_str!(
    "../../migrations/outbox/postgres/2026-12-01-000000_diesel_on_commit_outbox/up.sql"
);
const MYSQL_V1: &str =
    include_str!("../../migrations/outbox/mysql/2026-12-01-000000_diesel_on_commit_outbox/up.sql");
const SQLITE_V1: &str =
    include_str!("../../migrations/outbox/sqlite/2026-12-01-000000_diesel_on_commit_outbox/up.sql");

/// The default table's name, as the SQL files spell it.
const FILE_NAME: &str = "diesel_on_commit_outbox";

impl Outbox {
    /// The schema version this release writes and reads: 1.
    pub const SCHEMA_VERSION: i32 = 1;

    /// Creates the default outbox table (`diesel_on_commit_outbox`), its
    /// indexes and its `_meta` table with the version row, unless they
    /// exist. Call it outside a transaction. On PostgreSQL and SQLite it
    /// runs in one transaction; on MySQL each DDL statement commits by
    /// itself.
    pub fn run_migrations<Conn>(conn: &mut Conn) -> QueryResult<()>
    where
        Conn: Connection + LoadConnection,
        Conn::Backend: OutboxBackend,
    {
        Self::run_migrations_in(conn, &OutboxTable::default())
    }

    /// [`run_migrations`](Self::run_migrations) for the table `table`.
    /// A table of a newer schema version is an error.
    pub fn run_migrations_in<Conn>(conn: &mut Conn, table: &OutboxTable) -> QueryResult<()>
    where
        Conn: Connection + LoadConnection,
        Conn::Backend: OutboxBackend,
    {
        let dialect = <Conn::Backend as Sealed>::DIALECT;
        match Self::schema_version(conn, table)? {
            None => {
                let sql = migration_sql(dialect, table);
                if dialect.transactional_ddl() {
                    conn.transaction(|conn| conn.batch_execute(&sql))
                } else {
                    conn.batch_execute(&sql)
                }
            }
            Some(version) if version == Self::SCHEMA_VERSION => Ok(()),
            Some(version) => Err(Error::QueryBuilderError(
                format!(
                    "the outbox table {table} is at schema version {version}, newer than this \
                     release of diesel-on-commit knows ({})",
                    Self::SCHEMA_VERSION
                )
                .into(),
            )),
        }
    }

    /// The schema version recorded for `table`, or `None` when its `_meta`
    /// table does not exist (the migrations have not run).
    pub fn schema_version<Conn>(conn: &mut Conn, table: &OutboxTable) -> QueryResult<Option<i32>>
    where
        Conn: Connection + LoadConnection,
        Conn::Backend: OutboxBackend,
    {
        let dialect = <Conn::Backend as Sealed>::DIALECT;
        let meta = format!("{}_meta", table.name());
        let (catalog, schema_column, name_column, current) = match dialect {
            Dialect::Postgres => (
                "pg_catalog.pg_tables".to_owned(),
                "schemaname",
                "tablename",
                "current_schema()",
            ),
            Dialect::Mysql => (
                "information_schema.tables".to_owned(),
                "table_schema",
                "table_name",
                "DATABASE()",
            ),
            Dialect::Sqlite => (
                format!(
                    "{}.sqlite_master",
                    dialect.quote(table.schema().unwrap_or("main"))
                ),
                "type",
                "name",
                "'table'",
            ),
        };
        let exists = Sql::new().sql(format!(
            "SELECT COUNT(*) AS n FROM {catalog} WHERE {schema_column} = "
        ));
        let exists = match table.schema() {
            Some(schema) if dialect != Dialect::Sqlite => exists.text(schema.to_owned()),
            _ => exists.sql(current),
        };
        let exists = exists.sql(format!(" AND {name_column} = ")).text(meta);
        let n = exists.load::<Count>(conn)?.first().map_or(0, |c| c.n);
        if n == 0 {
            return Ok(None);
        }
        let version = Sql::new()
            .sql(format!(
                "SELECT {} AS v FROM {}",
                dialect.bigint("MAX(version)"),
                table.qualified_with(dialect, "_meta")
            ))
            .load::<Version>(conn)?;
        Ok(version.first().and_then(|v| v.v).map(|v| v as i32))
    }

    /// The SQL of the migration to schema version 1 for `table`, as
    /// [`run_migrations_in`](Self::run_migrations_in) runs it: the file
    /// under `migrations/outbox/<backend>/` with the name substituted.
    pub fn migration_sql<B: OutboxBackend>(table: &OutboxTable) -> String {
        migration_sql(B::DIALECT, table)
    }
}

fn migration_sql(dialect: Dialect, table: &OutboxTable) -> String {
    let file = match dialect {
        Dialect::Postgres => PG_V1,
        Dialect::Mysql => MYSQL_V1,
        Dialect::Sqlite => SQLITE_V1,
    };
    let q = |suffix: &str| dialect.quote(&format!("{FILE_NAME}{suffix}"));
    let mut sql = file
        .replace(&q("_meta"), &table.qualified_with(dialect, "_meta"))
        .replace(&q("_dedupe"), &table.index(dialect, "_dedupe"))
        .replace(&q("_claim"), &table.index(dialect, "_claim"));
    if dialect == Dialect::Sqlite {
        // SQLite's CREATE INDEX names the schema on the index, not the table.
        sql = sql.replace(
            &format!("ON {}", q("")),
            &format!("ON {}", dialect.quote(table.name())),
        );
    }
    sql.replace(&q(""), &table.qualified(dialect))
}

struct Count {
    n: i64,
}

impl<DB: OutboxBackend> QueryableByName<DB> for Count {
    fn build<'a>(row: &impl NamedRow<'a, DB>) -> deserialize::Result<Self> {
        Ok(Self {
            n: DB::get_i64(row, "n")?,
        })
    }
}

struct Version {
    v: Option<i64>,
}

impl<DB: OutboxBackend> QueryableByName<DB> for Version {
    fn build<'a>(row: &impl NamedRow<'a, DB>) -> deserialize::Result<Self> {
        Ok(Self {
            v: DB::get_opt_i64(row, "v")?,
        })
    }
}
