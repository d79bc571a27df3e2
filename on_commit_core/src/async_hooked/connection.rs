//! `AsyncHookedConnection<C>`: the async wrapper (diesel-async 0.9) and its
//! thin, complete delegation of diesel-async's connection traits.
//!
//! Every method here is one line of forwarding, except that the futures of
//! statements show their result to the hook state (`Observed`), which needs
//! errors for rules 5.3 and 9. Hook logic lives in `manager.rs`,
//! `register.rs`, `testing.rs` and the shared `rules/`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use diesel::connection::{CacheSize, Instrumentation};
use diesel::query_builder::{AsQuery, QueryFragment, QueryId};
use diesel::result::{ConnectionResult, Error, QueryResult};
use diesel_async::pooled_connection::{PoolableConnection, RecyclingMethod};
use diesel_async::{
    AsyncConnection, AsyncConnectionCore, SimpleAsyncConnection, TransactionManager,
};

use crate::async_hooked::hooks::AsyncHook;
use crate::async_hooked::later::AsyncLater;
use crate::async_hooked::manager::AsyncHookedTransactionManager;
use crate::rules::failures::HookPanics;
use crate::rules::levels::{DepthCheck, HookState};
use crate::rules::placement::OutsideTransaction;
use crate::transaction_hooks::AsyncHookFn;

/// An async Diesel connection (diesel-async 0.9) that runs transaction
/// hooks: the same contract as [`HookedConnection`](crate::HookedConnection),
/// plus hooks that are futures ([`on_commit_async`], [`on_rollback_async`])
/// and async closures ([`on_commit_with`], [`before_commit`]), all awaited
/// in one registration order.
///
/// It wraps any `C: diesel_async::AsyncConnection` (`AsyncPgConnection`,
/// `AsyncMysqlConnection`, `SyncConnectionWrapper<SqliteConnection>`) and is
/// itself one, so diesel-async's query methods and pools (bb8, deadpool,
/// mobc: `AsyncDieselConnectionManager<AsyncHookedConnection<C>>`) work
/// through it.
///
/// ```
/// use diesel::SqliteConnection;
/// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
/// use diesel_async::{AsyncConnection, RunQueryDsl};
/// use diesel_on_commit::AsyncHookedConnection;
/// use std::sync::{Arc, Mutex};
///
/// type DbConn = AsyncHookedConnection<SyncConnectionWrapper<SqliteConnection>>;
///
/// let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
/// runtime.block_on(async {
///     let mut conn = DbConn::establish(":memory:").await?;
///     let log = Arc::new(Mutex::new(Vec::new()));
///     let (sync_log, async_log) = (log.clone(), log.clone());
///     conn.transaction::<_, diesel::result::Error, _>(async |conn| {
///         diesel::sql_query("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
///             .execute(conn)
///             .await?;
///         conn.on_commit(move || sync_log.lock().unwrap().push("email"));
///         conn.on_commit_async(async move {
///             async_log.lock().unwrap().push("published"); // e.g. `broker.publish(..).await`
///         });
///         assert!(log.lock().unwrap().is_empty()); // nothing runs before COMMIT
///         Ok(())
///     })
///     .await?;
///     assert_eq!(*log.lock().unwrap(), ["email", "published"]); // awaited in order
///     Ok::<(), Box<dyn std::error::Error>>(())
/// })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// **Cancellation.** A caller's future can be dropped at any `.await`:
///
/// 1. before COMMIT was sent: nothing is committed; the connection is marked
///    broken (pools drop it), its `on_commit` hooks are discarded and its
///    `on_rollback` hooks are due: they run at once on one spawned task (as
///    in case 2), through `transaction`, diesel-async's
///    `AsyncConnection::transaction` and `#[atomic] async fn` alike;
/// 2. after COMMIT succeeded, while hooks run: the hooks still due (sync and
///    async, the one being awaited included when it does not hold the
///    connection) run in registration order on one task spawned on the
///    current tokio runtime (feature `tokio`); without one, each is logged
///    at ERROR with its label;
/// 3. while COMMIT is in flight: the outcome is unknown and counts as failed
///    (rule 9): `on_commit` hooks do not run, `on_rollback` hooks do, for
///    work that may in fact have committed.
///
/// No user hook runs inside `Drop`: hooks due there go the way of case 2.
///
/// [`on_commit_async`]: AsyncHookedConnection::on_commit_async
/// [`on_rollback_async`]: AsyncHookedConnection::on_rollback_async
/// [`on_commit_with`]: AsyncHookedConnection::on_commit_with
/// [`before_commit`]: AsyncHookedConnection::before_commit
pub struct AsyncHookedConnection<C: AsyncConnection> {
    pub(crate) inner: C,
    pub(crate) state: HookState<AsyncHook<C>>,
}

/// The inner connection's own transaction manager.
pub(crate) type Inner<C> = <C as AsyncConnection>::TransactionManager;

impl<C: AsyncConnection> AsyncHookedConnection<C> {
    /// Wraps a connection. It must not be inside a transaction: one opened
    /// before wrapping is not the wrapper's and registering a hook in it
    /// panics (rule 8).
    ///
    /// ```
    /// use diesel::SqliteConnection;
    /// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// use diesel_async::AsyncConnection;
    /// use diesel_on_commit::AsyncHookedConnection;
    ///
    /// type DbConn = AsyncHookedConnection<SyncConnectionWrapper<SqliteConnection>>;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
    /// let inner = SyncConnectionWrapper::<SqliteConnection>::establish(":memory:").await?;
    /// let mut conn: DbConn = AsyncHookedConnection::new(inner);
    /// assert!(!conn.in_transaction());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(inner: C) -> Self {
        Self {
            inner,
            state: HookState::new(AsyncLater::new(every_error_aborts::<C::Backend>())),
        }
    }

    /// The inner connection.
    ///
    /// ```
    /// use diesel::SqliteConnection;
    /// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// use diesel_async::AsyncConnection;
    /// use diesel_on_commit::AsyncHookedConnection;
    ///
    /// type DbConn = AsyncHookedConnection<SyncConnectionWrapper<SqliteConnection>>;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
    /// let conn = DbConn::establish(":memory:").await?;
    /// let inner: &SyncConnectionWrapper<SqliteConnection> = conn.inner();
    /// # let _ = inner;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn inner(&self) -> &C {
        &self.inner
    }

    /// The inner connection, for backend-specific methods and for helpers
    /// that only run queries. A transaction begun on it is not the
    /// wrapper's (rule 8).
    ///
    /// ```
    /// use diesel::SqliteConnection;
    /// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// use diesel_async::{AsyncConnection, SimpleAsyncConnection};
    /// use diesel_on_commit::AsyncHookedConnection;
    ///
    /// type DbConn = AsyncHookedConnection<SyncConnectionWrapper<SqliteConnection>>;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
    /// let mut conn = DbConn::establish(":memory:").await?;
    /// conn.inner_mut()
    ///     .batch_execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    ///     .await?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn inner_mut(&mut self) -> &mut C {
        self.state.touched();
        &mut self.inner
    }

    /// Unwraps the connection. With an open user transaction, every queued
    /// hook is discarded with a warning: none of them runs (rule 10).
    ///
    /// ```
    /// use diesel::SqliteConnection;
    /// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// use diesel_async::{AsyncConnection, SimpleAsyncConnection};
    /// use diesel_on_commit::AsyncHookedConnection;
    ///
    /// type DbConn = AsyncHookedConnection<SyncConnectionWrapper<SqliteConnection>>;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
    /// let conn = DbConn::establish(":memory:").await?;
    /// let mut plain: SyncConnectionWrapper<SqliteConnection> = conn.into_inner();
    /// plain.batch_execute("SELECT 1").await?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn into_inner(mut self) -> C {
        self.state.discard_for_into_inner("AsyncHookedConnection");
        let Self { inner, state, .. } = self;
        drop(state);
        inner
    }

    /// What registering an `on_commit`-kind hook outside a transaction does
    /// (rule 2); the default is [`OutsideTransaction::Run`].
    ///
    /// ```
    /// use diesel::SqliteConnection;
    /// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// use diesel_async::AsyncConnection;
    /// use diesel_on_commit::{AsyncHookedConnection, OutsideTransaction};
    ///
    /// type DbConn = AsyncHookedConnection<SyncConnectionWrapper<SqliteConnection>>;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
    /// let mut conn = DbConn::establish(":memory:").await?;
    /// conn.set_outside_transaction(OutsideTransaction::Panic);
    /// conn.transaction::<_, diesel::result::Error, _>(async |conn| {
    ///     conn.on_commit(|| println!("inside a transaction: fine"));
    ///     Ok(())
    /// })
    /// .await?;
    /// // Outside one, `conn.on_commit(..)` would now panic.
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_outside_transaction(&mut self, policy: OutsideTransaction) {
        self.state.set_outside(policy);
    }

    /// What a hook's panic does once the other hooks ran (rule 6); the
    /// default is [`HookPanics::Resume`].
    ///
    /// ```
    /// use diesel::SqliteConnection;
    /// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// use diesel_async::AsyncConnection;
    /// use diesel_on_commit::{AsyncHookedConnection, HookPanics};
    ///
    /// type DbConn = AsyncHookedConnection<SyncConnectionWrapper<SqliteConnection>>;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
    /// let mut conn = DbConn::establish(":memory:").await?;
    /// conn.set_hook_panics(HookPanics::Log);
    /// let committed = conn
    ///     .transaction::<_, diesel::result::Error, _>(async |conn| {
    ///         conn.on_commit(|| -> () { panic!("bug in a hook") });
    ///         Ok("order placed")
    ///     })
    ///     .await;
    /// assert_eq!(committed?, "order placed"); // the panic was logged, not resumed
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_hook_panics(&mut self, policy: HookPanics) {
        self.state.set_hook_panics(policy);
    }
}

/// Whether every failed statement aborts the transaction on `B` although
/// the inner connection does not flag it (see [`AsyncLater`]): PostgreSQL.
/// The backend is named as a type, so the compiler checks the path.
fn every_error_aborts<B>() -> bool {
    #[cfg(feature = "postgres")]
    {
        std::any::type_name::<B>() == std::any::type_name::<diesel::pg::Pg>()
    }
    #[cfg(not(feature = "postgres"))]
    {
        false
    }
}

impl<C: AsyncConnection> AsyncHookedConnection<C> {
    /// The inner connection's transaction status (its depth, its flags).
    #[inline]
    pub(crate) fn inner_status(&mut self) -> &mut diesel::connection::TransactionManagerStatus {
        Inner::<C>::transaction_manager_status_mut(&mut self.inner)
    }

    /// Brings the wrapper's levels in line with the inner connection (rules
    /// 8 and 9); called at every step. See [`HookState::check_levels`].
    #[inline]
    pub(crate) fn check_levels(&mut self) -> DepthCheck {
        self.state
            .check_levels(|| Inner::<C>::transaction_manager_status_mut(&mut self.inner))
    }

    /// User depth `d`: the inner depth minus the test-transaction baseline.
    #[inline]
    pub(crate) fn user_depth(&mut self) -> u32 {
        self.state
            .user_depth(Inner::<C>::transaction_manager_status_mut(&mut self.inner))
    }
}

impl<C: AsyncConnection> fmt::Debug for AsyncHookedConnection<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("AsyncHookedConnection");
        out.field("inner", &std::any::type_name::<C>());
        self.state.debug_fields(&mut out);
        out.finish_non_exhaustive()
    }
}

/// What a statement's future tells the hook state when it completes.
pub(crate) trait Observe: Send {
    /// `None`: the statement succeeded; else its error.
    fn observed(&mut self, error: Option<&Error>);
}

impl<C: AsyncConnection> Observe for HookState<AsyncHook<C>> {
    #[inline]
    fn observed(&mut self, error: Option<&Error>) {
        self.observe(error);
    }
}

pin_project_lite::pin_project! {
    /// The future of a statement run through [`AsyncHookedConnection`]: the
    /// inner connection's future, whose result is shown to the hook state.
    ///
    /// It is the wrapper's `LoadFuture` and `ExecuteFuture`; diesel-async's
    /// `RunQueryDsl` methods await it for you.
    ///
    /// ```
    /// use diesel::SqliteConnection;
    /// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// use diesel_async::{AsyncConnection, AsyncConnectionCore};
    /// use diesel_on_commit::{AsyncHookedConnection, Observed};
    ///
    /// type DbConn = AsyncHookedConnection<SyncConnectionWrapper<SqliteConnection>>;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
    /// let mut conn = DbConn::establish(":memory:").await?;
    /// let query = diesel::sql_query("CREATE TABLE orders (id INTEGER PRIMARY KEY)");
    /// let future: Observed<'_, _> = conn.execute_returning_count(query);
    /// assert_eq!(future.await?, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use = "futures do nothing unless polled"]
    pub struct Observed<'s, F> {
        #[pin]
        future: F,
        state: &'s mut (dyn Observe + 's),
    }
}

impl<F> fmt::Debug for Observed<'_, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Observed")
    }
}

impl<F, T> Future for Observed<'_, F>
where
    F: Future<Output = QueryResult<T>>,
{
    type Output = QueryResult<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.future.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                this.state.observed(result.as_ref().err());
                Poll::Ready(result)
            }
        }
    }
}

impl<C: AsyncConnection> SimpleAsyncConnection for AsyncHookedConnection<C> {
    async fn batch_execute(&mut self, query: &str) -> QueryResult<()> {
        let Self { inner, state, .. } = self;
        // Until it completes (it may be dropped first), the depth is unknown.
        state.touched();
        Observed {
            future: inner.batch_execute(query),
            state,
        }
        .await
    }
}

impl<C: AsyncConnection> AsyncConnectionCore for AsyncHookedConnection<C> {
    type ExecuteFuture<'conn, 'query> = Observed<'conn, C::ExecuteFuture<'conn, 'query>>;
    type LoadFuture<'conn, 'query> = Observed<'conn, C::LoadFuture<'conn, 'query>>;
    type Stream<'conn, 'query> = C::Stream<'conn, 'query>;
    type Row<'conn, 'query> = C::Row<'conn, 'query>;
    type Backend = C::Backend;

    fn load<'conn, 'query, T>(&'conn mut self, source: T) -> Self::LoadFuture<'conn, 'query>
    where
        T: AsQuery + 'query,
        T::Query: QueryFragment<Self::Backend> + QueryId + 'query,
    {
        let Self { inner, state, .. } = self;
        state.touched();
        Observed {
            future: inner.load(source),
            state,
        }
    }

    fn execute_returning_count<'conn, 'query, T>(
        &'conn mut self,
        source: T,
    ) -> Self::ExecuteFuture<'conn, 'query>
    where
        T: QueryFragment<Self::Backend> + QueryId + 'query,
    {
        let Self { inner, state, .. } = self;
        state.touched();
        Observed {
            future: inner.execute_returning_count(source),
            state,
        }
    }
}

impl<C: AsyncConnection> AsyncConnection for AsyncHookedConnection<C> {
    type TransactionManager = AsyncHookedTransactionManager<C>;

    async fn establish(database_url: &str) -> ConnectionResult<Self> {
        C::establish(database_url).await.map(Self::new)
    }

    fn begin_test_transaction(&mut self) -> impl Future<Output = QueryResult<()>> + Send {
        crate::async_hooked::testing::begin_test_transaction(self)
    }

    /// The wrapper's [`test_transaction`](AsyncHookedConnection::test_transaction):
    /// the test transaction is the baseline (rule 11).
    // Not an `async fn`: the trait's lifetimes are spelled out.
    #[allow(clippy::manual_async_fn)]
    fn test_transaction<'conn, 'a, R, E, F>(
        &'conn mut self,
        f: F,
    ) -> impl Future<Output = R> + Send + 'conn
    where
        for<'r> F: AsyncFnOnce(&'r mut Self) -> Result<R, E>
            + AsyncHookFn<&'r mut Self, Result<R, E>, Fut: Send>
            + Send
            + 'a,
        E: fmt::Debug + Send + 'a,
        R: Send + 'a,
        'a: 'conn,
    {
        async move { AsyncHookedConnection::test_transaction(self, f).await }
    }

    fn transaction_state(
        &mut self,
    ) -> &mut <Self::TransactionManager as TransactionManager<Self>>::TransactionStateData {
        self.state.touched();
        self.inner.transaction_state()
    }

    fn instrumentation(&mut self) -> &mut dyn Instrumentation {
        self.inner.instrumentation()
    }

    fn set_instrumentation(&mut self, instrumentation: impl Instrumentation) {
        self.inner.set_instrumentation(instrumentation)
    }

    fn set_prepared_statement_cache_size(&mut self, size: CacheSize) {
        self.inner.set_prepared_statement_cache_size(size)
    }
}

impl<C: PoolableConnection + 'static> PoolableConnection for AsyncHookedConnection<C> {
    /// A broken connection (see [`is_broken`](Self::is_broken)) fails the
    /// check; otherwise as diesel-async's default. (diesel-async 0.9's mobc
    /// manager keeps connections its `is_broken` calls broken: this check
    /// is what drops them there.)
    fn ping(
        &mut self,
        config: &RecyclingMethod<Self>,
    ) -> impl Future<Output = QueryResult<()>> + Send
    where
        for<'a> Self: 'a,
        for<'a> diesel::dsl::select<diesel::dsl::AsExprOf<i32, diesel::sql_types::Integer>>:
            diesel_async::methods::LoadQuery<'a, Self, i32>,
        diesel::query_builder::SqlQuery: diesel_async::methods::ExecuteDsl<Self>,
    {
        use diesel::IntoSql;
        use diesel_async::RunQueryDsl;

        async move {
            if self.is_broken() {
                return Err(Error::BrokenTransactionManager);
            }
            match config {
                RecyclingMethod::Fast => Ok(()),
                RecyclingMethod::Verified => {
                    diesel::select(1_i32.into_sql::<diesel::sql_types::Integer>())
                        .get_result::<i32>(self)
                        .await
                        .map(|_| ())
                }
                RecyclingMethod::CustomQuery(query) => diesel::sql_query(query.as_ref())
                    .execute(self)
                    .await
                    .map(|_| ()),
                RecyclingMethod::CustomFunction(check) => check(self).await,
            }
        }
    }

    /// Broken when the inner connection is, when the connection was lost,
    /// or when a user transaction is still open (a caller's future was
    /// dropped mid-transaction): a pool then drops it rather than hand its
    /// hooks to the next checkout.
    fn is_broken(&mut self) -> bool {
        // A level whose caller's future was dropped is settled first (rule
        // C1): its on_rollback hooks go to a task now, not when it is dropped.
        self.settle_abandoned();
        self.state.lost() || self.state.levels() > 0 || self.inner.is_broken()
    }
}
