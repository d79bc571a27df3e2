//! Where a new hook goes (rules 1, 2, 8, 9): the open level, or, outside a
//! transaction, what the policy of rule 2 says; a transaction the wrapper
//! did not open makes registering panic (rule 8); on a broken connection an
//! `on_rollback` hook runs at once and others are dropped (rule 9).

use crate::rules::failures::FirstPanic;
use crate::rules::label::HookLabel;
#[cfg(feature = "async")]
use crate::rules::levels::Freshness;
use crate::rules::levels::{DepthCheck, HookState};
use crate::rules::queue::{Entry, QueuedHook};

/// Outside a transaction (`d == 0`), what registering an `on_commit`-kind
/// hook does (rule 2). Set with
/// [`HookedConnection::set_outside_transaction`](crate::HookedConnection::set_outside_transaction).
///
/// ```
/// use diesel::prelude::*;
/// use diesel_on_commit::{HookedConnection, OutsideTransaction};
///
/// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
/// conn.set_outside_transaction(OutsideTransaction::Panic);
/// let outside = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
///     conn.on_commit(|| println!("registered where no transaction is open"));
/// }));
/// assert!(outside.is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutsideTransaction {
    /// Run the hook at once, before the registering call returns (Django's
    /// behaviour). An `on_rollback` hook is dropped.
    #[default]
    Run,
    /// Log a `tracing` warning naming the hook's label, then behave as `Run`
    /// (an `on_rollback` hook is dropped after the warning).
    WarnAndRun,
    /// Panic with a message naming the hook's label: for catching, in tests,
    /// hooks registered where no transaction was meant to be open.
    Panic,
}

impl<H: QueuedHook> HookState<H> {
    /// The level a new hook joins (rule 1): the current one, when the
    /// levels match the inner connection and a user transaction is open.
    /// Otherwise the wrapper hands the hook to
    /// [`place_outside_level`](Self::place_outside_level).
    // The wrappers push with this test written out in their `register`:
    // returning the hook through `Option` from a shared `place()` cost ~9
    // instructions per hook (BENCHMARKS.md, change 5).
    #[inline]
    pub(crate) fn open_level(&self, check: DepthCheck) -> Option<u32> {
        (check == DepthCheck::Matches && self.levels >= 1).then_some(self.levels)
    }

    /// [`open_level`](Self::open_level) when nothing reached the inner
    /// connection since its levels were last checked (the common case:
    /// several registrations in a row), without reading its status; `None`
    /// means "ask [`check_levels`](Self::check_levels) first" (or there is
    /// no open level). Two flag tests, for an inlined registration.
    #[cfg(feature = "async")]
    #[inline(always)]
    pub(crate) fn checked_open_level(&self) -> Option<u32> {
        (self.freshness == Freshness::Checked && self.levels >= 1).then_some(self.levels)
    }

    /// Queues a hook at `level`, as [`open_level`](Self::open_level) said
    /// (rule 1).
    #[inline]
    pub(crate) fn queue_at(&mut self, level: u32, entry: Entry<H>) {
        self.queue.push(level, entry);
    }

    /// Where a new hook goes when [`open_level`](Self::open_level) has
    /// none (rules 1, 2, 8, 9): outside a transaction, or in a foreign or
    /// broken one. Queued (`None`: levels changed meanwhile), dropped or
    /// panicking by rule 2, 8 or 9, or handed back to be run at once
    /// (`Some`: an `on_commit`-kind hook at `d == 0` the policy lets run).
    #[cold]
    #[inline(never)]
    pub(crate) fn place_outside_level(
        &mut self,
        check: DepthCheck,
        label: HookLabel,
        hook: H,
    ) -> Option<H::Commit> {
        match check {
            DepthCheck::Matches => {}
            DepthCheck::Broken => {
                self.register_on_broken(label, hook);
                return None;
            }
            DepthCheck::Foreign => panic!(
                "{} hook {label} registered while the connection is in a transaction that \
                 the wrapper did not open (begun on inner_mut() or through the inner \
                 TransactionManager); open transactions with the wrapper's transaction()",
                hook.kind()
            ),
        }
        if self.levels >= 1 {
            let level = self.levels;
            self.queue.push(level, Entry { label, hook });
            return None;
        }
        let exempt = self.running_commit_hooks > 0;
        let kind = hook.kind();
        if hook.is_before_commit() {
            panic!(
                "before_commit hook {label} registered outside a transaction: autocommit \
                 already committed, there is nothing to veto; open a transaction first"
            );
        }
        match hook.into_commit() {
            Ok(commit) => {
                match self.outside {
                    _ if exempt => {}
                    OutsideTransaction::Run => {}
                    OutsideTransaction::WarnAndRun => tracing::warn!(
                        hook = %label,
                        "{kind} hook {label} registered outside a transaction: it runs at once"
                    ),
                    OutsideTransaction::Panic => panic!(
                        "{kind} hook {label} registered outside a transaction \
                         (OutsideTransaction::Panic): open a transaction first"
                    ),
                }
                Some(commit)
            }
            Err(_rollback) => {
                match self.outside {
                    OutsideTransaction::Run => {
                        tracing::debug!(hook = %label, "{kind} hook outside a transaction: dropped")
                    }
                    OutsideTransaction::WarnAndRun => tracing::warn!(
                        hook = %label,
                        "{kind} hook {label} registered outside a transaction: dropped, it can never run"
                    ),
                    OutsideTransaction::Panic => panic!(
                        "{kind} hook {label} registered outside a transaction \
                         (OutsideTransaction::Panic): there is nothing to roll back"
                    ),
                }
                None
            }
        }
    }

    /// Rule 9: on a broken connection a new `on_rollback` hook runs at once
    /// (the async wrapper: is due); other hooks are dropped with an ERROR log.
    fn register_on_broken(&mut self, label: HookLabel, hook: H) {
        if hook.is_rollback() {
            let mut panics = FirstPanic::new();
            H::rolled_back(Entry { label, hook }, &mut self.later, &mut panics);
            panics.finish(self.hook_panics, false, "on a broken connection");
        } else {
            tracing::error!(
                hook = %label,
                "{} hook {label} registered on a broken connection: dropped, it will never run",
                hook.kind()
            );
        }
    }
}
