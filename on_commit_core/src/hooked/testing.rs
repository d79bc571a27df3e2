//! Test support on the sync wrapper: test transactions (rule 11) and
//! capturing `on_commit` hooks (rule 12, Django's
//! `captureOnCommitCallbacks`). The rules themselves are in
//! `rules/baseline.rs` and `rules/capture.rs`.

use std::fmt;
use std::panic::{self, AssertUnwindSafe};

use diesel::connection::{Connection, TransactionManager};
use diesel::result::QueryResult;

use crate::hooked::connection::{HookedConnection, Inner};
use crate::hooked::hooks::{CommitHook, Hook};
use crate::hooked::manager::HookedTransactionManager;
use crate::rules::baseline::{
    assert_no_transaction, keep_and_roll_back, nested_test_outcome, test_outcome,
    test_transaction_nests,
};
use crate::rules::capture::Capture;
use crate::rules::label::HookLabel;
use crate::rules::queue::Entry;

/// The `on_commit`-kind hooks captured by
/// [`HookedConnection::capture_on_commit`], in the order they would have run.
///
/// ```
/// use diesel::prelude::*;
/// use diesel_on_commit::{Capture, HookedConnection};
/// use std::sync::mpsc;
///
/// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
/// let (tx, rx) = mpsc::channel();
/// let ((), hooks) = conn.capture_on_commit(Capture::Collect, |conn| {
///     conn.transaction::<_, diesel::result::Error, _>(|conn| {
///         conn.on_commit(move || tx.send("email"));
///         Ok(())
///     })
///     .unwrap();
/// });
/// assert_eq!(hooks.len(), 1);
/// assert!(hooks.labels()[0].location().file().ends_with(".rs"));
/// assert!(rx.try_recv().is_err()); // collected, not run
/// hooks.run(&mut conn);
/// assert_eq!(rx.try_recv(), Ok("email"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "captured hooks do nothing unless inspected or run with `CapturedHooks::run`"]
pub struct CapturedHooks<C: Connection> {
    labels: Vec<HookLabel>,
    /// Empty under [`Capture::Execute`]: those hooks already ran.
    hooks: Vec<CommitHook<C>>,
    /// The outbox rows written and committed during the body (O11).
    #[cfg(feature = "outbox")]
    outbox: Vec<crate::outbox::CapturedOutbox>,
}

impl<C: Connection> CapturedHooks<C> {
    /// How many hooks were captured.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether no hook was captured.
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use diesel_on_commit::{Capture, HookedConnection};
    ///
    /// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
    /// let ((), hooks) = conn.capture_on_commit(Capture::Collect, |conn| {
    ///     let _ = conn.transaction::<(), _, _>(|conn| {
    ///         conn.on_commit(|| println!("discarded by the rollback"));
    ///         Err(diesel::result::Error::RollbackTransaction)
    ///     });
    /// });
    /// assert!(hooks.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The captured hooks' labels, in capture order; each displays as
    /// `file:line: text`.
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use diesel_on_commit::{Capture, HookedConnection};
    ///
    /// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
    /// let ((), hooks) = conn.capture_on_commit(Capture::Execute, |conn| {
    ///     conn.on_commit(|| println!("sent")); // outside a transaction: runs at once
    /// });
    /// let line = line!() - 2;
    /// assert_eq!(hooks.labels().len(), 1);
    /// assert_eq!(hooks.labels()[0].location().line(), line);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn labels(&self) -> &[HookLabel] {
        &self.labels
    }

    /// The outbox rows the body wrote and committed (feature `outbox`), in
    /// the order they were written: id, kind, key, payload (JSON) and
    /// label. Capturing changes nothing about them: they are in the table
    /// (O11). [`len`](Self::len), [`labels`](Self::labels) and
    /// [`run`](Self::run) cover `on_commit`-kind hooks only.
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use diesel_on_commit::outbox::{Outbox, OutboxHook};
    /// use diesel_on_commit::{Capture, HookedConnection};
    ///
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Ping { n: i32 }
    /// impl OutboxHook for Ping { const KIND: &'static str = "ping"; }
    ///
    /// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
    /// Outbox::run_migrations(&mut conn)?;
    /// let ((), hooks) = conn.capture_on_commit(Capture::Collect, |conn| {
    ///     conn.transaction::<_, diesel::result::Error, _>(|conn| {
    ///         conn.on_commit_outbox(Ping { n: 1 })?;
    ///         Ok(())
    ///     })
    ///     .unwrap();
    /// });
    /// assert!(hooks.is_empty()); // no on_commit hook
    /// assert_eq!(hooks.outbox()[0].kind(), "ping");
    /// assert_eq!(hooks.outbox()[0].payload(), r#"{"n":1}"#);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "outbox")]
    pub fn outbox(&self) -> &[crate::outbox::CapturedOutbox] {
        &self.outbox
    }

    /// Runs the collected hooks, in order, with `conn`, as they would have
    /// run after COMMIT (a hook's `Err` is logged; a panic is handled by the
    /// connection's [`HookPanics`](crate::HookPanics) policy once all ran).
    /// Does nothing for hooks captured with [`Capture::Execute`].
    pub fn run(self, conn: &mut HookedConnection<C>) {
        let hooks = self.labels.into_iter().zip(self.hooks);
        let panics = conn.run_commit_hooks(hooks.map(|(label, hook)| Entry {
            label,
            hook: Hook::Commit(hook),
        }));
        panics.finish(
            conn.state.hook_panics(),
            false,
            "while run from CapturedHooks::run",
        );
    }
}

impl<C: Connection> fmt::Debug for CapturedHooks<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("CapturedHooks");
        out.field("labels", &self.labels)
            .field("pending", &self.hooks.len());
        #[cfg(feature = "outbox")]
        out.field("outbox", &self.outbox);
        out.finish()
    }
}

impl<C: Connection> HookedConnection<C> {
    /// Runs `body` and captures every `on_commit`-kind hook that would have
    /// run during it, in the order it would have run (Django's
    /// `captureOnCommitCallbacks`). The [`OutsideTransaction`](crate::OutsideTransaction)
    /// policy still applies first.
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use diesel_on_commit::{Capture, HookedConnection};
    ///
    /// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
    /// let ((), hooks) = conn.capture_on_commit(Capture::Collect, |conn| {
    ///     conn.transaction::<_, diesel::result::Error, _>(|conn| {
    ///         conn.on_commit(|| println!("email sent"));
    ///         Ok(())
    ///     })
    ///     .unwrap();
    /// });
    /// assert_eq!(hooks.len(), 1); // committed, captured, not yet run
    /// hooks.run(&mut conn);       // prints "email sent"
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Panics
    ///
    /// Inside a user transaction (`d >= 1`) or inside another capture.
    pub fn capture_on_commit<R, F>(&mut self, mode: Capture, body: F) -> (R, CapturedHooks<C>)
    where
        F: FnOnce(&mut Self) -> R,
    {
        self.check_levels();
        let depth = self.user_depth();
        self.state.open_capture(mode, depth);
        let result = panic::catch_unwind(AssertUnwindSafe(|| body(&mut *self)));
        #[cfg(feature = "outbox")]
        let outbox = self.state.take_captured_outbox();
        let (labels, hooks) = self.state.close_capture();
        match result {
            Ok(value) => (
                value,
                CapturedHooks {
                    labels,
                    hooks,
                    #[cfg(feature = "outbox")]
                    outbox,
                },
            ),
            Err(payload) => panic::resume_unwind(payload),
        }
    }
}

/// `begin_test_transaction()`: the test transaction becomes the baseline.
pub(crate) fn begin_test_transaction<C: Connection>(
    conn: &mut HookedConnection<C>,
) -> QueryResult<()> {
    conn.check_levels();
    assert_no_transaction(conn.inner_status());
    conn.state.touched();
    Inner::<C>::begin_transaction(&mut conn.inner)?;
    conn.state
        .test_transaction_began(Inner::<C>::transaction_manager_status_mut(&mut conn.inner));
    Ok(())
}

/// `test_transaction(f)`: runs `f` on the baseline, then rolls the test
/// transaction back. Nothing fires when the test transaction ends. Inside
/// an open transaction, as Diesel, `f` runs in a savepoint that is rolled
/// back: its `on_commit` hooks are discarded, its `on_rollback` hooks run.
pub(crate) fn test_transaction<C, T, E, F>(conn: &mut HookedConnection<C>, f: F) -> T
where
    C: Connection,
    F: FnOnce(&mut HookedConnection<C>) -> Result<T, E>,
    E: fmt::Debug,
{
    conn.check_levels();
    if test_transaction_nests(conn.inner_status()) {
        let mut slot = None;
        let savepoint = HookedTransactionManager::<C>::transaction(conn, |conn| {
            keep_and_roll_back(&mut slot, f(conn))
        });
        return nested_test_outcome(slot, savepoint);
    }
    begin_test_transaction(conn)
        .unwrap_or_else(|e| panic!("could not begin the test transaction: {e}"));
    let result = panic::catch_unwind(AssertUnwindSafe(|| f(&mut *conn)));
    // User levels the body left open (only possible by driving the
    // transaction manager by hand) are rolled back first, with their hooks.
    let _ = HookedTransactionManager::<C>::roll_back_level(conn, 1);
    if conn.state.test_transaction_ending() {
        conn.state.touched();
        if let Err(e) = Inner::<C>::rollback_transaction(&mut conn.inner) {
            tracing::error!("rolling back the test transaction failed: {e}");
        }
    }
    conn.check_levels();
    test_outcome(result)
}
