//! Test support on the async wrapper: test transactions (rule 11) and
//! capturing `on_commit`-kind hooks (rule 12). The rules themselves are in
//! `rules/baseline.rs` and `rules/capture.rs`, shared with the sync wrapper.

use std::fmt;
use std::panic;
use std::pin::pin;

use diesel::result::QueryResult;
use diesel_async::{AsyncConnection, TransactionManager};

use crate::async_hooked::connection::{AsyncHookedConnection, Inner};
use crate::async_hooked::hooks::{AsyncCommitHook, AsyncHook, CatchUnwind};
use crate::async_hooked::manager::AsyncHookedTransactionManager;
use crate::rules::baseline::{
    assert_no_transaction, keep_and_roll_back, nested_test_outcome, test_outcome,
    test_transaction_nests,
};
use crate::rules::capture::Capture;
use crate::rules::label::HookLabel;
use crate::rules::queue::Entry;
use crate::transaction_hooks::AsyncHookFn;

/// The `on_commit`-kind hooks captured by
/// [`AsyncHookedConnection::capture_on_commit`], in the order they would
/// have run: [`CapturedHooks`](crate::CapturedHooks) for the async wrapper.
///
/// ```
/// use diesel::SqliteConnection;
/// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
/// use diesel::result::Error;
/// use diesel_async::AsyncConnection;
/// use diesel_on_commit::{AsyncHookedConnection, Capture};
/// use std::sync::mpsc;
///
/// type DbConn = AsyncHookedConnection<SyncConnectionWrapper<SqliteConnection>>;
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
/// let mut conn = DbConn::establish(":memory:").await?;
/// let (tx, rx) = mpsc::channel();
/// let ((), hooks) = conn
///     .capture_on_commit(Capture::Collect, async |conn: &mut DbConn| {
///         conn.transaction::<_, Error, _>(async |conn| {
///             conn.on_commit_async(async move { tx.send("published") });
///             Ok(())
///         })
///         .await
///         .unwrap();
///     })
///     .await;
/// assert_eq!(hooks.len(), 1); // committed, captured, not yet run
/// assert!(rx.try_recv().is_err());
/// hooks.run(&mut conn).await;
/// assert_eq!(rx.try_recv(), Ok("published"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "captured hooks do nothing unless inspected or run with `AsyncCapturedHooks::run`"]
pub struct AsyncCapturedHooks<C: AsyncConnection> {
    labels: Vec<HookLabel>,
    /// Empty under [`Capture::Execute`]: those hooks already ran.
    hooks: Vec<AsyncCommitHook<C>>,
}

impl<C: AsyncConnection> AsyncCapturedHooks<C> {
    /// How many hooks were captured.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether no hook was captured.
    ///
    /// ```
    /// use diesel::SqliteConnection;
    /// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// use diesel::result::Error;
    /// use diesel_async::AsyncConnection;
    /// use diesel_on_commit::{AsyncHookedConnection, Capture};
    ///
    /// type DbConn = AsyncHookedConnection<SyncConnectionWrapper<SqliteConnection>>;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
    /// let mut conn = DbConn::establish(":memory:").await?;
    /// let ((), hooks) = conn
    ///     .capture_on_commit(Capture::Collect, async |conn: &mut DbConn| {
    ///         let _ = conn
    ///             .transaction::<(), _, _>(async |conn| {
    ///                 conn.on_commit(|| println!("discarded by the rollback"));
    ///                 Err(Error::RollbackTransaction)
    ///             })
    ///             .await;
    ///     })
    ///     .await;
    /// assert!(hooks.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The captured hooks' labels, in capture order; each displays as
    /// `file:line: text`.
    ///
    /// ```
    /// use diesel::SqliteConnection;
    /// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// use diesel::result::Error;
    /// use diesel_async::AsyncConnection;
    /// use diesel_on_commit::{AsyncHookedConnection, Capture};
    ///
    /// type DbConn = AsyncHookedConnection<SyncConnectionWrapper<SqliteConnection>>;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
    /// let mut conn = DbConn::establish(":memory:").await?;
    /// let ((), hooks) = conn
    ///     .capture_on_commit(Capture::Execute, async |conn: &mut DbConn| {
    ///         conn.transaction::<_, Error, _>(async |conn| {
    ///             conn.on_commit(|| println!("email"));
    ///             Ok(())
    ///         })
    ///         .await
    ///         .unwrap();
    ///     })
    ///     .await;
    /// assert_eq!(hooks.labels().len(), 1);
    /// assert!(hooks.labels()[0].to_string().contains("{{closure}}"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn labels(&self) -> &[HookLabel] {
        &self.labels
    }

    /// Runs the collected hooks, in order, with `conn`, awaiting the async
    /// ones, as they would have run after COMMIT. Does nothing for hooks
    /// captured with [`Capture::Execute`].
    ///
    /// ```
    /// use diesel::SqliteConnection;
    /// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// use diesel::result::Error;
    /// use diesel_async::AsyncConnection;
    /// use diesel_on_commit::{AsyncHookedConnection, Capture};
    /// use std::sync::mpsc;
    ///
    /// type DbConn = AsyncHookedConnection<SyncConnectionWrapper<SqliteConnection>>;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
    /// let mut conn = DbConn::establish(":memory:").await?;
    /// let (tx, rx) = mpsc::channel();
    /// let ((), hooks) = conn
    ///     .capture_on_commit(Capture::Collect, async |conn: &mut DbConn| {
    ///         conn.transaction::<_, Error, _>(async |conn| {
    ///             conn.on_commit_async(async move { tx.send("published") });
    ///             Ok(())
    ///         })
    ///         .await
    ///         .unwrap();
    ///     })
    ///     .await;
    /// assert_eq!(hooks.len(), 1); // committed, captured, not yet run
    /// assert!(rx.try_recv().is_err());
    /// hooks.run(&mut conn).await;
    /// assert_eq!(rx.try_recv(), Ok("published"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn run(self, conn: &mut AsyncHookedConnection<C>) {
        let hooks = self
            .labels
            .into_iter()
            .zip(self.hooks)
            .map(|(label, hook)| Entry {
                label,
                hook: AsyncHook::Commit(hook),
            })
            .collect();
        let panics = conn.run_commit_hooks(hooks).await;
        panics.finish(
            conn.state.hook_panics(),
            false,
            "while run from AsyncCapturedHooks::run",
        );
    }
}

impl<C: AsyncConnection> fmt::Debug for AsyncCapturedHooks<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncCapturedHooks")
            .field("labels", &self.labels)
            .field("pending", &self.hooks.len())
            .finish()
    }
}

/// Closes the capture if the body's future is dropped.
struct CaptureGuard<'a, C: AsyncConnection> {
    conn: &'a mut AsyncHookedConnection<C>,
}

impl<C: AsyncConnection> Drop for CaptureGuard<'_, C> {
    fn drop(&mut self) {
        self.conn.state.close_capture();
    }
}

impl<C: AsyncConnection> AsyncHookedConnection<C> {
    /// Runs `body` inside a test transaction that is rolled back at the end
    /// (rule 11): inside it `in_transaction()` is `false`, and the outermost
    /// *user* commit fires hooks. Returns the body's `Ok` value.
    ///
    /// Inside an open transaction, as Diesel's `test_transaction`, `body`
    /// runs in a savepoint that is rolled back at the end: its `on_commit`
    /// hooks are discarded and its `on_rollback` hooks run (rule 4).
    ///
    /// # Panics
    ///
    /// If the body returns `Err`, as Diesel's `test_transaction`.
    ///
    /// ```
    /// use diesel::SqliteConnection;
    /// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// use diesel::result::Error;
    /// use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
    /// use diesel_on_commit::AsyncHookedConnection;
    /// use std::sync::mpsc;
    ///
    /// type DbConn = AsyncHookedConnection<SyncConnectionWrapper<SqliteConnection>>;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
    /// let mut conn = DbConn::establish(":memory:").await?;
    /// conn.batch_execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)").await?;
    /// let (tx, rx) = mpsc::channel();
    /// conn.test_transaction::<_, Error, _>(async |conn| {
    ///     assert!(!conn.in_transaction()); // the test transaction is the baseline
    ///     conn.transaction::<_, Error, _>(async |conn| {
    ///         diesel::sql_query("INSERT INTO orders (id) VALUES (1)")
    ///             .execute(conn)
    ///             .await?;
    ///         conn.on_commit(move || tx.send("fired by the user commit"));
    ///         Ok(())
    ///     })
    ///     .await?;
    ///     assert_eq!(rx.try_recv(), Ok("fired by the user commit"));
    ///     Ok(())
    /// })
    /// .await;
    /// // The test transaction was rolled back: id 1 is free again.
    /// diesel::sql_query("INSERT INTO orders (id) VALUES (1)")
    ///     .execute(&mut conn)
    ///     .await?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn test_transaction<R, E, F>(&mut self, body: F) -> R
    where
        F: for<'r> AsyncHookFn<&'r mut Self, Result<R, E>>,
        E: fmt::Debug,
    {
        self.check_levels();
        if test_transaction_nests(self.inner_status()) {
            let mut slot = None;
            let slot_ref = &mut slot;
            let savepoint = AsyncHookedTransactionManager::<C>::run(self, async move |conn| {
                let result = body(conn).await;
                keep_and_roll_back(slot_ref, result)
            })
            .await;
            return nested_test_outcome(slot, savepoint);
        }
        begin_test_transaction(self)
            .await
            .unwrap_or_else(|e| panic!("could not begin the test transaction: {e}"));
        let outcome = CatchUnwind::new(pin!(body(&mut *self))).await;
        // User levels the body left open are rolled back first, with their hooks.
        let _ = AsyncHookedTransactionManager::<C>::roll_back_level(self, 1).await;
        if self.state.test_transaction_ending() {
            self.state.touched();
            if let Err(e) = Inner::<C>::rollback_transaction(&mut self.inner).await {
                tracing::error!("rolling back the test transaction failed: {e}");
            }
        }
        self.check_levels();
        test_outcome(outcome)
    }

    /// Runs `body` and captures every `on_commit`-kind hook that would have
    /// run during it, in the order it would have run (rule 12; Django's
    /// `captureOnCommitCallbacks`).
    ///
    /// # Panics
    ///
    /// Inside a user transaction (`d >= 1`) or inside another capture.
    ///
    /// ```
    /// use diesel::SqliteConnection;
    /// use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    /// use diesel::result::Error;
    /// use diesel_async::AsyncConnection;
    /// use diesel_on_commit::{AsyncHookedConnection, Capture};
    /// use std::sync::mpsc;
    ///
    /// type DbConn = AsyncHookedConnection<SyncConnectionWrapper<SqliteConnection>>;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
    /// let mut conn = DbConn::establish(":memory:").await?;
    /// let (tx, rx) = mpsc::channel();
    /// let ((), hooks) = conn
    ///     .capture_on_commit(Capture::Collect, async |conn: &mut DbConn| {
    ///         conn.transaction::<_, Error, _>(async |conn| {
    ///             conn.on_commit_async(async move { tx.send("published") });
    ///             Ok(())
    ///         })
    ///         .await
    ///         .unwrap();
    ///     })
    ///     .await;
    /// assert_eq!(hooks.len(), 1); // committed, captured, not yet run
    /// assert!(rx.try_recv().is_err());
    /// hooks.run(&mut conn).await;
    /// assert_eq!(rx.try_recv(), Ok("published"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn capture_on_commit<R, F>(
        &mut self,
        mode: Capture,
        body: F,
    ) -> (R, AsyncCapturedHooks<C>)
    where
        F: for<'r> AsyncHookFn<&'r mut Self, R>,
    {
        self.check_levels();
        let depth = self.user_depth();
        self.state.open_capture(mode, depth);
        let guard = CaptureGuard { conn: self };
        let outcome = CatchUnwind::new(pin!(body(&mut *guard.conn))).await;
        let (labels, hooks) = guard.conn.state.close_capture();
        drop(guard);
        match outcome {
            Ok(value) => (value, AsyncCapturedHooks { labels, hooks }),
            Err(payload) => panic::resume_unwind(payload),
        }
    }
}

/// `begin_test_transaction()`: the test transaction becomes the baseline.
pub(crate) async fn begin_test_transaction<C: AsyncConnection>(
    conn: &mut AsyncHookedConnection<C>,
) -> QueryResult<()> {
    conn.check_levels();
    conn.run_due().await;
    assert_no_transaction(conn.inner_status());
    conn.state.touched();
    Inner::<C>::begin_transaction(&mut conn.inner).await?;
    conn.state
        .test_transaction_began(Inner::<C>::transaction_manager_status_mut(&mut conn.inner));
    Ok(())
}
