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
#[must_use = "a transaction builder does nothing until `run` is called"]
#[derive(Debug)]
pub struct TransactionBuilder<'a, C: Connection, O, R = NoRetry> {
    pub(crate) conn: &'a mut HookedConnection<C>,
    pub(crate) options: O,
    pub(crate) retry: R,
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
