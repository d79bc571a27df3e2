//! Registering hooks on the async wrapper: the sync kinds, the async kinds,
//! and `TransactionHooks` (rules 1, 2, 8, 9; the placement rules are
//! the shared `HookState::open_level` and `place_slow`).

use std::any::type_name;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe, Location};

use diesel::result::QueryResult;
use diesel_async::AsyncConnection;

use crate::async_hooked::connection::AsyncHookedConnection;
use crate::async_hooked::hooks::{self, AsyncCommitHook, AsyncHook};
use crate::async_hooked::later::{orphaned, Orphan};
use crate::rules::failures::{plain, run_plain, run_robust, FirstPanic, HookResult};
use crate::rules::label::HookLabel;
use crate::rules::levels::{Counter, DepthCheck, Raised};
use crate::rules::queue::Entry;
use crate::transaction_hooks::{AsyncHookFn, AsyncTransactionHooks, TransactionHooks};

impl<C: AsyncConnection> AsyncHookedConnection<C> {
    /// Registers `f` to run after the outermost COMMIT succeeds; as
    /// [`HookedConnection::on_commit`](crate::HookedConnection::on_commit).
    /// It runs in one registration order with the async hooks.
    ///
    /// ```
    /// use diesel::SqliteConnection;
    /// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// use diesel::result::Error;
    /// use diesel_async::AsyncConnection;
    /// use diesel_on_commit::AsyncHookedConnection;
    /// use std::sync::mpsc;
    ///
    /// type DbConn = AsyncHookedConnection<SyncConnectionWrapper<SqliteConnection>>;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
    /// let mut conn = DbConn::establish(":memory:").await?;
    /// let (tx, rx) = mpsc::channel();
    /// conn.transaction::<_, Error, _>(async |conn| {
    ///     conn.on_commit(move || tx.send("email"));
    ///     Ok(())
    /// })
    /// .await?;
    /// assert_eq!(rx.try_recv(), Ok("email"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[track_caller]
    #[inline(always)]
    pub fn on_commit<F, R>(&mut self, f: F)
    where
        F: FnOnce() -> R + Send + 'static,
        R: HookResult,
    {
        let label = HookLabel::new(Location::caller(), type_name::<F>());
        self.register(label, AsyncHook::Commit(AsyncCommitHook::Plain(plain(f))));
    }

    /// As [`on_commit`](Self::on_commit), but a panic in `f` is caught,
    /// logged at ERROR with the hook's label, and never resumed.
    ///
    /// ```
    /// use diesel::SqliteConnection;
    /// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// use diesel::result::Error;
    /// use diesel_async::AsyncConnection;
    /// use diesel_on_commit::AsyncHookedConnection;
    /// use std::sync::mpsc;
    ///
    /// type DbConn = AsyncHookedConnection<SyncConnectionWrapper<SqliteConnection>>;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
    /// let mut conn = DbConn::establish(":memory:").await?;
    /// let (tx, rx) = mpsc::channel();
    /// conn.transaction::<_, Error, _>(async |conn| {
    ///     conn.on_commit_robust(|| -> () { panic!("a flaky side effect") });
    ///     conn.on_commit(move || tx.send("still runs"));
    ///     Ok(())
    /// })
    /// .await?; // no panic comes out: it was logged
    /// assert_eq!(rx.try_recv(), Ok("still runs"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[track_caller]
    #[inline(always)]
    pub fn on_commit_robust<F, R>(&mut self, f: F)
    where
        F: FnOnce() -> R + Send + 'static,
        R: HookResult,
    {
        let label = HookLabel::new(Location::caller(), type_name::<F>());
        self.register(label, AsyncHook::Commit(AsyncCommitHook::Robust(plain(f))));
    }

    /// Registers a future to be awaited after the outermost COMMIT succeeded
    /// (publish to a broker, call an HTTP API), in registration order with
    /// the other hooks; discarded on rollback. It returns `()` or a
    /// `Result` whose `Err` is logged at ERROR with the hook's label.
    ///
    /// Nothing of the future runs before COMMIT: an `async` block's code
    /// runs when it is awaited. If the caller's future is dropped after
    /// COMMIT, a hook still due runs on a task spawned on the tokio runtime
    /// (feature `tokio`), or is logged at ERROR.
    ///
    /// Outside a transaction, the future cannot be awaited before the
    /// registering call returns: under [`OutsideTransaction::Run`](crate::OutsideTransaction::Run)
    /// it is spawned on the current tokio runtime (or, without one, logged
    /// at ERROR as not run); inside a running hook it runs right after that
    /// hook.
    ///
    /// ```
    /// use diesel::SqliteConnection;
    /// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// use diesel::result::Error;
    /// use diesel_async::AsyncConnection;
    /// use diesel_on_commit::AsyncHookedConnection;
    /// use std::sync::mpsc;
    ///
    /// type DbConn = AsyncHookedConnection<SyncConnectionWrapper<SqliteConnection>>;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
    /// let mut conn = DbConn::establish(":memory:").await?;
    /// let (tx, rx) = mpsc::channel();
    /// conn.transaction::<_, Error, _>(async |conn| {
    ///     // e.g. `async move { broker.publish(OrderPlaced { id }).await }`
    ///     conn.on_commit_async(async move { tx.send("order placed") });
    ///     Ok(())
    /// })
    /// .await?;
    /// assert_eq!(rx.try_recv(), Ok("order placed")); // awaited before `transaction` returned
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// A future that only panics needs no annotation (its output, `!`, is a
    /// [`HookResult`](crate::HookResult) too); nor does an async closure
    /// given to [`on_commit_with`](Self::on_commit_with) that only panics:
    ///
    /// ```
    /// # async fn run() -> diesel::QueryResult<()> {
    /// use diesel::SqliteConnection;
    /// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// use diesel_async::AsyncConnection;
    /// use diesel_on_commit::AsyncHookedConnection;
    ///
    /// type DbConn = AsyncHookedConnection<SyncConnectionWrapper<SqliteConnection>>;
    /// let mut conn = DbConn::establish(":memory:").await.unwrap();
    /// conn.transaction::<(), diesel::result::Error, _>(async |conn| {
    ///     conn.on_commit_async(async { panic!("a bug in a hook") });
    ///     conn.on_rollback_async(async { panic!("a bug in a hook") });
    ///     conn.on_commit_with(async |_: &mut DbConn| panic!("a bug in a hook"));
    ///     conn.on_commit(|| panic!("a bug in a hook"));
    ///     Err(diesel::result::Error::RollbackTransaction)
    /// })
    /// .await
    /// .unwrap_err();
    /// # Ok(())
    /// # }
    /// ```
    #[track_caller]
    #[inline(always)]
    pub fn on_commit_async<Fut, R>(&mut self, future: Fut)
    where
        Fut: Future<Output = R> + Send + 'static,
        R: HookResult + 'static,
    {
        let label = HookLabel::new(Location::caller(), type_name::<Fut>());
        let hook = hooks::future_hook(label, future);
        self.register(label, AsyncHook::Commit(AsyncCommitHook::Future(hook)));
    }

    /// As [`on_commit`](Self::on_commit), and `f`, an async closure, receives
    /// the connection at `d == 0` after COMMIT: a hook it registers runs
    /// right after it (depth first), and a transaction it opens is a fresh
    /// one with its own hooks.
    ///
    /// ```
    /// use diesel::SqliteConnection;
    /// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// use diesel::result::Error;
    /// use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
    /// use diesel_on_commit::AsyncHookedConnection;
    ///
    /// type DbConn = AsyncHookedConnection<SyncConnectionWrapper<SqliteConnection>>;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
    /// let mut conn = DbConn::establish(":memory:").await?;
    /// conn.batch_execute("CREATE TABLE audit (what TEXT)").await?;
    /// conn.transaction::<_, Error, _>(async |conn| {
    ///     conn.on_commit_with(async |conn: &mut DbConn| {
    ///         assert!(!conn.in_transaction()); // after COMMIT, at depth 0
    ///         diesel::sql_query("INSERT INTO audit VALUES ('order placed')")
    ///             .execute(conn)
    ///             .await
    ///     });
    ///     Ok(())
    /// })
    /// .await?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[track_caller]
    pub fn on_commit_with<F, R>(&mut self, f: F)
    where
        F: for<'c> AsyncHookFn<&'c mut Self, R, Fut: Send> + Send + 'static,
        R: HookResult + 'static,
    {
        let label = HookLabel::new(Location::caller(), type_name::<F>());
        self.register(
            label,
            AsyncHook::Commit(AsyncCommitHook::With(hooks::with_hook(f))),
        );
    }

    /// Registers `f` to run after the level it was registered in, or an
    /// enclosing one, rolled back; as
    /// [`HookedConnection::on_rollback`](crate::HookedConnection::on_rollback).
    /// It is awaited in one registration order with `on_rollback_async`
    /// hooks, before the rolling-back call returns.
    ///
    /// ```
    /// use diesel::SqliteConnection;
    /// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// use diesel::result::Error;
    /// use diesel_async::AsyncConnection;
    /// use diesel_on_commit::AsyncHookedConnection;
    /// use std::sync::mpsc;
    ///
    /// type DbConn = AsyncHookedConnection<SyncConnectionWrapper<SqliteConnection>>;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
    /// let mut conn = DbConn::establish(":memory:").await?;
    /// let (tx, rx) = mpsc::channel();
    /// let result = conn
    ///     .transaction::<(), _, _>(async |conn| {
    ///         conn.on_rollback(move || tx.send("release the reserved stock"));
    ///         Err(Error::RollbackTransaction)
    ///     })
    ///     .await;
    /// assert!(result.is_err());
    /// assert_eq!(rx.try_recv(), Ok("release the reserved stock"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[track_caller]
    #[inline(always)]
    pub fn on_rollback<F, R>(&mut self, f: F)
    where
        F: FnOnce() -> R + Send + 'static,
        R: HookResult,
    {
        let label = HookLabel::new(Location::caller(), type_name::<F>());
        self.register(label, AsyncHook::Rollback(plain(f)));
    }

    /// Registers a future to be awaited after the level it was registered
    /// in, or an enclosing one, rolled back. A future that only panics,
    /// `async { panic!("..") }`, needs no annotation (see
    /// [`on_commit_async`](Self::on_commit_async)).
    ///
    /// ```
    /// use diesel::SqliteConnection;
    /// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// use diesel::result::Error;
    /// use diesel_async::AsyncConnection;
    /// use diesel_on_commit::AsyncHookedConnection;
    /// use std::sync::mpsc;
    ///
    /// type DbConn = AsyncHookedConnection<SyncConnectionWrapper<SqliteConnection>>;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
    /// let mut conn = DbConn::establish(":memory:").await?;
    /// let (tx, rx) = mpsc::channel();
    /// let result = conn
    ///     .transaction::<(), _, _>(async |conn| {
    ///         // e.g. `async move { payments.refund(charge).await }`
    ///         conn.on_rollback_async(async move { tx.send("refund") });
    ///         Err(Error::RollbackTransaction)
    ///     })
    ///     .await;
    /// assert!(result.is_err());
    /// assert_eq!(rx.try_recv(), Ok("refund"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[track_caller]
    #[inline(always)]
    pub fn on_rollback_async<Fut, R>(&mut self, future: Fut)
    where
        Fut: Future<Output = R> + Send + 'static,
        R: HookResult + 'static,
    {
        let label = HookLabel::new(Location::caller(), type_name::<Fut>());
        let hook = hooks::future_hook(label, future);
        self.register(label, AsyncHook::RollbackFuture(hook));
    }

    /// Registers an async closure to be awaited inside the transaction, just
    /// before the outermost COMMIT, with the connection (rule 5): an `Err`
    /// (or a panic) stops the remaining ones, rolls the transaction back,
    /// and is returned from `transaction()` (or resumed).
    ///
    /// # Panics
    ///
    /// Outside a transaction, under every policy.
    ///
    /// ```
    /// use diesel::SqliteConnection;
    /// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// use diesel::result::Error;
    /// use diesel_async::{AsyncConnection, SimpleAsyncConnection};
    /// use diesel_on_commit::AsyncHookedConnection;
    ///
    /// type DbConn = AsyncHookedConnection<SyncConnectionWrapper<SqliteConnection>>;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
    /// let mut conn = DbConn::establish(":memory:").await?;
    /// // A last check inside the transaction, which may query: an Err vetoes the COMMIT.
    /// let result = conn
    ///     .transaction::<(), Error, _>(async |conn| {
    ///         conn.before_commit(async |conn: &mut DbConn| {
    ///             conn.batch_execute("SELECT 1").await?;
    ///             Err(Error::NotFound)
    ///         });
    ///         Ok(())
    ///     })
    ///     .await;
    /// assert!(matches!(result, Err(Error::NotFound)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[track_caller]
    pub fn before_commit<F>(&mut self, f: F)
    where
        F: for<'c> AsyncHookFn<&'c mut Self, QueryResult<()>, Fut: Send> + Send + 'static,
    {
        let label = HookLabel::new(Location::caller(), type_name::<F>());
        self.register(label, AsyncHook::BeforeCommit(hooks::before_hook(f)));
    }

    /// Whether a user transaction is open: `d >= 1`. Inside a test
    /// transaction alone this is `false`.
    ///
    /// ```
    /// use diesel::SqliteConnection;
    /// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// use diesel::result::Error;
    /// use diesel_async::AsyncConnection;
    /// use diesel_on_commit::AsyncHookedConnection;
    ///
    /// type DbConn = AsyncHookedConnection<SyncConnectionWrapper<SqliteConnection>>;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
    /// let mut conn = DbConn::establish(":memory:").await?;
    /// assert!(!conn.in_transaction());
    /// conn.transaction::<_, Error, _>(async |conn| {
    ///     assert!(conn.in_transaction());
    ///     Ok(())
    /// })
    /// .await?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn in_transaction(&mut self) -> bool {
        self.check_levels() != DepthCheck::Broken && self.user_depth() >= 1
    }

    /// Queues `hook` at the current level, or applies rule 2 at `d == 0`.
    /// Inlined into each registering call: when the levels were checked
    /// and nothing reached the inner connection since (hooks registered in
    /// a row), two flag tests and the push; else [`register_slow`](Self::register_slow).
    #[inline(always)]
    pub(crate) fn register(&mut self, label: HookLabel, hook: AsyncHook<C>) {
        if let Some(level) = self.state.checked_open_level() {
            self.state.queue_at(level, Entry { label, hook });
        } else {
            self.register_slow(label, hook);
        }
    }

    /// [`register`](Self::register) with the depth check (rules 1, 2, 8, 9).
    #[inline(never)]
    fn register_slow(&mut self, label: HookLabel, hook: AsyncHook<C>) {
        let check = self.check_levels();
        if let Some(level) = self.state.open_level(check) {
            self.state.queue_at(level, Entry { label, hook });
        } else if let Some(hook) = self.state.place_outside_level(check, label, hook) {
            self.run_at_once(label, hook);
        }
    }

    /// Rule 2 on the async wrapper: a sync hook runs at once; an async one
    /// registered by a running hook runs right after it; otherwise an async
    /// one cannot be awaited before the registering call returns and goes
    /// to a spawned task (or is reported).
    #[cold]
    #[inline(never)]
    fn run_at_once(&mut self, label: HookLabel, hook: AsyncCommitHook<C>) {
        let is_async = matches!(hook, AsyncCommitHook::Future(_) | AsyncCommitHook::With(_));
        if is_async && self.state.later().hook_runs > 0 {
            // A hook is being awaited: this one runs right after it.
            self.state.later().next.push(Entry {
                label,
                hook: AsyncHook::Commit(hook),
            });
            return;
        }
        let Some(hook) = self.state.capture_or_pass(label, hook) else {
            return;
        };
        let mut panics = FirstPanic::new();
        let mut conn = Raised::new(self, Counter::CommitHooksRunning);
        match hook {
            AsyncCommitHook::Plain(f) => run_plain(f, &label, &mut panics),
            AsyncCommitHook::Robust(f) => run_robust(f, &label),
            AsyncCommitHook::WithSync(f) => {
                if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| f(&mut conn, &label)))
                {
                    panics.record(label, payload);
                }
            }
            hook @ (AsyncCommitHook::Future(_) | AsyncCommitHook::With(_)) => orphaned([Orphan {
                label,
                hook: AsyncHook::Commit(hook),
                why: "it was registered outside a transaction, where the registering call cannot await it",
            }]),
        }
        drop(conn);
        panics.finish(
            self.state.hook_panics(),
            false,
            "while running at once outside a transaction",
        );
    }
}

// Not listed under a misuse's error: its notes say what to write, the
// same with and without the `async` feature.
#[diagnostic::do_not_recommend]
impl<C: AsyncConnection> TransactionHooks for AsyncHookedConnection<C> {
    #[track_caller]
    fn on_commit<F, R>(&mut self, f: F)
    where
        F: FnOnce() -> R + Send + 'static,
        R: HookResult,
    {
        AsyncHookedConnection::on_commit(self, f)
    }

    #[track_caller]
    fn on_commit_robust<F, R>(&mut self, f: F)
    where
        F: FnOnce() -> R + Send + 'static,
        R: HookResult,
    {
        AsyncHookedConnection::on_commit_robust(self, f)
    }

    #[track_caller]
    fn on_rollback<F, R>(&mut self, f: F)
    where
        F: FnOnce() -> R + Send + 'static,
        R: HookResult,
    {
        AsyncHookedConnection::on_rollback(self, f)
    }

    fn in_transaction(&mut self) -> bool {
        AsyncHookedConnection::in_transaction(self)
    }

    #[track_caller]
    #[inline(always)]
    fn __on_commit_labeled<F, R>(&mut self, text: &'static str, f: F)
    where
        F: FnOnce() -> R + Send + 'static,
        R: HookResult,
    {
        let label = HookLabel::new(Location::caller(), text);
        self.register(label, AsyncHook::Commit(AsyncCommitHook::Plain(plain(f))));
    }

    #[track_caller]
    #[inline(always)]
    fn __on_commit_robust_labeled<F, R>(&mut self, text: &'static str, f: F)
    where
        F: FnOnce() -> R + Send + 'static,
        R: HookResult,
    {
        let label = HookLabel::new(Location::caller(), text);
        self.register(label, AsyncHook::Commit(AsyncCommitHook::Robust(plain(f))));
    }

    /// A sync closure given the connection after COMMIT (for `on_commit!`
    /// with a one-parameter closure); for async work, use
    /// [`AsyncHookedConnection::on_commit_with`] with an async closure, or
    /// [`AsyncHookedConnection::on_commit_async`].
    #[track_caller]
    fn __on_commit_with_labeled<F, R>(&mut self, text: &'static str, f: F)
    where
        F: FnOnce(&mut Self) -> R + Send + 'static,
        R: HookResult,
    {
        let label = HookLabel::new(Location::caller(), text);
        let f = Box::new(move |conn: &mut Self, label: &HookLabel| f(conn).__report(label));
        self.register(label, AsyncHook::Commit(AsyncCommitHook::WithSync(f)));
    }
}

// Not listed under a misuse's error: its notes say what to write.
#[diagnostic::do_not_recommend]
impl<C: AsyncConnection> AsyncTransactionHooks for AsyncHookedConnection<C> {
    #[track_caller]
    #[inline(always)]
    fn __on_commit_async_labeled<Fut, R>(&mut self, text: &'static str, future: Fut)
    where
        Fut: Future<Output = R> + Send + 'static,
        R: HookResult + 'static,
    {
        let label = HookLabel::new(Location::caller(), text);
        let hook = hooks::future_hook(label, future);
        self.register(label, AsyncHook::Commit(AsyncCommitHook::Future(hook)));
    }

    #[track_caller]
    fn __on_commit_with_async_labeled<F, R>(&mut self, text: &'static str, f: F)
    where
        F: for<'c> AsyncHookFn<&'c mut Self, R, Fut: Send> + Send + 'static,
        R: HookResult + 'static,
    {
        let label = HookLabel::new(Location::caller(), text);
        self.register(
            label,
            AsyncHook::Commit(AsyncCommitHook::With(hooks::with_hook(f))),
        );
    }
}
