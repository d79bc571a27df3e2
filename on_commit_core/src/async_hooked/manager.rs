//! The async transaction manager: begin, commit, rollback, the panic guard,
//! and cancellation (rules 3, 4, 5, 7, 9, A1, C1–C3).
//!
//! `AsyncHookedTransactionManager<C>` awaits `C`'s own manager for every step
//! and then reads the inner depth back, as the sync manager does; the level
//! bookkeeping is the shared `HookState` (`rules/levels.rs`). What is particular to
//! async: hooks are awaited after the step (`HookRun`), and a step whose
//! future is dropped before it finished marks the connection broken.

use std::marker::PhantomData;
use std::panic::{self, AssertUnwindSafe};
use std::pin::pin;

use diesel::result::{Error, QueryResult};
use diesel_async::{AsyncConnection, TransactionManager};

use crate::async_hooked::connection::{AsyncHookedConnection, Inner};
use crate::async_hooked::hooks::{AsyncHook, CatchUnwind, HookRun};
use crate::async_hooked::later::{orphaned, Orphan};
use crate::rules::db_status::depth_of;
use crate::rules::failures::FirstPanic;
use crate::rules::levels::{Counter, DepthCheck, Raised};
use crate::transaction_hooks::AsyncHookFn;

/// `conn.run_due().await`, with the emptiness test written out at the
/// call site: a step with nothing due (the common case) neither builds nor
/// polls a `run_due` future (~29 instructions per call site otherwise).
macro_rules! run_due {
    ($conn:expr) => {
        if $conn.has_due() {
            $conn.run_due_now().await;
        }
    };
}

/// The transaction manager of [`AsyncHookedConnection<C>`]: `C`'s own
/// manager plus the hook rules. You do not use it directly;
/// `transaction()`, `begin_test_transaction()` and pools call it.
///
/// ```
/// use diesel::SqliteConnection;
/// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
/// use diesel::result::Error;
/// use diesel_async::{AsyncConnection, TransactionManager};
/// use diesel_on_commit::{AsyncHookedConnection, AsyncHookedTransactionManager};
///
/// type DbConn = AsyncHookedConnection<SyncConnectionWrapper<SqliteConnection>>;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
/// type Manager = AsyncHookedTransactionManager<SyncConnectionWrapper<SqliteConnection>>;
///
/// let mut conn = DbConn::establish(":memory:").await?;
/// conn.transaction::<_, Error, _>(async |conn| {
///     // Generic code that reads the depth through diesel-async's trait:
///     let depth = Manager::transaction_manager_status_mut(conn).transaction_depth()?;
///     assert_eq!(depth.map(|d| d.get()), Some(1));
///     Ok(())
/// })
/// .await?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct AsyncHookedTransactionManager<C>(PhantomData<fn() -> C>);

impl<C> std::fmt::Debug for AsyncHookedTransactionManager<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AsyncHookedTransactionManager")
    }
}

/// How a level is opened on the inner connection: `C`'s own manager
/// ([`PlainBegin`]: `BEGIN` or a savepoint), or a `BEGIN` with transaction
/// options (`options/builder.rs`). The wrapper's guards are around it
/// either way.
pub(crate) trait BeginLevel<C: AsyncConnection> {
    /// Opens the level on `inner`.
    fn begin(&self, inner: &mut C) -> impl std::future::Future<Output = QueryResult<()>> + Send;
}

/// `C`'s own `begin_transaction`.
pub(crate) struct PlainBegin;

impl<C: AsyncConnection> BeginLevel<C> for PlainBegin {
    #[inline]
    fn begin(&self, inner: &mut C) -> impl std::future::Future<Output = QueryResult<()>> + Send {
        Inner::<C>::begin_transaction(inner)
    }
}

/// Why hooks that were due did not run where they should have.
const DROPPED_AFTER_COMMIT: &str =
    "the caller's future was dropped after COMMIT succeeded, while hooks ran";
const DROPPED_AFTER_ROLLBACK: &str =
    "the caller's future was dropped after a rollback, while on_rollback hooks ran";

/// A transaction step in flight (the body, BEGIN, COMMIT, ROLLBACK). If its
/// future is dropped before it finished, the transaction is abandoned: not
/// committed (or a COMMIT whose outcome is unknown), so the connection is
/// marked broken (pools drop it), its `on_commit` hooks are discarded and
/// its `on_rollback` hooks are due (rule 9). An enclosing transaction whose
/// future is still alive awaits them (its COMMIT then fails); else they go,
/// with every other hook the dropped futures left due, to one task.
struct InFlight<'a, C: AsyncConnection> {
    conn: &'a mut AsyncHookedConnection<C>,
    /// Abandon only while the wrapper still has levels `>= level` open
    /// (0: always).
    level: u32,
    what: &'static str,
    armed: bool,
}

const ABANDONED: &str = "the caller's future was dropped before the transaction finished";

impl<'a, C: AsyncConnection> InFlight<'a, C> {
    fn new(conn: &'a mut AsyncHookedConnection<C>, level: u32, what: &'static str) -> Self {
        conn.state.later().live += 1;
        Self {
            conn,
            level,
            what,
            armed: true,
        }
    }

    #[cold]
    fn abandon(&mut self) {
        let conn = &mut *self.conn;
        tracing::warn!(
            levels = conn.state.levels(),
            "{}: the transaction is abandoned (not committed, or a COMMIT whose outcome is \
             unknown) and the connection is marked broken",
            self.what
        );
        // diesel-async's SyncConnectionWrapper panics here while its
        // blocking task still holds the state; no panic may leave `drop`.
        let inner = &mut conn.inner;
        let marked = panic::catch_unwind(AssertUnwindSafe(|| {
            Inner::<C>::transaction_manager_status_mut(inner).set_in_error()
        }));
        if marked.is_err() {
            conn.state.mark_lost();
        }
        conn.state.touched();
        conn.state.connection_broken();
    }
}

impl<C: AsyncConnection> Drop for InFlight<'_, C> {
    #[inline]
    fn drop(&mut self) {
        if self.armed && self.conn.state.levels() >= self.level {
            self.abandon();
        }
        let later = self.conn.state.later();
        later.live -= 1;
        if later.live == 0 && !(later.due.is_empty() && later.orphans.is_empty()) {
            self.conn.last_guard_left();
        }
    }
}

impl<C: AsyncConnection> AsyncHookedConnection<C> {
    /// The outermost guard of a future in flight went away with hooks left
    /// due (no enclosing future is left to await them) or orphaned: they
    /// go to one task, in order (or to the log).
    #[cold]
    #[inline(never)]
    fn last_guard_left(&mut self) {
        let later = self.state.later();
        let due = std::mem::take(&mut later.due);
        later.orphans.extend(due.into_iter().map(|e| Orphan {
            label: e.label,
            hook: e.hook,
            why: ABANDONED,
        }));
        if !later.orphans.is_empty() {
            orphaned(std::mem::take(&mut later.orphans));
        }
    }
}

impl<C: AsyncConnection> AsyncHookedConnection<C> {
    /// Rule C1 for the callers that drive the wrapper through diesel-async's
    /// `TransactionManager` trait rather than its own `transaction` (the
    /// guard of `#[atomic] async fn`, on the wrapper, on a pool guard, or in
    /// generic code): when such a caller's future is dropped mid-transaction,
    /// its guard marks the status in error and then asks
    /// `is_broken_transaction_manager`, the one synchronous entry the trait
    /// offers, which lands here. A level left open on a status in error (or
    /// one that cannot be read: a statement was abandoned in flight) is
    /// handled as a broken connection (rule 9), and, when no future of the
    /// wrapper's own is in flight to await them (an `InFlight` or a
    /// `HookRun`, which hand them on when they go), the hooks that became
    /// due go to one spawned task at once, as `InFlight` does: without the
    /// connection being touched again or dropped. Pools reach it too (their
    /// `is_broken` check). Costs a flag test when no level is open.
    pub(crate) fn settle_abandoned(&mut self) {
        if self.state.levels() == 0 {
            return;
        }
        let inner = &mut self.inner;
        let readable = panic::catch_unwind(AssertUnwindSafe(|| {
            let _ = Inner::<C>::transaction_manager_status_mut(inner);
        }));
        if readable.is_err() {
            // diesel-async's SyncConnectionWrapper panics while a blocking
            // task it started still holds the connection: a statement was
            // dropped in flight, so its transaction cannot go on.
            self.state.mark_lost();
            self.state.connection_broken();
        } else {
            self.state.touched();
            if self.check_levels() != DepthCheck::Broken {
                return;
            }
        }
        let later = self.state.later();
        if later.live == 0 && !later.due.is_empty() {
            let due = std::mem::take(&mut later.due);
            orphaned(due.into_iter().map(|e| Orphan {
                label: e.label,
                hook: e.hook,
                why: ABANDONED,
            }));
        }
    }

    /// Runs `body` in a transaction: diesel-async's `transaction`, with the
    /// hook rules of the contract (see [`HookedConnection::transaction`](crate::HookedConnection::transaction)),
    /// a panic guard (a panic in `body` rolls the level back and is resumed),
    /// and the cancellation rules of [`AsyncHookedConnection`].
    ///
    /// **A panic out of `transaction` does not always mean a rollback**: under
    /// [`HookPanics::Resume`](crate::HookPanics::Resume), a panic of an
    /// `on_commit` hook is resumed after COMMIT succeeded and the other hooks
    /// ran.
    ///
    /// ```
    /// use diesel::SqliteConnection;
    /// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// use diesel::result::Error;
    /// use diesel_async::{AsyncConnection, RunQueryDsl};
    /// use diesel_on_commit::AsyncHookedConnection;
    /// use std::sync::mpsc;
    ///
    /// type DbConn = AsyncHookedConnection<SyncConnectionWrapper<SqliteConnection>>;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
    /// let mut conn = DbConn::establish(":memory:").await?;
    /// let (tx, rx) = mpsc::channel();
    /// let id = conn
    ///     .transaction::<_, Error, _>(async |conn| {
    ///         diesel::sql_query("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
    ///             .execute(conn)
    ///             .await?;
    ///         diesel::sql_query("INSERT INTO orders (id) VALUES (1)")
    ///             .execute(conn)
    ///             .await?;
    ///         conn.on_commit(move || tx.send("order 1 confirmed"));
    ///         Ok(1)
    ///     })
    ///     .await?;
    /// assert_eq!(id, 1);
    /// assert_eq!(rx.try_recv(), Ok("order 1 confirmed"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn transaction<R, E, F>(&mut self, body: F) -> Result<R, E>
    where
        F: for<'r> AsyncHookFn<&'r mut Self, Result<R, E>>,
        E: From<diesel::result::Error>,
    {
        AsyncHookedTransactionManager::run(self, body).await
    }

    /// Awaits the hooks that became due (the `on_rollback` hooks of levels
    /// that rolled back), in registration order. (The manager's own steps
    /// use `run_due!`, which builds no future when nothing is due.)
    #[inline]
    pub(crate) async fn run_due(&mut self) {
        if self.has_due() {
            self.run_due_now().await;
        }
    }

    /// Whether hooks are due (see [`run_due`](Self::run_due)).
    #[inline]
    pub(crate) fn has_due(&mut self) -> bool {
        !self.state.later().due.is_empty()
    }

    #[cold]
    async fn run_due_now(&mut self) {
        let mut due = std::mem::take(&mut self.state.later().due);
        let policy = self.state.hook_panics();
        let never_resume = self.state.unwinding();
        let panics = match self.try_run_sync(&mut due, false) {
            Some(panics) => panics,
            None => {
                HookRun::new(self, due, false, DROPPED_AFTER_ROLLBACK)
                    .run()
                    .await
                    .0
            }
        };
        panics.finish(policy, never_resume, "after a rollback");
    }

    /// The outermost COMMIT succeeded (rule 5.4): the `on_commit`-kind hooks
    /// are awaited in registration order, at `d == 0`.
    async fn fire_commit_hooks(&mut self) {
        let Some(mut hooks) = self.state.committed_async() else {
            return; // no hook: nothing to run, nothing allocated
        };
        let fired = hooks.len();
        let (panics, spent) = match self.try_run_sync(&mut hooks, true) {
            Some(panics) => (panics, hooks),
            None => {
                HookRun::new(self, hooks, true, DROPPED_AFTER_COMMIT)
                    .run()
                    .await
            }
        };
        self.state.recycle(spent, fired);
        panics.finish(
            self.state.hook_panics(),
            false,
            "after COMMIT; the transaction is committed",
        );
    }

    /// Runs a batch of `on_commit`-kind hooks at `d == 0` (a capture's).
    pub(crate) async fn run_commit_hooks(
        &mut self,
        mut hooks: Vec<crate::rules::queue::Entry<AsyncHook<C>>>,
    ) -> FirstPanic {
        if let Some(panics) = self.try_run_sync(&mut hooks, true) {
            return panics;
        }
        let (panics, _) = HookRun::new(self, hooks, true, DROPPED_AFTER_COMMIT)
            .run()
            .await;
        panics
    }
}

impl<C: AsyncConnection> AsyncHookedTransactionManager<C> {
    /// `transaction()`: begin, the body with the panic guard and the
    /// cancellation guard, commit or roll back (rules 4, 5, 7; async rules).
    pub(crate) async fn run<F, R, E>(
        conn: &mut AsyncHookedConnection<C>,
        callback: F,
    ) -> Result<R, E>
    where
        F: for<'r> AsyncHookFn<&'r mut AsyncHookedConnection<C>, Result<R, E>>,
        E: From<Error>,
    {
        Self::run_with(conn, &PlainBegin, callback).await
    }

    /// `run`, with the level opened by `begin` (a `BEGIN` with transaction
    /// options): the same guards, the same rules.
    pub(crate) async fn run_with<B, F, R, E>(
        conn: &mut AsyncHookedConnection<C>,
        begin: &B,
        callback: F,
    ) -> Result<R, E>
    where
        B: BeginLevel<C>,
        F: for<'r> AsyncHookFn<&'r mut AsyncHookedConnection<C>, Result<R, E>>,
        E: From<Error>,
    {
        Self::begin(conn, begin).await?;
        let level = conn.state.levels();
        let mut guard = InFlight::new(
            conn,
            level,
            "the future of a transaction was dropped before it finished",
        );
        let outcome = CatchUnwind::new(pin!(callback(&mut *guard.conn))).await;
        let conn = &mut *guard.conn;
        let result = match outcome {
            Ok(Ok(_))
                if conn.check_levels() != DepthCheck::Broken && conn.state.levels() < level =>
            {
                // The level is already gone: the database rolled it back
                // after a failed statement the body swallowed, or it was
                // closed behind our back.
                run_due!(conn);
                Err(conn.state.take_level_gone_error().into())
            }
            Ok(Ok(value)) => match Self::commit(conn).await {
                Ok(()) => Ok(value),
                Err(commit_error) => {
                    let _ = Self::roll_back_level(conn, level).await;
                    run_due!(conn);
                    Err(commit_error.into())
                }
            },
            Ok(Err(user_error)) => {
                let rolled_back = Self::roll_back_level(conn, level).await;
                // Also when the level was gone already (a broken connection).
                run_due!(conn);
                match rolled_back {
                    Ok(()) | Err(Error::BrokenTransactionManager) => Err(user_error),
                    // The server had rolled everything back (a deadlock):
                    // its savepoint is gone; the body's error says why.
                    Err(_) if conn.state.aborted_all() => Err(user_error),
                    Err(rollback_error) => Err(rollback_error.into()),
                }
            }
            Err(payload) => {
                let mut unwinding = Raised::new(conn, Counter::Unwinding);
                if let Err(e) = Self::roll_back_level(&mut *unwinding, level).await {
                    tracing::error!("rollback after a panic in the transaction body failed: {e}");
                }
                run_due!(unwinding);
                drop(unwinding);
                guard.armed = false;
                panic::resume_unwind(payload)
            }
        };
        guard.armed = false;
        result
    }

    /// Opens a level; the wrapper's level count follows only if it
    /// succeeded.
    async fn begin<B: BeginLevel<C>>(
        conn: &mut AsyncHookedConnection<C>,
        begin: &B,
    ) -> QueryResult<()> {
        conn.check_levels();
        run_due!(conn);
        let was_checked = conn.state.is_checked();
        conn.state.touched();
        let mut step = InFlight::new(conn, 0, "the future of a BEGIN was dropped while it ran");
        let result = begin.begin(&mut step.conn.inner).await;
        step.armed = false;
        step.conn.state.observe_step(&result);
        result?;
        step.conn.state.began_checked(was_checked);
        Ok(())
    }

    /// Rule 5.1–5.2: `before_commit` hooks of level 1 are awaited in order,
    /// inside the transaction; ones they register run too. On an `Err` or a
    /// panic the transaction is rolled back and the error returned (panic
    /// resumed).
    async fn run_before_commit(conn: &mut AsyncHookedConnection<C>) -> QueryResult<()> {
        let mut cursor = 0;
        while let Some(entry) = conn.state.next_before_commit(&mut cursor) {
            let AsyncHook::BeforeCommit(f) = entry.hook else {
                unreachable!("next_before_commit returns before_commit hooks")
            };
            match CatchUnwind::new(f(&mut *conn)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::debug!(hook = %entry.label, "before_commit hook failed: {error}; rolling back");
                    let _ = Self::roll_back_level(conn, conn.state.levels()).await;
                    return Err(error);
                }
                Err(payload) => {
                    tracing::error!(hook = %entry.label, "before_commit hook panicked; rolling back");
                    let level = conn.state.levels();
                    let mut unwinding = Raised::new(conn, Counter::Unwinding);
                    let _ = Self::roll_back_level(&mut *unwinding, level).await;
                    run_due!(unwinding);
                    drop(unwinding);
                    panic::resume_unwind(payload);
                }
            }
        }
        Ok(())
    }

    /// Rolls back until the wrapper's levels are below `level` (the body may
    /// have left inner levels open). Returns the first error.
    pub(crate) async fn roll_back_level(
        conn: &mut AsyncHookedConnection<C>,
        level: u32,
    ) -> QueryResult<()> {
        let mut result = Ok(());
        while conn.state.levels() >= level && level >= 1 {
            let before = conn.state.levels();
            let r = Self::rollback(conn).await;
            if result.is_ok() {
                result = r;
            }
            if conn.state.levels() >= before {
                break; // no progress: the connection is broken; sync reports it
            }
        }
        result
    }

    /// Rolls back the innermost level. Its hooks and those of every level
    /// above it are discarded and its `on_rollback` hooks are awaited,
    /// whether the ROLLBACK succeeded or failed (the level is gone either
    /// way). A level the wrapper did not open is only delegated.
    async fn rollback(conn: &mut AsyncHookedConnection<C>) -> QueryResult<()> {
        if conn.check_levels() != DepthCheck::Matches || conn.state.levels() == 0 {
            run_due!(conn);
            conn.state.touched();
            return Inner::<C>::rollback_transaction(&mut conn.inner).await;
        }
        let level = conn.state.levels();
        // Just checked: the inner depth is what the levels stand for.
        let before = conn.state.expected_depth();
        conn.state.touched();
        let mut step = InFlight::new(conn, 0, "the future of a ROLLBACK was dropped while it ran");
        let result = Inner::<C>::rollback_transaction(&mut step.conn.inner).await;
        step.armed = false;
        let conn = &mut *step.conn;
        conn.state.observe_step(&result);
        let status = Inner::<C>::transaction_manager_status_mut(&mut conn.inner);
        conn.state.after_rollback(level, before, status);
        conn.state.checked_if_matches(status);
        run_due!(conn);
        result
    }

    /// Commits the innermost level: as the sync manager's
    /// `commit_transaction` (rules 3, 5), with the hooks awaited.
    async fn commit(conn: &mut AsyncHookedConnection<C>) -> QueryResult<()> {
        match conn.check_levels() {
            DepthCheck::Matches if conn.state.levels() > 0 => {}
            DepthCheck::Broken => {
                // Its hooks were handled as a rollback (rule 9): nothing may
                // commit now. Roll back as far as the connection allows.
                run_due!(conn);
                conn.state.touched();
                return Err(Inner::<C>::rollback_transaction(&mut conn.inner)
                    .await
                    .err()
                    .unwrap_or(Error::BrokenTransactionManager));
            }
            _ => {
                run_due!(conn);
                conn.state.touched();
                return Inner::<C>::commit_transaction(&mut conn.inner).await;
            }
        }
        run_due!(conn);
        let level = conn.state.levels();
        if level == 1 && conn.state.has_before_commit() {
            Self::run_before_commit(conn).await?;
            if conn.state.levels() != 1 || conn.check_levels() != DepthCheck::Matches {
                // A before_commit hook closed the transaction itself.
                run_due!(conn);
                return Err(Error::NotInTransaction);
            }
        }
        let every_error_aborts = conn.state.later().every_error_aborts;
        // One status read for rule 5.3 and the depth before COMMIT.
        let status = Inner::<C>::transaction_manager_status_mut(&mut conn.inner);
        if conn.state.aborted(status, every_error_aborts) {
            // Rule 5.3: roll back and return the error that aborted it.
            let error = conn.state.take_abort_error();
            tracing::debug!(
                "transaction aborted by an earlier error; rolling back instead of committing: {error}"
            );
            let _ = Self::roll_back_level(conn, conn.state.levels()).await;
            return Err(error);
        }
        let before = depth_of(status).unwrap_or(0);
        conn.state.touched();
        let mut step = InFlight::new(
            conn,
            0,
            "the future of a COMMIT was dropped while it ran (its outcome is unknown)",
        );
        let result = Inner::<C>::commit_transaction(&mut step.conn.inner).await;
        step.armed = false;
        let conn = &mut *step.conn;
        conn.state.observe_step(&result);
        let status = Inner::<C>::transaction_manager_status_mut(&mut conn.inner);
        let committed = conn
            .state
            .after_commit_inline(level, before, result.is_ok(), status);
        conn.state.checked_if_matches(status);
        if committed {
            conn.fire_commit_hooks().await;
        } else {
            run_due!(conn);
        }
        result
    }
}

impl<C: AsyncConnection> TransactionManager<AsyncHookedConnection<C>>
    for AsyncHookedTransactionManager<C>
{
    type TransactionStateData = <Inner<C> as TransactionManager<C>>::TransactionStateData;

    /// Begins a transaction or savepoint on the inner connection; on success
    /// the wrapper opens level `d + 1`, which holds no hook yet.
    async fn begin_transaction(conn: &mut AsyncHookedConnection<C>) -> QueryResult<()> {
        Self::begin(conn, &PlainBegin).await
    }

    /// Rolls back the innermost level (rule 4); its `on_rollback` hooks are
    /// awaited before this returns.
    async fn rollback_transaction(conn: &mut AsyncHookedConnection<C>) -> QueryResult<()> {
        Self::rollback(conn).await
    }

    /// Commits the innermost level: a savepoint's hooks join the enclosing
    /// level (rule 3); the outermost commit awaits `before_commit` hooks,
    /// refuses a transaction the database aborted (rule 5.3), sends COMMIT
    /// and then awaits the `on_commit`-kind hooks in registration order.
    async fn commit_transaction(conn: &mut AsyncHookedConnection<C>) -> QueryResult<()> {
        Self::commit(conn).await
    }

    /// diesel-async's `transaction`, plus the panic guard (rule 7) and the
    /// cancellation rules of [`AsyncHookedConnection`]: what generic code
    /// that calls `AsyncConnection::transaction` gets.
    // Not an `async fn`: the trait's lifetimes are spelled out.
    #[allow(clippy::manual_async_fn)]
    fn transaction<'a, 'conn, F, R, E>(
        conn: &'conn mut AsyncHookedConnection<C>,
        callback: F,
    ) -> impl std::future::Future<Output = Result<R, E>> + Send + 'conn
    where
        for<'r> F: AsyncFnOnce(&'r mut AsyncHookedConnection<C>) -> Result<R, E>
            + AsyncHookFn<&'r mut AsyncHookedConnection<C>, Result<R, E>, Fut: Send>
            + Send
            + 'a,
        E: From<Error> + Send,
        R: Send,
        'a: 'conn,
    {
        async move { Self::run(conn, callback).await }
    }

    fn transaction_manager_status_mut(
        conn: &mut AsyncHookedConnection<C>,
    ) -> &mut diesel::connection::TransactionManagerStatus {
        conn.state.touched();
        Inner::<C>::transaction_manager_status_mut(&mut conn.inner)
    }

    /// Also settles a level whose caller went away (see
    /// `settle_abandoned`): `#[atomic] async fn`'s guard calls this when its
    /// future is dropped.
    fn is_broken_transaction_manager(conn: &mut AsyncHookedConnection<C>) -> bool {
        conn.settle_abandoned();
        conn.state.lost() || Inner::<C>::is_broken_transaction_manager(&mut conn.inner)
    }
}
