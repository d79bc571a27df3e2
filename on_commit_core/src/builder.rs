//! Transaction options through the wrapper: PostgreSQL's isolation level,
//! read-only and deferrable modes, MySQL's isolation level, read mode and
//! consistent snapshot, SQLite's `BEGIN IMMEDIATE`/`EXCLUSIVE`, each with an
//! optional retry policy. Diesel's own builders demand
//! `TransactionManager = AnsiTransactionManager` and so cannot run through a
//! wrapper; these open the level through the wrapper's manager, so every
//! hook rule holds.
//!
//! A transaction with options must be the outermost one (as in Diesel): a
//! database sets isolation and read mode for a whole transaction, so inside
//! an open transaction (a test transaction included) `run` returns
//! [`Error::AlreadyInTransaction`].

use diesel::connection::{AnsiTransactionManager, Connection};
use diesel::result::{Error, QueryResult};

use crate::retry::{with_retry, RetryPolicy, Retryable};
use crate::transaction::HookedTransactionManager;
use crate::HookedConnection;

/// A transaction with options, opened through a [`HookedConnection`]; made
/// by `build_transaction()` (PostgreSQL, MySQL, SQLite),
/// `immediate_transaction`/`exclusive_transaction` (SQLite). `O` holds the
/// backend's options; `R` is [`NoRetry`] or a [`RetryPolicy`].
#[must_use = "a transaction builder does nothing until `run` is called"]
#[derive(Debug)]
pub struct TransactionBuilder<'a, C: Connection, O, R = NoRetry> {
    conn: &'a mut HookedConnection<C>,
    options: O,
    retry: R,
}

/// The builder runs its transaction once (see [`TransactionBuilder::retry`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRetry;

/// Options that render to the SQL that opens the transaction.
pub trait BeginStatement<C> {
    /// The statement(s) that begin the transaction, e.g.
    /// `BEGIN TRANSACTION ISOLATION LEVEL SERIALIZABLE`.
    fn begin_sql(&self, conn: &mut C) -> QueryResult<String>;
}

impl<'a, C, O> TransactionBuilder<'a, C, O, NoRetry>
where
    C: Connection<TransactionManager = AnsiTransactionManager>,
    O: BeginStatement<C>,
{
    pub(crate) fn new(conn: &'a mut HookedConnection<C>, options: O) -> Self {
        Self {
            conn,
            options,
            retry: NoRetry,
        }
    }

    /// Retries the whole transaction after a serialization failure or a
    /// deadlock, as [`HookedConnection::transaction_with_retry`] does.
    pub fn retry(self, policy: RetryPolicy) -> TransactionBuilder<'a, C, O, RetryPolicy> {
        TransactionBuilder {
            conn: self.conn,
            options: self.options,
            retry: policy,
        }
    }

    /// Runs `f` in the transaction, with every hook rule of
    /// `HookedConnection::transaction`.
    pub fn run<T, E, F>(self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut HookedConnection<C>) -> Result<T, E>,
        E: From<Error>,
    {
        run_once(self.conn, &self.options, f)
    }
}

impl<C, O> TransactionBuilder<'_, C, O, RetryPolicy>
where
    C: Connection<TransactionManager = AnsiTransactionManager>,
    O: BeginStatement<C>,
{
    /// Runs `f` in the transaction, retrying after a serialization failure
    /// or deadlock; only the attempt that commits fires its hooks.
    pub fn run<T, E, F>(self, mut f: F) -> Result<T, E>
    where
        F: FnMut(&mut HookedConnection<C>) -> Result<T, E>,
        E: From<Error> + Retryable + std::fmt::Display,
    {
        let options = &self.options;
        with_retry(self.conn, &self.retry, |conn| {
            run_once(conn, options, &mut f)
        })
    }
}

fn run_once<C, O, T, E, F>(conn: &mut HookedConnection<C>, options: &O, f: F) -> Result<T, E>
where
    C: Connection<TransactionManager = AnsiTransactionManager>,
    O: BeginStatement<C>,
    F: FnOnce(&mut HookedConnection<C>) -> Result<T, E>,
    E: From<Error>,
{
    let sql = options.begin_sql(&mut conn.inner)?;
    HookedTransactionManager::run(
        conn,
        |conn| {
            HookedTransactionManager::begin_with(conn, |inner| {
                AnsiTransactionManager::begin_transaction_sql(inner, &sql)
            })
        },
        f,
    )
}

/// Options PostgreSQL and MySQL share: isolation level and read mode.
#[doc(hidden)]
pub trait IsolationAndReadMode {
    /// The isolation level to set.
    fn __isolation(&mut self) -> &mut Option<IsolationLevel>;
    /// `Some(true)`: read only; `Some(false)`: read write.
    fn __read_only(&mut self) -> &mut Option<bool>;
}

impl<C: Connection, O: IsolationAndReadMode, R> TransactionBuilder<'_, C, O, R> {
    /// `READ ONLY`
    pub fn read_only(mut self) -> Self {
        *self.options.__read_only() = Some(true);
        self
    }
    /// `READ WRITE`
    pub fn read_write(mut self) -> Self {
        *self.options.__read_only() = Some(false);
        self
    }
    /// `READ COMMITTED`
    pub fn read_committed(self) -> Self {
        self.isolation(IsolationLevel::ReadCommitted)
    }
    /// `REPEATABLE READ`
    pub fn repeatable_read(self) -> Self {
        self.isolation(IsolationLevel::RepeatableRead)
    }
    /// `SERIALIZABLE`
    pub fn serializable(self) -> Self {
        self.isolation(IsolationLevel::Serializable)
    }
    /// The isolation level.
    pub fn isolation(mut self, level: IsolationLevel) -> Self {
        *self.options.__isolation() = Some(level);
        self
    }
}

/// Isolation levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsolationLevel {
    /// `READ COMMITTED`
    ReadCommitted,
    /// `REPEATABLE READ`
    RepeatableRead,
    /// `SERIALIZABLE`
    Serializable,
}

#[cfg(feature = "postgres")]
mod pg {
    use diesel::pg::{Pg, PgConnection, PgQueryBuilder};
    use diesel::query_builder::{QueryBuilder, QueryFragment};
    use diesel::result::QueryResult;

    use super::{BeginStatement, IsolationAndReadMode, IsolationLevel, TransactionBuilder};
    use crate::HookedConnection;

    /// PostgreSQL's transaction options; rendered by Diesel's own
    /// `TransactionBuilder`.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct PgTransactionOptions {
        isolation: Option<IsolationLevel>,
        read_only: Option<bool>,
        deferrable: Option<bool>,
    }

    impl BeginStatement<PgConnection> for PgTransactionOptions {
        fn begin_sql(&self, conn: &mut PgConnection) -> QueryResult<String> {
            let mut builder = conn.build_transaction();
            builder = match self.isolation {
                Some(IsolationLevel::ReadCommitted) => builder.read_committed(),
                Some(IsolationLevel::RepeatableRead) => builder.repeatable_read(),
                Some(IsolationLevel::Serializable) => builder.serializable(),
                None => builder,
            };
            builder = match self.read_only {
                Some(true) => builder.read_only(),
                Some(false) => builder.read_write(),
                None => builder,
            };
            builder = match self.deferrable {
                Some(true) => builder.deferrable(),
                Some(false) => builder.not_deferrable(),
                None => builder,
            };
            let mut sql = PgQueryBuilder::default();
            builder.to_sql(&mut sql, &Pg)?;
            Ok(sql.finish())
        }
    }

    impl HookedConnection<PgConnection> {
        /// A transaction with PostgreSQL options, Diesel's
        /// `PgConnection::build_transaction` through the wrapper:
        ///
        /// ```no_run
        /// # use diesel::prelude::*;
        /// # use diesel_on_commit::{HookedConnection, RetryPolicy};
        /// # fn f(conn: &mut HookedConnection<PgConnection>) -> QueryResult<()> {
        /// conn.build_transaction()
        ///     .serializable()
        ///     .retry(RetryPolicy::attempts(5))
        ///     .run(|conn| {
        ///         conn.on_commit(|| println!("committed, once"));
        ///         Ok(())
        ///     })
        /// # }
        /// ```
        pub fn build_transaction(
            &mut self,
        ) -> TransactionBuilder<'_, PgConnection, PgTransactionOptions> {
            TransactionBuilder::new(self, PgTransactionOptions::default())
        }
    }

    impl IsolationAndReadMode for PgTransactionOptions {
        fn __isolation(&mut self) -> &mut Option<IsolationLevel> {
            &mut self.isolation
        }
        fn __read_only(&mut self) -> &mut Option<bool> {
            &mut self.read_only
        }
    }

    impl<R> TransactionBuilder<'_, PgConnection, PgTransactionOptions, R> {
        /// `DEFERRABLE` (with `SERIALIZABLE READ ONLY`: waits for a safe snapshot)
        pub fn deferrable(mut self) -> Self {
            self.options.deferrable = Some(true);
            self
        }
        /// `NOT DEFERRABLE`
        pub fn not_deferrable(mut self) -> Self {
            self.options.deferrable = Some(false);
            self
        }
    }
}

#[cfg(feature = "postgres")]
pub use pg::PgTransactionOptions;

#[cfg(feature = "mysql")]
mod mysql {
    use diesel::mysql::MysqlConnection;
    use diesel::result::QueryResult;

    use super::{BeginStatement, IsolationAndReadMode, IsolationLevel, TransactionBuilder};
    use crate::HookedConnection;

    /// MySQL's transaction options. Diesel has no builder for MySQL; the
    /// isolation level is set for the next transaction only
    /// (`SET TRANSACTION ISOLATION LEVEL ..`) right before
    /// `START TRANSACTION`.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct MysqlTransactionOptions {
        isolation: Option<IsolationLevel>,
        read_only: Option<bool>,
        consistent_snapshot: bool,
    }

    impl BeginStatement<MysqlConnection> for MysqlTransactionOptions {
        fn begin_sql(&self, _conn: &mut MysqlConnection) -> QueryResult<String> {
            let mut sql = String::new();
            if let Some(level) = self.isolation {
                sql.push_str(match level {
                    IsolationLevel::ReadCommitted => {
                        "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; "
                    }
                    IsolationLevel::RepeatableRead => {
                        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; "
                    }
                    IsolationLevel::Serializable => {
                        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; "
                    }
                });
            }
            sql.push_str("START TRANSACTION");
            let mut sep = " ";
            if self.consistent_snapshot {
                sql.push_str(" WITH CONSISTENT SNAPSHOT");
                sep = ", ";
            }
            match self.read_only {
                Some(true) => {
                    sql.push_str(sep);
                    sql.push_str("READ ONLY");
                }
                Some(false) => {
                    sql.push_str(sep);
                    sql.push_str("READ WRITE");
                }
                None => {}
            }
            Ok(sql)
        }
    }

    impl HookedConnection<MysqlConnection> {
        /// A transaction with MySQL options through the wrapper.
        pub fn build_transaction(
            &mut self,
        ) -> TransactionBuilder<'_, MysqlConnection, MysqlTransactionOptions> {
            TransactionBuilder::new(self, MysqlTransactionOptions::default())
        }
    }

    impl IsolationAndReadMode for MysqlTransactionOptions {
        fn __isolation(&mut self) -> &mut Option<IsolationLevel> {
            &mut self.isolation
        }
        fn __read_only(&mut self) -> &mut Option<bool> {
            &mut self.read_only
        }
    }

    impl<R> TransactionBuilder<'_, MysqlConnection, MysqlTransactionOptions, R> {
        /// `WITH CONSISTENT SNAPSHOT`
        pub fn with_consistent_snapshot(mut self) -> Self {
            self.options.consistent_snapshot = true;
            self
        }
    }
}

#[cfg(feature = "mysql")]
pub use mysql::MysqlTransactionOptions;

#[cfg(feature = "sqlite")]
mod sqlite {
    use diesel::result::{Error, QueryResult};
    use diesel::sqlite::SqliteConnection;

    use super::{BeginStatement, TransactionBuilder};
    use crate::HookedConnection;

    /// SQLite's locking mode for `BEGIN`.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub enum SqliteTransactionMode {
        /// `BEGIN` (deferred: locks on first read or write)
        #[default]
        Deferred,
        /// `BEGIN IMMEDIATE` (takes the write lock now)
        Immediate,
        /// `BEGIN EXCLUSIVE`
        Exclusive,
    }

    impl BeginStatement<SqliteConnection> for SqliteTransactionMode {
        fn begin_sql(&self, _conn: &mut SqliteConnection) -> QueryResult<String> {
            Ok(match self {
                SqliteTransactionMode::Deferred => "BEGIN",
                SqliteTransactionMode::Immediate => "BEGIN IMMEDIATE",
                SqliteTransactionMode::Exclusive => "BEGIN EXCLUSIVE",
            }
            .to_owned())
        }
    }

    impl HookedConnection<SqliteConnection> {
        /// A transaction with a SQLite locking mode (and optionally a retry
        /// policy for `SQLITE_BUSY`).
        pub fn build_transaction(
            &mut self,
        ) -> TransactionBuilder<'_, SqliteConnection, SqliteTransactionMode> {
            TransactionBuilder::new(self, SqliteTransactionMode::Deferred)
        }

        /// Diesel's `SqliteConnection::immediate_transaction` through the
        /// wrapper: `BEGIN IMMEDIATE`, with every hook rule.
        pub fn immediate_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
        where
            F: FnOnce(&mut Self) -> Result<T, E>,
            E: From<Error>,
        {
            self.build_transaction().immediate().run(f)
        }

        /// Diesel's `SqliteConnection::exclusive_transaction` through the
        /// wrapper: `BEGIN EXCLUSIVE`, with every hook rule.
        pub fn exclusive_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
        where
            F: FnOnce(&mut Self) -> Result<T, E>,
            E: From<Error>,
        {
            self.build_transaction().exclusive().run(f)
        }
    }

    impl<R> TransactionBuilder<'_, SqliteConnection, SqliteTransactionMode, R> {
        /// `BEGIN IMMEDIATE`
        pub fn immediate(mut self) -> Self {
            self.options = SqliteTransactionMode::Immediate;
            self
        }
        /// `BEGIN EXCLUSIVE`
        pub fn exclusive(mut self) -> Self {
            self.options = SqliteTransactionMode::Exclusive;
            self
        }
    }
}

#[cfg(feature = "sqlite")]
pub use sqlite::SqliteTransactionMode;
