//! Test support: the test-transaction baseline (SPEC rule 11) and capturing
//! `on_commit` hooks (rule 12, Django's `captureOnCommitCallbacks`).

use std::fmt;
use std::panic::{self, AssertUnwindSafe};

use diesel::connection::{Connection, TransactionManager, TransactionManagerStatus};
use diesel::result::QueryResult;

use crate::connection::HookedConnection;
use crate::hook::{CommitHook, HookLabel};
use crate::queue::QueuedHook;
use crate::state::HookState;
use crate::transaction::HookedTransactionManager;

type Inner<C> = <C as Connection>::TransactionManager;

/// How [`HookedConnection::capture_on_commit`] treats the `on_commit`-kind
/// hooks that would run during its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// Keep them without running them; [`CapturedHooks::run`] runs them later.
    Collect,
    /// Run them when they normally would and record their labels (including
    /// hooks registered by hooks, each exactly once).
    Execute,
}

/// An open capture (rule 12), for either wrapper: `K` is its
/// `on_commit`-kind hook type.
pub(crate) struct CaptureState<K> {
    pub(crate) mode: Capture,
    pub(crate) labels: Vec<HookLabel>,
    pub(crate) hooks: Vec<K>,
}

impl<K> CaptureState<K> {
    pub(crate) const fn new(mode: Capture) -> Self {
        Self {
            mode,
            labels: Vec::new(),
            hooks: Vec::new(),
        }
    }

    /// An `on_commit`-kind hook is about to run: record its label, and keep
    /// it (`None`) under [`Capture::Collect`] or hand it back to be run
    /// (`Some`) under [`Capture::Execute`].
    #[inline]
    pub(crate) fn capture(&mut self, label: HookLabel, hook: K) -> Option<K> {
        self.labels.push(label);
        match self.mode {
            Capture::Collect => {
                self.hooks.push(hook);
                None
            }
            Capture::Execute => Some(hook),
        }
    }
}

/// The `on_commit`-kind hooks captured by
/// [`HookedConnection::capture_on_commit`], in the order they would have run.
#[must_use = "captured hooks do nothing unless inspected or run with `CapturedHooks::run`"]
pub struct CapturedHooks<C: Connection> {
    labels: Vec<HookLabel>,
    /// Empty under [`Capture::Execute`]: those hooks already ran.
    hooks: Vec<CommitHook<C>>,
}

impl<C: Connection> CapturedHooks<C> {
    /// How many hooks were captured.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether no hook was captured.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The captured hooks' labels, in capture order; each displays as
    /// `file:line: text`.
    pub fn labels(&self) -> &[HookLabel] {
        &self.labels
    }

    /// Runs the collected hooks, in order, with `conn`, as they would have
    /// run after COMMIT (a hook's `Err` is logged; a panic is handled by the
    /// connection's [`HookPanics`](crate::HookPanics) policy once all ran).
    /// Does nothing for hooks captured with [`Capture::Execute`].
    pub fn run(self, conn: &mut HookedConnection<C>) {
        let panics = conn.run_commit_hooks(self.labels.into_iter().zip(self.hooks));
        panics.finish(
            conn.state.hook_panics,
            false,
            "while run from CapturedHooks::run",
        );
    }
}

impl<C: Connection> fmt::Debug for CapturedHooks<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CapturedHooks")
            .field("labels", &self.labels)
            .field("pending", &self.hooks.len())
            .finish()
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
        self.sync();
        assert!(
            self.user_depth() == 0,
            "capture_on_commit must be called outside a transaction (a test transaction is fine)"
        );
        assert!(
            self.state.capture.is_none(),
            "capture_on_commit cannot be nested inside another capture_on_commit"
        );
        self.state.capture = Some(CaptureState::new(mode));
        let result = panic::catch_unwind(AssertUnwindSafe(|| body(&mut *self)));
        let state = self
            .state
            .capture
            .take()
            .expect("the capture is open until its body returns");
        match result {
            Ok(value) => (
                value,
                CapturedHooks {
                    labels: state.labels,
                    hooks: state.hooks,
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
    conn.sync();
    assert_no_transaction(Inner::<C>::transaction_manager_status_mut(&mut conn.inner));
    conn.state.touched();
    Inner::<C>::begin_transaction(&mut conn.inner)?;
    test_transaction_began(
        &mut conn.state,
        Inner::<C>::transaction_manager_status_mut(&mut conn.inner),
    );
    Ok(())
}

/// Rule 11, as in Diesel: a test transaction opens only where no
/// transaction is open, on a manager that is not in error.
pub(crate) fn assert_no_transaction(status: &TransactionManagerStatus) {
    match status {
        TransactionManagerStatus::Valid(status) => assert_eq!(
            None,
            status.transaction_depth(),
            "a test transaction cannot be opened inside a transaction"
        ),
        TransactionManagerStatus::InError => panic!("Transaction manager in error"),
    }
}

/// The test transaction's BEGIN went through: it is the baseline, and
/// flagged (like Diesel) so that pools do not count the connection as
/// broken.
pub(crate) fn test_transaction_began<H: QueuedHook>(
    state: &mut HookState<H>,
    status: &mut TransactionManagerStatus,
) {
    status.set_test_transaction_flag();
    state.baseline = true;
}

/// What `test_transaction` returns once the test transaction was rolled
/// back: the body's value, or Diesel's panic for an `Err`, or the body's
/// panic resumed.
pub(crate) fn test_outcome<T, E: fmt::Debug>(outcome: std::thread::Result<Result<T, E>>) -> T {
    match outcome {
        Ok(Ok(value)) => value,
        Ok(Err(e)) => panic!("Transaction did not succeed: {e:?}"),
        Err(payload) => panic::resume_unwind(payload),
    }
}

/// `test_transaction(f)`: runs `f` on the baseline, then rolls the test
/// transaction back. Nothing fires when the test transaction ends.
pub(crate) fn test_transaction<C, T, E, F>(conn: &mut HookedConnection<C>, f: F) -> T
where
    C: Connection,
    F: FnOnce(&mut HookedConnection<C>) -> Result<T, E>,
    E: fmt::Debug,
{
    begin_test_transaction(conn)
        .unwrap_or_else(|e| panic!("could not begin the test transaction: {e}"));
    let result = panic::catch_unwind(AssertUnwindSafe(|| f(&mut *conn)));
    // User levels the body left open (only possible by driving the
    // transaction manager by hand) are rolled back first, with their hooks.
    let _ = HookedTransactionManager::<C>::roll_back_level(conn, 1);
    conn.state.baseline = false;
    if conn.state.levels == 0 {
        conn.state.touched();
        if let Err(e) = Inner::<C>::rollback_transaction(&mut conn.inner) {
            tracing::error!("rolling back the test transaction failed: {e}");
        }
    }
    conn.sync();
    test_outcome(result)
}
