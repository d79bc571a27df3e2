//! What the outbox needs of each backend: its SQL dialect (quoting, the
//! database clock, the dedupe conflict clause, the bind-parameter limit)
//! and typed binds and reads, so the statements are written once, generic
//! over [`OutboxBackend`].

use std::borrow::Cow;

use diesel::backend::Backend;
use diesel::deserialize;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::result::QueryResult;
use diesel::row::NamedRow;
use diesel::sql_types::Untyped;
use diesel::RunQueryDsl;

/// A Diesel backend the outbox can write to: PostgreSQL, MySQL/MariaDB and
/// SQLite (each with its feature). Sealed: the SQL differs per backend.
///
/// ```
/// fn needs_an_outbox_backend<B: diesel_on_commit::outbox::OutboxBackend>() {}
/// needs_an_outbox_backend::<diesel::sqlite::Sqlite>();
/// ```
pub trait OutboxBackend: Backend + sealed::Sealed + 'static {}

pub(crate) mod sealed {
    use super::*;

    /// The SQL dialects the outbox speaks.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Dialect {
        Postgres,
        Mysql,
        Sqlite,
    }

    /// The backend-specific part of [`OutboxBackend`](super::OutboxBackend).
    pub trait Sealed: Backend {
        const DIALECT: Dialect;
        fn bind_text<'b>(out: &mut AstPass<'_, 'b, Self>, value: &'b str) -> QueryResult<()>;
        fn bind_opt_text<'b>(
            out: &mut AstPass<'_, 'b, Self>,
            value: &'b Option<String>,
        ) -> QueryResult<()>;
        fn bind_i64<'b>(out: &mut AstPass<'_, 'b, Self>, value: &'b i64) -> QueryResult<()>;
        fn get_text<'a>(row: &impl NamedRow<'a, Self>, name: &str) -> deserialize::Result<String>;
        fn get_opt_text<'a>(
            row: &impl NamedRow<'a, Self>,
            name: &str,
        ) -> deserialize::Result<Option<String>>;
        fn get_i64<'a>(row: &impl NamedRow<'a, Self>, name: &str) -> deserialize::Result<i64>;
        fn get_opt_i64<'a>(
            row: &impl NamedRow<'a, Self>,
            name: &str,
        ) -> deserialize::Result<Option<i64>>;
        fn get_i32<'a>(row: &impl NamedRow<'a, Self>, name: &str) -> deserialize::Result<i32>;
    }
}

use sealed::{Dialect, Sealed};

macro_rules! outbox_backend {
    ($feature:literal, $backend:ty, $dialect:expr) => {
        #[cfg(feature = $feature)]
        impl Sealed for $backend {
            const DIALECT: Dialect = $dialect;
            fn bind_text<'b>(out: &mut AstPass<'_, 'b, Self>, value: &'b str) -> QueryResult<()> {
                out.push_bind_param::<diesel::sql_types::Text, str>(value)
            }
            fn bind_opt_text<'b>(
                out: &mut AstPass<'_, 'b, Self>,
                value: &'b Option<String>,
            ) -> QueryResult<()> {
                out.push_bind_param::<diesel::sql_types::Nullable<diesel::sql_types::Text>, _>(
                    value,
                )
            }
            fn bind_i64<'b>(out: &mut AstPass<'_, 'b, Self>, value: &'b i64) -> QueryResult<()> {
                out.push_bind_param::<diesel::sql_types::BigInt, i64>(value)
            }
            fn get_text<'a>(
                row: &impl NamedRow<'a, Self>,
                name: &str,
            ) -> deserialize::Result<String> {
                NamedRow::<'a, Self>::get::<diesel::sql_types::Text, String>(row, name)
            }
            fn get_opt_text<'a>(
                row: &impl NamedRow<'a, Self>,
                name: &str,
            ) -> deserialize::Result<Option<String>> {
                NamedRow::<'a, Self>::get::<
                    diesel::sql_types::Nullable<diesel::sql_types::Text>,
                    Option<String>,
                >(row, name)
            }
            fn get_i64<'a>(row: &impl NamedRow<'a, Self>, name: &str) -> deserialize::Result<i64> {
                NamedRow::<'a, Self>::get::<diesel::sql_types::BigInt, i64>(row, name)
            }
            fn get_opt_i64<'a>(
                row: &impl NamedRow<'a, Self>,
                name: &str,
            ) -> deserialize::Result<Option<i64>> {
                NamedRow::<'a, Self>::get::<
                    diesel::sql_types::Nullable<diesel::sql_types::BigInt>,
                    Option<i64>,
                >(row, name)
            }
            fn get_i32<'a>(row: &impl NamedRow<'a, Self>, name: &str) -> deserialize::Result<i32> {
                NamedRow::<'a, Self>::get::<diesel::sql_types::Integer, i32>(row, name)
            }
        }
        #[cfg(feature = $feature)]
        impl OutboxBackend for $backend {}
    };
}

outbox_backend!("postgres", diesel::pg::Pg, Dialect::Postgres);
outbox_backend!("mysql", diesel::mysql::Mysql, Dialect::Mysql);
outbox_backend!("sqlite", diesel::sqlite::Sqlite, Dialect::Sqlite);

impl Dialect {
    /// Bind parameters one statement may hold: PostgreSQL's and MySQL's
    /// protocols count them in 16 bits; SQLite's default
    /// `SQLITE_MAX_VARIABLE_NUMBER` is 32766 (since 3.32).
    pub(crate) const fn max_binds(self) -> usize {
        match self {
            Dialect::Postgres | Dialect::Mysql => 65_535,
            Dialect::Sqlite => 32_766,
        }
    }

    /// `ident`, quoted. Callers pass validated identifiers only
    /// (`[A-Za-z_][A-Za-z0-9_]*`), so no quote character can occur in them.
    pub(crate) fn quote(self, ident: &str) -> String {
        debug_assert!(ident
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        match self {
            Dialect::Mysql => format!("`{ident}`"),
            Dialect::Postgres | Dialect::Sqlite => format!("\"{ident}\""),
        }
    }

    /// The database clock, UTC: a `timestamptz` (PostgreSQL), a
    /// `DATETIME(6)` (MySQL), milliseconds since the Unix epoch (SQLite).
    pub(crate) const fn now(self) -> &'static str {
        match self {
            Dialect::Postgres => "clock_timestamp()",
            Dialect::Mysql => "UTC_TIMESTAMP(6)",
            Dialect::Sqlite => {
                "CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)"
            }
        }
    }

    /// `now() + <a bind of milliseconds>`, as the text before and after the bind.
    pub(crate) const fn now_plus_ms(self) -> (&'static str, &'static str) {
        match self {
            Dialect::Postgres => (
                "(clock_timestamp() + CAST(",
                " AS BIGINT) * INTERVAL '1 millisecond')",
            ),
            Dialect::Mysql => ("TIMESTAMPADD(MICROSECOND, 1000 * ", ", UTC_TIMESTAMP(6))"),
            Dialect::Sqlite => (
                "(CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER) + ",
                ")",
            ),
        }
    }

    /// An id bound as text, as the column's type: before and after the bind.
    pub(crate) const fn id_bind(self) -> (&'static str, &'static str) {
        match self {
            Dialect::Postgres => ("CAST(", " AS uuid)"),
            Dialect::Mysql | Dialect::Sqlite => ("", ""),
        }
    }

    /// The `id` column as text.
    pub(crate) const fn id_text(self) -> &'static str {
        match self {
            Dialect::Postgres => "CAST(id AS text)",
            Dialect::Mysql | Dialect::Sqlite => "id",
        }
    }

    /// `expr` as a BIGINT.
    pub(crate) fn bigint(self, expr: &str) -> String {
        match self {
            Dialect::Mysql => format!("CAST({expr} AS SIGNED)"),
            Dialect::Postgres | Dialect::Sqlite => format!("CAST({expr} AS BIGINT)"),
        }
    }

    /// Milliseconds from the time `expr` to now, as a BIGINT (NULL for NULL).
    pub(crate) fn age_ms(self, expr: &str) -> String {
        match self {
            Dialect::Postgres => {
                format!("CAST(EXTRACT(EPOCH FROM (clock_timestamp() - {expr})) * 1000 AS BIGINT)")
            }
            Dialect::Mysql => {
                format!(
                    "CAST(TIMESTAMPDIFF(MICROSECOND, {expr}, UTC_TIMESTAMP(6)) DIV 1000 AS SIGNED)"
                )
            }
            Dialect::Sqlite => format!("({} - {expr})", self.now()),
        }
    }

    /// What the flush's INSERT ends with, so that a row whose `(kind, key)`
    /// is already pending is skipped (O6): a conflict on the partial unique
    /// index over pending rows (PostgreSQL, SQLite); on MySQL/MariaDB, which
    /// have no partial index, a no-op update on a duplicate of the unique
    /// index over the generated `pending_key` column. Never `INSERT IGNORE`
    /// / `OR IGNORE`, which turn other errors into warnings or skips.
    pub(crate) const fn on_conflict(self) -> &'static str {
        match self {
            Dialect::Postgres | Dialect::Sqlite => {
                " ON CONFLICT (kind, dedupe_key) WHERE state = 'pending' AND dedupe_key IS NOT NULL DO NOTHING"
            }
            Dialect::Mysql => " ON DUPLICATE KEY UPDATE id = id",
        }
    }

    /// Whether DDL runs inside a transaction (not on MySQL, where each
    /// statement commits implicitly).
    pub(crate) const fn transactional_ddl(self) -> bool {
        !matches!(self, Dialect::Mysql)
    }
}

/// One piece of a statement: SQL text or a bind.
pub(crate) enum Part<'a> {
    Sql(Cow<'a, str>),
    Text(Cow<'a, str>),
    OptText(Cow<'a, Option<String>>),
    /// An outbox id, as the `id` column's type.
    Id(Cow<'a, str>),
    /// `now() + <milliseconds>`.
    NowPlusMs(i64),
}

/// A statement built at run time with typed binds, for any
/// [`OutboxBackend`]; loads rows by name (`QueryableByName`).
pub(crate) struct Sql<'a> {
    parts: Vec<Part<'a>>,
    cache: bool,
}

impl<'a> Sql<'a> {
    pub(crate) fn new() -> Self {
        Self {
            parts: Vec::new(),
            cache: true,
        }
    }

    /// A statement too big or too varied to keep in the prepared-statement
    /// cache (the flush's multi-row INSERTs).
    pub(crate) fn uncached(mut self) -> Self {
        self.cache = false;
        self
    }

    pub(crate) fn sql(mut self, sql: impl Into<Cow<'a, str>>) -> Self {
        self.parts.push(Part::Sql(sql.into()));
        self
    }

    pub(crate) fn push(&mut self, part: Part<'a>) {
        self.parts.push(part);
    }

    pub(crate) fn text(mut self, value: impl Into<Cow<'a, str>>) -> Self {
        self.parts.push(Part::Text(value.into()));
        self
    }

    pub(crate) fn id(mut self, id: impl Into<Cow<'a, str>>) -> Self {
        self.parts.push(Part::Id(id.into()));
        self
    }

    pub(crate) fn now_plus_ms(mut self, ms: i64) -> Self {
        self.parts.push(Part::NowPlusMs(ms));
        self
    }
}

impl<DB: OutboxBackend> QueryFragment<DB> for Sql<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
        if !self.cache {
            out.unsafe_to_cache_prepared();
        }
        let dialect = DB::DIALECT;
        for part in &self.parts {
            match part {
                Part::Sql(sql) => out.push_sql(sql),
                Part::Text(value) => DB::bind_text(&mut out, value)?,
                Part::OptText(value) => DB::bind_opt_text(&mut out, value)?,
                Part::Id(id) => {
                    let (before, after) = dialect.id_bind();
                    out.push_sql(before);
                    DB::bind_text(&mut out, id)?;
                    out.push_sql(after);
                }
                Part::NowPlusMs(ms) => {
                    let (before, after) = dialect.now_plus_ms();
                    out.push_sql(before);
                    DB::bind_i64(&mut out, ms)?;
                    out.push_sql(after);
                }
            }
        }
        Ok(())
    }
}

impl QueryId for Sql<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Sql<'_> {
    type SqlType = Untyped;
}

impl<Conn> RunQueryDsl<Conn> for Sql<'_> {}
