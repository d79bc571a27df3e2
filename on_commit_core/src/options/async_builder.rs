//! The async wrapper's transaction options and retries: the twin of
//! `builder.rs` and `retry.rs` for [`AsyncHookedConnection`]. Each backend's
//! `build_transaction()` (and SQLite's `immediate_transaction`,
//! `exclusive_transaction`) is in `backends/`, beside the sync one.
//!
//! The level is opened through the wrapper's guarded path (the same as
//! `conn.transaction(..)`: the panic guard, and the cancellation guard of
//! rules C1–C3), only with a `BEGIN` that carries the options. As on the
//! sync side, a transaction with options must be the outermost one: inside
//! an open transaction `run` returns [`Error::AlreadyInTransaction`].
//!
//! Retries (feature `tokio`) take their decisions from `retry.rs`'s
//! `RetryState`, as the sync loop does; only the backoff differs: it is
//! awaited with `tokio::time::sleep`, never a blocking sleep.

use std::future::Future;

use diesel::result::{Error, QueryResult};
use diesel_async::AsyncConnection;

use crate::async_hooked::connection::AsyncHookedConnection;
use crate::async_hooked::manager::{AsyncHookedTransactionManager, BeginLevel};
use crate::options::builder::{BeginStatement, IsolationAndReadMode, IsolationLevel, NoRetry};
#[cfg(feature = "tokio")]
use crate::options::retry::{RetryPolicy, Retryable};
use crate::transaction_hooks::AsyncHookFn;

/// A transaction with options, opened through an [`AsyncHookedConnection`];
/// made by `build_transaction()` (PostgreSQL, MySQL, SQLite),
/// `immediate_transaction`/`exclusive_transaction` (SQLite). `O` holds the
/// backend's options; `R` is [`NoRetry`] or a
/// [`RetryPolicy`](crate::RetryPolicy) (feature `tokio`).
#[must_use = "a transaction builder does nothing until `run` is called and awaited"]
#[derive(Debug)]
pub struct AsyncTransactionBuilder<'a, C: AsyncConnection, O, R = NoRetry> {
    pub(crate) conn: &'a mut AsyncHookedConnection<C>,
    pub(crate) options: O,
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) retry: R,
}

/// A diesel-async connection that can begin a transaction with a statement
/// of its own (`BEGIN TRANSACTION ISOLATION LEVEL ..`, `BEGIN IMMEDIATE`):
/// `AsyncPgConnection`, `AsyncMysqlConnection`,
/// `SyncConnectionWrapper<SqliteConnection>`.
#[doc(hidden)]
pub trait AsyncBeginSql: AsyncConnection {
    /// Begins the outermost transaction with `sql`, as diesel-async's
    /// `AnsiTransactionManager::begin_transaction_sql` (an open transaction
    /// is [`Error::AlreadyInTransaction`]).
    fn __begin_transaction_sql(
        &mut self,
        sql: &str,
    ) -> impl Future<Output = QueryResult<()>> + Send;
}

/// Opens the level with the options' statement.
struct SqlBegin(String);

impl<C: AsyncBeginSql> BeginLevel<C> for SqlBegin {
    fn begin(&self, inner: &mut C) -> impl Future<Output = QueryResult<()>> + Send {
        inner.__begin_transaction_sql(&self.0)
    }
}

impl<'a, C: AsyncConnection, O> AsyncTransactionBuilder<'a, C, O, NoRetry> {
    // Called by the backends' `build_transaction()`; none without a backend.
    #[cfg_attr(
        not(any(feature = "postgres", feature = "mysql", feature = "sqlite")),
        allow(dead_code)
    )]
    pub(crate) fn new(conn: &'a mut AsyncHookedConnection<C>, options: O) -> Self {
        Self {
            conn,
            options,
            retry: NoRetry,
        }
    }

    /// Retries the whole transaction after a serialization failure, a
    /// deadlock or `SQLITE_BUSY`, as
    /// [`AsyncHookedConnection::transaction_with_retry`] does (feature
    /// `tokio`: the backoff is awaited with `tokio::time::sleep`).
    #[cfg(feature = "tokio")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub fn retry(self, policy: RetryPolicy) -> AsyncTransactionBuilder<'a, C, O, RetryPolicy> {
        AsyncTransactionBuilder {
            conn: self.conn,
            options: self.options,
            retry: policy,
        }
    }
}

impl<C, O> AsyncTransactionBuilder<'_, C, O, NoRetry>
where
    C: AsyncBeginSql,
    O: BeginStatement<C>,
{
    /// Runs `body` in the transaction, with every hook rule, the panic
    /// guard and the cancellation rules of
    /// [`AsyncHookedConnection::transaction`].
    pub async fn run<T, E, F>(self, body: F) -> Result<T, E>
    where
        F: for<'r> AsyncHookFn<&'r mut AsyncHookedConnection<C>, Result<T, E>>,
        E: From<Error>,
    {
        let begin = SqlBegin(self.options.begin_sql(self.conn.inner_mut())?);
        AsyncHookedTransactionManager::run_with(self.conn, &begin, body).await
    }
}

#[cfg(feature = "tokio")]
impl<C, O> AsyncTransactionBuilder<'_, C, O, RetryPolicy>
where
    C: AsyncBeginSql,
    O: BeginStatement<C>,
{
    /// Runs `body` in the transaction, again after a serialization failure,
    /// a deadlock or `SQLITE_BUSY`, as the policy allows; only the attempt
    /// that commits fires its hooks. `body` runs once per attempt, so it is
    /// an `AsyncFnMut` (it cannot move what it captures out).
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn run<T, E, F>(self, mut body: F) -> Result<T, E>
    where
        F: for<'r> AsyncFnMut(&'r mut AsyncHookedConnection<C>) -> Result<T, E>,
        E: From<Error> + Retryable + std::fmt::Display,
    {
        let conn = self.conn;
        retry_loop!(&self.retry, conn.in_transaction(), {
            let begin = SqlBegin(self.options.begin_sql(conn.inner_mut())?);
            AsyncHookedTransactionManager::run_with(conn, &begin, async |conn| body(conn).await)
                .await
        })
    }
}

/// The async retry loop: runs `$attempt` (an expression that awaits one
/// attempt) until it succeeds, fails with an error that is not retryable,
/// or the policy is exhausted; inside an open user transaction
/// (`$in_transaction`) it runs once. Evaluates to the result. The decisions
/// are `RetryState`'s, shared with the sync loop (`retry.rs`); only the
/// backoff differs: it is awaited. Dropped during the backoff, nothing is
/// open: the failed attempt was rolled back (and its `on_rollback` hooks
/// awaited) before the sleep began.
///
/// A macro rather than an `async fn` taking the attempt as an async
/// closure: an async closure that calls the user's `AsyncFnMut` body, passed
/// to a generic `async fn`, makes rustc unable to prove the whole future
/// `Send` ("implementation of `Send` is not general enough"), and a
/// transaction future must be `Send` to be spawned or used in a web
/// handler.
#[cfg(feature = "tokio")]
macro_rules! retry_loop {
    ($policy:expr, $in_transaction:expr, $attempt:expr) => {{
        let mut state = $crate::options::retry::RetryState::start($policy, $in_transaction);
        loop {
            let error = match $attempt {
                Ok(value) => break Ok(value),
                Err(error) => error,
            };
            match state.after_failure(&error) {
                $crate::options::retry::Decision::Retry(wait) => tokio::time::sleep(wait).await,
                $crate::options::retry::Decision::GiveUp => break Err(error),
            }
        }
    }};
}
#[cfg(feature = "tokio")]
pub(crate) use retry_loop;

#[cfg(feature = "tokio")]
impl<C: AsyncConnection> AsyncHookedConnection<C> {
    /// Runs `body` in a transaction, retrying the whole transaction after a
    /// serialization failure or deadlock (PostgreSQL 40001/40P01, MySQL
    /// 1213/1205) or `SQLITE_BUSY`, as the [`RetryPolicy`] allows: the
    /// async twin of
    /// [`HookedConnection::transaction_with_retry`](crate::HookedConnection::transaction_with_retry),
    /// with the same decisions. Each failed attempt is rolled back: its
    /// `on_commit` hooks are dropped and its `on_rollback` hooks awaited;
    /// only the attempt that commits fires its hooks. The backoff is awaited
    /// with `tokio::time::sleep` (feature `tokio`).
    ///
    /// Inside an open user transaction `body` runs once, as a savepoint,
    /// and the error is returned unchanged: the outermost transaction must
    /// be retried. If the future is dropped (a timeout), the attempt in
    /// flight is abandoned as for `transaction` (rule C1), and a drop during
    /// the backoff leaves nothing open.
    ///
    /// ```
    /// # use diesel::prelude::*;
    /// # use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// # use diesel_async::AsyncConnection;
    /// use diesel_on_commit::{AsyncHookedConnection, RetryPolicy};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
    /// let mut conn: AsyncHookedConnection<SyncConnectionWrapper<SqliteConnection>> =
    ///     AsyncHookedConnection::establish(":memory:").await?;
    /// // `async move`, owning what it captures: the future is `Send` (a
    /// // closure capturing a reference makes it not `Send`).
    /// let mut attempts = 0;
    /// let value = conn
    ///     .transaction_with_retry(&RetryPolicy::attempts(3), async move |conn| {
    ///         attempts += 1;
    ///         conn.on_commit(move || println!("fired once, for the attempt that committed"));
    ///         Ok::<_, diesel::result::Error>(attempts)
    ///     })
    ///     .await?;
    /// assert_eq!(value, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
    pub async fn transaction_with_retry<T, E, F>(
        &mut self,
        policy: &RetryPolicy,
        mut body: F,
    ) -> Result<T, E>
    where
        F: for<'r> AsyncFnMut(&'r mut Self) -> Result<T, E>,
        E: From<Error> + Retryable + std::fmt::Display,
    {
        retry_loop!(policy, self.in_transaction(), {
            AsyncHookedTransactionManager::run(self, async |conn| body(conn).await).await
        })
    }
}

impl<C: AsyncConnection, O: IsolationAndReadMode, R> AsyncTransactionBuilder<'_, C, O, R> {
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
