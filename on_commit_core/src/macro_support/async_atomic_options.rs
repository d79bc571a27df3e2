//! What `#[atomic(..)]` on an `async fn` calls when it has transaction
//! options (`isolation = ..`, `read_only`, `deferrable`, `immediate`) or
//! `retry = ..`: the async twin of `atomic_options.rs`, with the same
//! run-time rules (see there) and the same compile-time check of each option
//! against the connection's backend, through traits of its own
//! ([`AsyncIsolationFor<C>`], ...) whose messages name the async wrapper.
//!
//! The options run through the async wrapper's guarded transaction
//! (`AsyncHookedTransactionManager::run_with`: the panic guard and the
//! cancellation guard of rules C1–C3), and `retry` through the async retry
//! loop (`options/async_builder.rs`, feature `tokio`), whose decisions are
//! the sync loop's.

use std::future::Future;
use std::marker::PhantomData;

use diesel::result::{Error, QueryResult};
use diesel_async::{AsyncConnection, TransactionManager};

use crate::async_hooked::connection::AsyncHookedConnection;
use crate::async_hooked::manager::{AsyncHookedTransactionManager, BeginLevel};
use crate::macro_support::atomic::{AtomicError, AtomicReturn};
#[cfg(feature = "tokio")]
use crate::macro_support::atomic_options::Attempt;
use crate::macro_support::atomic_options::{
    AtomicOptions, AtomicRetryPolicy, AtomicRetryable, Resolved, SameAs, Unset,
};
use crate::options::builder::IsolationLevel;

/// The connection of an `#[atomic] async fn` with options: an
/// [`AsyncHookedConnection<C>`].
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`#[atomic]`'s transaction options (`isolation`, `read_only`, `deferrable`, `immediate`, `retry`) on an `async fn` need an `AsyncHookedConnection`, not `{Self}`",
    label = "not an `AsyncHookedConnection<C>`",
    note = "wrap the connection, `type DbConn = AsyncHookedConnection<AsyncPgConnection>;`, and take `conn: &mut DbConn`; from a pool of them, pass `let conn: &mut DbConn = &mut pooled;`",
    note = "in generic code, the backend must be known: make the connection type concrete"
)]
pub trait AtomicAsyncOptionsConnection<C: AsyncConnection> {
    /// `self` as the wrapper it is.
    fn __hooked(&mut self) -> &mut AsyncHookedConnection<C>;
    /// Back from the wrapper.
    fn __from_hooked(conn: &mut AsyncHookedConnection<C>) -> &mut Self;
}

impl<C: AsyncConnection> AtomicAsyncOptionsConnection<C> for AsyncHookedConnection<C> {
    #[inline]
    fn __hooked(&mut self) -> &mut AsyncHookedConnection<C> {
        self
    }
    #[inline]
    fn __from_hooked(conn: &mut AsyncHookedConnection<C>) -> &mut Self {
        conn
    }
}

/// How a backend opens a transaction with options on the async wrapper:
/// the statement (rendered as its `build_transaction()` renders it) and the
/// way to send it.
#[doc(hidden)]
pub trait AsyncBeginWith<C: AsyncConnection> {
    /// The statement that begins a transaction with `options`.
    fn __sql(conn: &mut C, options: &Resolved) -> QueryResult<String>;
    /// Sends it (as diesel-async's `begin_transaction_sql`).
    fn __begin(conn: &mut C, sql: &str) -> impl Future<Output = QueryResult<()>> + Send;
}

/// No option: `C`'s own BEGIN (never called with options).
#[doc(hidden)]
#[derive(Debug)]
pub struct AsyncPlain;

impl<C: AsyncConnection> AsyncBeginWith<C> for AsyncPlain {
    fn __sql(_: &mut C, _: &Resolved) -> QueryResult<String> {
        Ok(String::new())
    }
    fn __begin(conn: &mut C, _: &str) -> impl Future<Output = QueryResult<()>> + Send {
        C::TransactionManager::begin_transaction(conn)
    }
}

/// A level opened by `B` with `sql`.
struct BeginBy<B>(String, PhantomData<fn() -> B>);

impl<C: AsyncConnection, B: AsyncBeginWith<C>> BeginLevel<C> for BeginBy<B> {
    fn begin(&self, inner: &mut C) -> impl Future<Output = QueryResult<()>> + Send {
        B::__begin(inner, &self.0)
    }
}

/// `isolation = ..` on an `async fn`: PostgreSQL and MySQL.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`#[atomic(isolation = ..)]` needs a PostgreSQL or MySQL connection; this one is `AsyncHookedConnection<{C}>`",
    label = "not supported by `{C}`",
    note = "isolation levels exist on PostgreSQL (`AsyncHookedConnection<AsyncPgConnection>`) and MySQL (`AsyncHookedConnection<AsyncMysqlConnection>`)",
    note = "SQLite has none: its transactions are always serializable; remove `isolation`, and write `#[atomic(immediate)]` to take the write lock at BEGIN"
)]
pub trait AsyncIsolationFor<C: AsyncConnection> {
    /// The backend's way to begin.
    type Begin: AsyncBeginWith<C>;
    /// The level, if the option was given.
    fn __level(&self) -> Option<IsolationLevel>;
}

impl<C: AsyncConnection> AsyncIsolationFor<C> for Unset {
    type Begin = AsyncPlain;
    fn __level(&self) -> Option<IsolationLevel> {
        None
    }
}

/// `read_only` on an `async fn`: PostgreSQL and MySQL.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`#[atomic(read_only)]` needs a PostgreSQL or MySQL connection; this one is `AsyncHookedConnection<{C}>`",
    label = "not supported by `{C}`",
    note = "read-only transactions exist on PostgreSQL (`AsyncHookedConnection<AsyncPgConnection>`) and MySQL (`AsyncHookedConnection<AsyncMysqlConnection>`)",
    note = "SQLite has none: remove `read_only` (`PRAGMA query_only = ON` makes a whole SQLite connection read-only)"
)]
pub trait AsyncReadOnlyFor<C: AsyncConnection> {
    /// The backend's way to begin.
    type Begin: AsyncBeginWith<C>;
    /// Whether the option was given.
    fn __on(&self) -> bool;
}

impl<C: AsyncConnection> AsyncReadOnlyFor<C> for Unset {
    type Begin = AsyncPlain;
    fn __on(&self) -> bool {
        false
    }
}

/// `deferrable` on an `async fn`: PostgreSQL only.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`#[atomic(deferrable)]` needs a PostgreSQL connection; this one is `AsyncHookedConnection<{C}>`",
    label = "not supported by `{C}`",
    note = "`DEFERRABLE` is PostgreSQL's (`AsyncHookedConnection<AsyncPgConnection>`): a `SERIALIZABLE READ ONLY DEFERRABLE` transaction waits for a snapshot that cannot fail",
    note = "remove `deferrable`; on MySQL, `conn.build_transaction().with_consistent_snapshot()` takes the snapshot at BEGIN"
)]
pub trait AsyncDeferrableFor<C: AsyncConnection> {
    /// The backend's way to begin.
    type Begin: AsyncBeginWith<C>;
    /// Whether the option was given.
    fn __on(&self) -> bool;
}

impl<C: AsyncConnection> AsyncDeferrableFor<C> for Unset {
    type Begin = AsyncPlain;
    fn __on(&self) -> bool {
        false
    }
}

/// `immediate` on an `async fn`: SQLite only.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`#[atomic(immediate)]` needs a SQLite connection; this one is `AsyncHookedConnection<{C}>`",
    label = "not supported by `{C}`",
    note = "`immediate` is SQLite's `BEGIN IMMEDIATE` (`AsyncHookedConnection<SyncConnectionWrapper<SqliteConnection>>`): it takes the database's write lock at BEGIN",
    note = "PostgreSQL and MySQL lock rows, not the database: remove `immediate`, and lock the rows the function will change with `SELECT .. FOR UPDATE` (Diesel's `.for_update()`)"
)]
pub trait AsyncImmediateFor<C: AsyncConnection> {
    /// The backend's way to begin.
    type Begin: AsyncBeginWith<C>;
    /// Whether the option was given.
    fn __on(&self) -> bool;
}

impl<C: AsyncConnection> AsyncImmediateFor<C> for Unset {
    type Begin = AsyncPlain;
    fn __on(&self) -> bool {
        false
    }
}

/// Which option's `Begin` opens the transaction: every option given has the
/// same backend (each is implemented for one connection type only); the
/// first given is taken.
#[derive(Clone, Copy)]
enum By {
    Plain,
    Isolation,
    ReadOnly,
    Deferrable,
    Immediate,
}

impl<I, RO, D, M> AtomicOptions<I, RO, D, M> {
    /// The options as values, and which `Begin` applies them; `Plain` also
    /// where they cannot apply (a test transaction alone is open). An open
    /// user transaction is `Error::AlreadyInTransaction`, as on the sync
    /// side.
    fn resolve_async<C>(&self, conn: &mut AsyncHookedConnection<C>) -> QueryResult<(Resolved, By)>
    where
        C: AsyncConnection,
        I: AsyncIsolationFor<C>,
        RO: AsyncReadOnlyFor<C>,
        D: AsyncDeferrableFor<C>,
        M: AsyncImmediateFor<C>,
    {
        let resolved = Resolved {
            isolation: self.isolation.__level(),
            read_only: self.read_only.__on(),
            deferrable: self.deferrable.__on(),
            immediate: self.immediate.__on(),
        };
        if resolved.is_empty() {
            return Ok((resolved, By::Plain));
        }
        if conn.in_transaction() {
            return Err(Error::AlreadyInTransaction);
        }
        if conn.state.in_test_transaction() {
            tracing::debug!(
                options = ?resolved,
                "#[atomic] inside a test transaction: its options cannot apply to a savepoint; \
                 running without them"
            );
            return Ok((resolved, By::Plain));
        }
        let by = if resolved.isolation.is_some() {
            By::Isolation
        } else if resolved.read_only {
            By::ReadOnly
        } else if resolved.deferrable {
            By::Deferrable
        } else {
            By::Immediate
        };
        Ok((resolved, by))
    }
}

/// One attempt: `$body` (an async closure on the wrapper) in a transaction
/// opened by the `Begin` that `$by` names.
macro_rules! run_by {
    ($conn:expr, $resolved:expr, $by:expr, $body:expr, [$I:ty, $RO:ty, $D:ty, $M:ty]) => {{
        let conn = $conn;
        match $by {
            By::Plain => AsyncHookedTransactionManager::run(conn, $body).await,
            By::Isolation => {
                let sql = <$I as AsyncBeginWith<_>>::__sql(conn.inner_mut(), &$resolved)?;
                AsyncHookedTransactionManager::run_with(
                    conn,
                    &BeginBy::<$I>(sql, PhantomData),
                    $body,
                )
                .await
            }
            By::ReadOnly => {
                let sql = <$RO as AsyncBeginWith<_>>::__sql(conn.inner_mut(), &$resolved)?;
                AsyncHookedTransactionManager::run_with(
                    conn,
                    &BeginBy::<$RO>(sql, PhantomData),
                    $body,
                )
                .await
            }
            By::Deferrable => {
                let sql = <$D as AsyncBeginWith<_>>::__sql(conn.inner_mut(), &$resolved)?;
                AsyncHookedTransactionManager::run_with(
                    conn,
                    &BeginBy::<$D>(sql, PhantomData),
                    $body,
                )
                .await
            }
            By::Immediate => {
                let sql = <$M as AsyncBeginWith<_>>::__sql(conn.inner_mut(), &$resolved)?;
                AsyncHookedTransactionManager::run_with(
                    conn,
                    &BeginBy::<$M>(sql, PhantomData),
                    $body,
                )
                .await
            }
        }
    }};
}

/// `#[atomic(..)] async fn` with transaction options and no retry: `body`
/// runs once, in a transaction opened with `options` on `conn`, with the
/// async wrapper's panic and cancellation guards.
#[doc(hidden)]
pub async fn atomic_async_with<X, C, R, E, F, I, RO, D, M>(
    conn: &mut X,
    durable: bool,
    options: AtomicOptions<I, RO, D, M>,
    body: F,
) -> R
where
    X: AtomicAsyncOptionsConnection<C>,
    C: AsyncConnection,
    F: AsyncFnOnce(&mut X) -> R,
    R: AtomicReturn<Err = E>,
    E: AtomicError,
    I: AsyncIsolationFor<C>,
    RO: AsyncReadOnlyFor<C>,
    D: AsyncDeferrableFor<C>,
    M: AsyncImmediateFor<C>,
{
    let conn = conn.__hooked();
    if durable && conn.in_transaction() {
        return R::__from_result(Err(Error::AlreadyInTransaction.into()));
    }
    let result = async {
        let (resolved, by) = options.resolve_async(conn)?;
        run_by!(
            conn,
            resolved,
            by,
            async move |conn| body(X::__from_hooked(conn)).await.__into_result(),
            [I::Begin, RO::Begin, D::Begin, M::Begin]
        )
    }
    .await;
    R::__from_result(result)
}

/// `#[atomic(retry = .., ..)] async fn`: `body` runs in a transaction with
/// `options`, again after a serialization failure, deadlock or
/// `SQLITE_BUSY`, as `policy` allows (the sync loop's decisions; the
/// backoff awaited with `tokio::time::sleep`). `body` must be an
/// `AsyncFnMut`. `E2` is the error type again (see `atomic_with_retry`).
#[doc(hidden)]
#[cfg(feature = "tokio")]
pub async fn atomic_async_with_retry<X, C, R, E, E2, F, I, RO, D, M, P>(
    conn: &mut X,
    durable: bool,
    options: AtomicOptions<I, RO, D, M>,
    policy: P,
    mut body: F,
) -> R
where
    X: AtomicAsyncOptionsConnection<C>,
    C: AsyncConnection,
    F: AsyncFnMut(&mut X) -> R,
    R: AtomicReturn<Err = E>,
    E: AtomicError + SameAs<E2>,
    E2: AtomicRetryable,
    I: AsyncIsolationFor<C>,
    RO: AsyncReadOnlyFor<C>,
    D: AsyncDeferrableFor<C>,
    M: AsyncImmediateFor<C>,
    P: AtomicRetryPolicy + AsyncRetryRuntime,
{
    let policy = policy.__policy();
    let conn = conn.__hooked();
    if durable && conn.in_transaction() {
        return R::__from_result(Err(Error::AlreadyInTransaction.into()));
    }
    let in_transaction = conn.in_transaction();
    let result: Result<_, Attempt<E2>> =
        crate::options::async_builder::retry_loop!(&policy, in_transaction, {
            async {
                let (resolved, by) = options.resolve_async(conn)?;
                run_by!(
                    &mut *conn,
                    resolved,
                    by,
                    async |conn| body(X::__from_hooked(conn)).await.__into_result(),
                    [I::Begin, RO::Begin, D::Begin, M::Begin]
                )
            }
            .await
            .map_err(|error: E| Attempt(error.__to()))
        });
    R::__from_result(result.map_err(|Attempt(error)| E::__back(error)))
}

/// Without the `tokio` feature: the same signature, and a bound on `retry`
/// that no type meets, whose message says to turn the feature on.
#[doc(hidden)]
#[cfg(not(feature = "tokio"))]
pub async fn atomic_async_with_retry<X, C, R, E, E2, F, I, RO, D, M, P>(
    _conn: &mut X,
    _durable: bool,
    _options: AtomicOptions<I, RO, D, M>,
    _policy: P,
    _body: F,
) -> R
where
    X: AtomicAsyncOptionsConnection<C>,
    C: AsyncConnection,
    F: AsyncFnMut(&mut X) -> R,
    R: AtomicReturn<Err = E>,
    E: AtomicError + SameAs<E2>,
    E2: AtomicRetryable,
    I: AsyncIsolationFor<C>,
    RO: AsyncReadOnlyFor<C>,
    D: AsyncDeferrableFor<C>,
    M: AsyncImmediateFor<C>,
    P: AtomicRetryPolicy + AsyncRetryRuntime,
{
    unreachable!("AsyncRetryRuntime has no impl without the `tokio` feature")
}

/// The backoff of `#[atomic(retry = ..)] async fn` is awaited with
/// `tokio::time::sleep`: feature `tokio`.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`#[atomic(retry = ..)]` on an `async fn` needs diesel-on-commit's `tokio` feature",
    label = "the backoff between attempts is awaited with `tokio::time::sleep`",
    note = "turn it on: `diesel-on-commit = {{ version = \"0.1\", features = [\"async\", \"tokio\"] }}`"
)]
pub trait AsyncRetryRuntime {}

#[cfg(feature = "tokio")]
#[diagnostic::do_not_recommend]
impl<P: AtomicRetryPolicy> AsyncRetryRuntime for P {}
