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

use crate::hooked::connection::HookedConnection;
use crate::hooked::manager::HookedTransactionManager;
use crate::options::retry::{with_retry, RetryPolicy, Retryable};

/// A transaction with options, opened through a [`HookedConnection`]; made
/// by `build_transaction()` (PostgreSQL, MySQL, SQLite),
/// `immediate_transaction`/`exclusive_transaction` (SQLite). `O` holds the
/// backend's options; `R` is [`NoRetry`] or a [`RetryPolicy`].
///
/// ```
/// use diesel::prelude::*;
/// use diesel_on_commit::{HookedConnection, RetryPolicy};
///
/// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
/// let id = conn
///     .build_transaction()
///     .immediate() // BEGIN IMMEDIATE: take the write lock now
///     .retry(RetryPolicy::attempts(5)) // retried after SQLITE_BUSY
///     .run(|conn| {
///         conn.on_commit(|| println!("fired once, by the attempt that committed"));
///         Ok::<_, diesel::result::Error>(42)
///     })?;
/// assert_eq!(id, 42);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// On PostgreSQL (`no_run`: no server here):
///
/// ```no_run
/// # #[cfg(feature = "postgres")] // built with PostgreSQL
/// # fn f(conn: &mut diesel_on_commit::HookedConnection<diesel::PgConnection>) -> diesel::QueryResult<()> {
/// conn.build_transaction()
///     .serializable()
///     .read_only()
///     .deferrable()
///     .run(|conn| {
///         conn.on_commit(|| println!("report ready"));
///         Ok(())
///     })
/// # }
/// ```
#[must_use = "a transaction builder does nothing until `run` is called"]
#[derive(Debug)]
pub struct TransactionBuilder<'a, C: Connection, O, R = NoRetry> {
    pub(crate) conn: &'a mut HookedConnection<C>,
    pub(crate) options: O,
    pub(crate) retry: R,
}

/// The builder runs its transaction once (see [`TransactionBuilder::retry`]).
///
/// ```
/// use diesel::prelude::*;
/// use diesel_on_commit::{HookedConnection, NoRetry, SqliteTransactionMode, TransactionBuilder};
///
/// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
/// let once: TransactionBuilder<'_, SqliteConnection, SqliteTransactionMode, NoRetry> =
///     conn.build_transaction();
/// once.run(|_conn| Ok::<_, diesel::result::Error>(()))?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRetry;

/// Options that render to the SQL that opens the transaction.
///
/// ```
/// use diesel::prelude::*;
/// use diesel_on_commit::{BeginStatement, SqliteTransactionMode};
///
/// let mut conn = SqliteConnection::establish(":memory:")?;
/// assert_eq!(SqliteTransactionMode::Immediate.begin_sql(&mut conn)?, "BEGIN IMMEDIATE");
/// assert_eq!(SqliteTransactionMode::Deferred.begin_sql(&mut conn)?, "BEGIN");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
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
    // Called by the backends' `build_transaction()`; none without a backend.
    #[cfg_attr(
        not(any(feature = "postgres", feature = "mysql", feature = "sqlite")),
        allow(dead_code)
    )]
    pub(crate) fn new(conn: &'a mut HookedConnection<C>, options: O) -> Self {
        Self {
            conn,
            options,
            retry: NoRetry,
        }
    }

    /// Retries the whole transaction after a serialization failure or a
    /// deadlock, as [`HookedConnection::transaction_with_retry`] does.
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use diesel_on_commit::{HookedConnection, RetryPolicy};
    /// use std::time::Duration;
    ///
    /// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
    /// let policy = RetryPolicy::attempts(10).deadline(Duration::from_secs(1));
    /// let mut attempts = 0;
    /// conn.build_transaction().immediate().retry(policy).run(|_conn| {
    ///     attempts += 1; // FnMut: called again for each attempt
    ///     Ok::<_, diesel::result::Error>(())
    /// })?;
    /// assert_eq!(attempts, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn retry(self, policy: RetryPolicy) -> TransactionBuilder<'a, C, O, RetryPolicy> {
        TransactionBuilder {
            conn: self.conn,
            options: self.options,
            retry: policy,
        }
    }

    /// Runs `f` in the transaction, with every hook rule of
    /// `HookedConnection::transaction`.
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use diesel_on_commit::HookedConnection;
    /// use std::sync::mpsc;
    ///
    /// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
    /// let (tx, rx) = mpsc::channel();
    /// let failed = conn.build_transaction().exclusive().run(|conn| {
    ///     conn.on_rollback(move || tx.send("rolled back"));
    ///     Err::<(), _>(diesel::result::Error::RollbackTransaction)
    /// });
    /// assert!(failed.is_err());
    /// assert_eq!(rx.try_recv(), Ok("rolled back"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
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
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use diesel_on_commit::{HookedConnection, RetryPolicy};
    ///
    /// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
    /// let n = conn.build_transaction().retry(RetryPolicy::default()).run(|conn| {
    ///     conn.on_commit(|| println!("committed"));
    ///     Ok::<_, Box<dyn std::error::Error + Send + Sync>>(1) // boxed errors are Retryable
    /// })?;
    /// assert_eq!(n, 1);
    /// # Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    /// ```
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
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres")] // built with PostgreSQL (MySQL has these methods too)
    /// # fn f(conn: &mut diesel_on_commit::HookedConnection<diesel::PgConnection>) -> diesel::QueryResult<()> {
    /// conn.build_transaction().read_only().run(|_conn| {
    ///     // SELECTs only; a write fails with "cannot execute .. in a read-only transaction"
    ///     Ok(())
    /// })
    /// # }
    /// ```
    pub fn read_only(mut self) -> Self {
        *self.options.__read_only() = Some(true);
        self
    }
    /// `READ WRITE`
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres")] // built with PostgreSQL (MySQL has these methods too)
    /// # fn f(conn: &mut diesel_on_commit::HookedConnection<diesel::PgConnection>) -> diesel::QueryResult<()> {
    /// conn.build_transaction().read_write().run(|conn| {
    ///     conn.on_commit(|| println!("written"));
    ///     Ok(())
    /// })
    /// # }
    /// ```
    pub fn read_write(mut self) -> Self {
        *self.options.__read_only() = Some(false);
        self
    }
    /// `READ COMMITTED`
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres")] // built with PostgreSQL (MySQL has these methods too)
    /// # fn f(conn: &mut diesel_on_commit::HookedConnection<diesel::PgConnection>) -> diesel::QueryResult<()> {
    /// conn.build_transaction().read_committed().run(|_conn| Ok(()))
    /// # }
    /// ```
    pub fn read_committed(self) -> Self {
        self.isolation(IsolationLevel::ReadCommitted)
    }
    /// `REPEATABLE READ`
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres")] // built with PostgreSQL (MySQL has these methods too)
    /// # fn f(conn: &mut diesel_on_commit::HookedConnection<diesel::PgConnection>) -> diesel::QueryResult<()> {
    /// conn.build_transaction().repeatable_read().run(|_conn| Ok(()))
    /// # }
    /// ```
    pub fn repeatable_read(self) -> Self {
        self.isolation(IsolationLevel::RepeatableRead)
    }
    /// `SERIALIZABLE`
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres")] // built with PostgreSQL (MySQL has these methods too)
    /// # fn f(conn: &mut diesel_on_commit::HookedConnection<diesel::PgConnection>) -> diesel::QueryResult<()> {
    /// use diesel_on_commit::RetryPolicy;
    ///
    /// conn.build_transaction()
    ///     .serializable()
    ///     .retry(RetryPolicy::default()) // serialization failures are retried
    ///     .run(|_conn| Ok(()))
    /// # }
    /// ```
    pub fn serializable(self) -> Self {
        self.isolation(IsolationLevel::Serializable)
    }
    /// The isolation level.
    ///
    /// ```no_run
    /// # #[cfg(feature = "postgres")] // built with PostgreSQL (MySQL has these methods too)
    /// # fn f(conn: &mut diesel_on_commit::HookedConnection<diesel::PgConnection>) -> diesel::QueryResult<()> {
    /// use diesel_on_commit::IsolationLevel;
    ///
    /// let level = IsolationLevel::RepeatableRead; // e.g. from configuration
    /// conn.build_transaction().isolation(level).run(|_conn| Ok(()))
    /// # }
    /// ```
    pub fn isolation(mut self, level: IsolationLevel) -> Self {
        *self.options.__isolation() = Some(level);
        self
    }
}

/// Isolation levels, for [`TransactionBuilder::isolation`] (PostgreSQL,
/// MySQL) and `#[atomic(isolation = ..)]`.
///
/// ```no_run
/// # #[cfg(feature = "postgres")] // built with PostgreSQL
/// # fn f(conn: &mut diesel_on_commit::HookedConnection<diesel::PgConnection>) -> diesel::QueryResult<()> {
/// use diesel_on_commit::IsolationLevel;
///
/// conn.build_transaction()
///     .isolation(IsolationLevel::Serializable)
///     .run(|conn| {
///         conn.on_commit(|| println!("committed under SERIALIZABLE"));
///         Ok(())
///     })
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsolationLevel {
    /// `READ COMMITTED`
    ReadCommitted,
    /// `REPEATABLE READ`
    RepeatableRead,
    /// `SERIALIZABLE`
    Serializable,
}
