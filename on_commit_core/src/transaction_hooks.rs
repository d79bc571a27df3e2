//! The traits generic code registers hooks through, implemented by both
//! wrappers: `TransactionHooks` (public) and the hidden entry points the
//! macros need.

use std::future::Future;

use crate::rules::failures::HookResult;

/// Registering transaction hooks, for code that is generic over the
/// connection wrapper (`HookedConnection<C>`, and later the async one).
///
/// Macros call it by its full path, never by method syntax: Diesel's next
/// release adds `SqliteConnection::on_commit`/`on_rollback`, SQLite's own
/// connection-wide commit hooks, which are not these.
///
/// ```
/// use diesel::prelude::*;
/// use diesel_on_commit::{HookedConnection, TransactionHooks};
///
/// fn schedule_reindex<C: TransactionHooks>(conn: &mut C, id: i32) {
///     conn.on_commit(move || println!("reindex product {id}"));
/// }
///
/// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
/// conn.transaction::<_, diesel::result::Error, _>(|conn| {
///     schedule_reindex(conn, 7);
///     Ok(())
/// })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot register transaction hooks: it is not a `HookedConnection`",
    label = "a plain Diesel connection or a pool guard",
    note = "wrap the connection: `type DbConn = HookedConnection<PgConnection>;` then `HookedConnection::new(conn)` or `DbConn::establish(url)`",
    note = "from a pool of `HookedConnection`s, take `let conn: &mut DbConn = &mut pooled;`"
)]
pub trait TransactionHooks {
    /// Runs `f` after the outermost COMMIT succeeded; discarded on rollback.
    /// Outside a transaction the connection's [`OutsideTransaction`](crate::OutsideTransaction) policy
    /// decides. See [`HookedConnection::on_commit`](crate::HookedConnection::on_commit).
    #[track_caller]
    fn on_commit<F, R>(&mut self, f: F)
    where
        F: FnOnce() -> R + Send + 'static,
        R: HookResult;

    /// As [`on_commit`](TransactionHooks::on_commit), but a panic in `f` is
    /// caught and logged and never resumed.
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use diesel_on_commit::{HookedConnection, TransactionHooks};
    ///
    /// fn schedule_cache_warmup<C: TransactionHooks>(conn: &mut C) {
    ///     conn.on_commit_robust(|| -> () { panic!("best effort: a panic is only logged") });
    /// }
    ///
    /// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
    /// conn.transaction::<_, diesel::result::Error, _>(|conn| {
    ///     schedule_cache_warmup(conn);
    ///     Ok(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[track_caller]
    fn on_commit_robust<F, R>(&mut self, f: F)
    where
        F: FnOnce() -> R + Send + 'static,
        R: HookResult;

    /// Runs `f` after the level it was registered in (or an enclosing one)
    /// rolled back. See [`HookedConnection::on_rollback`](crate::HookedConnection::on_rollback).
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use diesel_on_commit::{HookedConnection, TransactionHooks};
    /// use std::sync::mpsc;
    ///
    /// fn reserve_stock<C: TransactionHooks>(conn: &mut C, released: mpsc::Sender<i32>, sku: i32) {
    ///     conn.on_rollback(move || released.send(sku));
    /// }
    ///
    /// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
    /// let (tx, rx) = mpsc::channel();
    /// let _ = conn.transaction::<(), _, _>(|conn| {
    ///     reserve_stock(conn, tx, 7);
    ///     Err(diesel::result::Error::RollbackTransaction)
    /// });
    /// assert_eq!(rx.try_recv(), Ok(7));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[track_caller]
    fn on_rollback<F, R>(&mut self, f: F)
    where
        F: FnOnce() -> R + Send + 'static,
        R: HookResult;

    /// Whether a user transaction is open (`d >= 1`; a test transaction
    /// alone does not count).
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use diesel_on_commit::{HookedConnection, TransactionHooks};
    ///
    /// fn must_be_atomic<C: TransactionHooks>(conn: &mut C) {
    ///     assert!(conn.in_transaction(), "call this inside a transaction");
    /// }
    ///
    /// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
    /// conn.transaction::<_, diesel::result::Error, _>(|conn| {
    ///     must_be_atomic(conn);
    ///     Ok(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn in_transaction(&mut self) -> bool;

    /// `on_commit` with the label text given (for `on_commit!`).
    #[doc(hidden)]
    #[track_caller]
    fn __on_commit_labeled<F, R>(&mut self, text: &'static str, f: F)
    where
        F: FnOnce() -> R + Send + 'static,
        R: HookResult;

    /// `on_commit_robust` with the label text given (for `on_commit!`).
    #[doc(hidden)]
    #[track_caller]
    fn __on_commit_robust_labeled<F, R>(&mut self, text: &'static str, f: F)
    where
        F: FnOnce() -> R + Send + 'static,
        R: HookResult;

    /// `on_commit_with` with the label text given (for `on_commit!`).
    #[doc(hidden)]
    #[track_caller]
    fn __on_commit_with_labeled<F, R>(&mut self, text: &'static str, f: F)
    where
        F: FnOnce(&mut Self) -> R + Send + 'static,
        R: HookResult;

    /// `self`: the first step of `on_commit!` (M3), called with method
    /// syntax so that the compiler borrows an owned binding, reborrows a
    /// `&mut` and follows `DerefMut` through pool guards to the wrapper.
    /// Uniquely named (never `on_commit`, see the name clash above). See
    /// `__private::OnCommitConnection`.
    #[doc(hidden)]
    #[inline(always)]
    fn __diesel_on_commit_conn(&mut self) -> &mut Self {
        self
    }
}

/// Registering async hooks, for `on_commit!` with `.await` in its hook, an
/// `async` block, or an async closure: implemented by
/// `AsyncHookedConnection` (feature `async`). Not public API.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot run async hooks: an `on_commit!` hook with `.await`, an `async` block or an `async` closure needs an `AsyncHookedConnection` (diesel-on-commit's feature `async`)",
    label = "not an `AsyncHookedConnection`",
    note = "with a diesel-async connection, wrap it: `type DbConn = AsyncHookedConnection<AsyncPgConnection>;`",
    note = "on a sync `HookedConnection`, register a sync hook that hands the work to your runtime: `on_commit!(conn, drop(tokio::spawn(async move {{ .. }})))`"
)]
pub trait AsyncTransactionHooks {
    /// `on_commit_async` with the label text given.
    #[track_caller]
    fn __on_commit_async_labeled<Fut, R>(&mut self, text: &'static str, future: Fut)
    where
        Fut: Future<Output = R> + Send + 'static,
        R: HookResult + 'static;

    /// `on_commit_with` with an async closure and the label text given.
    #[track_caller]
    fn __on_commit_with_async_labeled<F, R>(&mut self, text: &'static str, f: F)
    where
        F: for<'c> AsyncHookFn<&'c mut Self, R, Fut: Send> + Send + 'static,
        R: HookResult + 'static;
}

/// An async closure that takes one argument and whose future can be named
/// (to require it `Send`): what diesel-async's `transaction` asks of its
/// callback, for hooks that receive the connection. Every `async |conn| ..`
/// closure implements it.
///
/// As a bound, for a helper that takes the same kind of hook the async
/// wrapper's `on_commit_with` and `before_commit` take:
///
/// ```
/// use diesel_on_commit::AsyncHookFn;
/// use std::future::Future;
/// use std::pin::pin;
/// use std::task::{Context, Poll, Waker};
///
/// // Any `async |conn| ..` closure whose future is `Send`.
/// fn hook<F>(f: F) -> F
/// where
///     F: for<'c> AsyncHookFn<&'c mut Vec<&'static str>, usize, Fut: Send>,
/// {
///     f
/// }
///
/// let f = hook(async |log: &mut Vec<&'static str>| {
///     log.push("ran");
///     log.len()
/// });
/// let mut log = Vec::new();
/// let mut future = pin!(f(&mut log)); // an executor would `.await` it
/// let ready = future.as_mut().poll(&mut Context::from_waker(Waker::noop()));
/// assert_eq!(ready, Poll::Ready(1));
/// ```
pub trait AsyncHookFn<T, R>:
    AsyncFnOnce(T) -> R + FnOnce(T) -> <Self as AsyncHookFn<T, R>>::Fut
{
    /// The future the closure returns.
    type Fut: Future<Output = R>;
}

impl<F, T, Fut, R> AsyncHookFn<T, R> for F
where
    F: AsyncFnOnce(T) -> R + FnOnce(T) -> Fut,
    Fut: Future<Output = R>,
{
    type Fut = Fut;
}
