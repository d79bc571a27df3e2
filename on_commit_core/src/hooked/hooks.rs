//! The sync wrapper's hook kinds: the boxed closures it queues, and how it
//! runs one `on_commit`-kind hook with the connection (rules 5.4, 6).

use std::panic::{self, AssertUnwindSafe};

use diesel::QueryResult;

use crate::hooked::connection::HookedConnection;
use crate::rules::failures::{run_plain, run_robust, FirstPanic, HookResult, PlainFn};
use crate::rules::label::HookLabel;
use crate::rules::levels::{Counter, HasHookState, HookState, Raised};
use crate::rules::queue::{Entry, QueuedHook};

pub(crate) type WithFn<C> = Box<dyn FnOnce(&mut HookedConnection<C>, &HookLabel) + Send>;
pub(crate) type BeforeFn<C> = Box<dyn FnOnce(&mut HookedConnection<C>) -> QueryResult<()> + Send>;

/// An `on_commit`-kind hook: the three kinds that run, in one order, after
/// the outermost COMMIT.
pub(crate) enum CommitHook<C: diesel::Connection> {
    Plain(PlainFn),
    Robust(PlainFn),
    With(WithFn<C>),
}

/// Any queued hook.
pub(crate) enum Hook<C: diesel::Connection> {
    Commit(CommitHook<C>),
    Rollback(PlainFn),
    BeforeCommit(BeforeFn<C>),
    /// An outbox row, written at the flush (O1).
    #[cfg(feature = "outbox")]
    Outbox(Box<crate::outbox::flush::QueuedRow<C>>),
    /// Left behind in the queue by a `before_commit` hook that already ran.
    Spent,
}

impl<C: diesel::Connection> QueuedHook for Hook<C> {
    type Commit = CommitHook<C>;

    fn kind(&self) -> &'static str {
        match self {
            Hook::Commit(CommitHook::Plain(_)) => "on_commit",
            Hook::Commit(CommitHook::Robust(_)) => "on_commit_robust",
            Hook::Commit(CommitHook::With(_)) => "on_commit_with",
            Hook::Rollback(_) => "on_rollback",
            Hook::BeforeCommit(_) => "before_commit",
            #[cfg(feature = "outbox")]
            Hook::Outbox(_) => "on_commit_outbox",
            Hook::Spent => "spent",
        }
    }

    #[inline]
    fn is_before_commit(&self) -> bool {
        matches!(self, Hook::BeforeCommit(_))
    }

    #[inline]
    fn is_rollback(&self) -> bool {
        matches!(self, Hook::Rollback(_))
    }

    #[cfg(feature = "outbox")]
    #[inline]
    fn is_outbox(&self) -> bool {
        matches!(self, Hook::Outbox(_))
    }

    fn take(&mut self) -> Self {
        std::mem::replace(self, Hook::Spent)
    }

    #[inline]
    fn into_commit(self) -> Result<CommitHook<C>, Self> {
        match self {
            Hook::Commit(hook) => Ok(hook),
            other => Err(other),
        }
    }

    /// The sync wrapper keeps nothing for later: it runs hooks at once.
    type Later = ();

    /// The sync wrapper runs an `on_rollback` hook at once.
    #[inline]
    fn rolled_back(entry: Entry<Self>, _later: &mut (), panics: &mut FirstPanic) {
        if let Hook::Rollback(f) = entry.hook {
            run_plain(f, &entry.label, panics);
        }
    }
}

#[inline]
pub(crate) fn with<C, F, R>(f: F) -> WithFn<C>
where
    C: diesel::Connection,
    F: FnOnce(&mut HookedConnection<C>) -> R + Send + 'static,
    R: HookResult,
{
    Box::new(move |conn: &mut HookedConnection<C>, label: &HookLabel| f(conn).__report(label))
}

/// Runs one `on_commit`-kind hook with the connection.
#[inline]
pub(crate) fn run_commit_hook<C: diesel::Connection>(
    conn: &mut HookedConnection<C>,
    hook: CommitHook<C>,
    label: &HookLabel,
    panics: &mut FirstPanic,
) {
    match hook {
        CommitHook::Plain(f) => run_plain(f, label, panics),
        CommitHook::Robust(f) => run_robust(f, label),
        CommitHook::With(f) => {
            if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| f(conn, label))) {
                panics.record(*label, payload);
            }
        }
    }
}

impl<C: diesel::Connection> HasHookState for HookedConnection<C> {
    type Hook = Hook<C>;

    #[inline]
    fn hook_state(&mut self) -> &mut HookState<Hook<C>> {
        &mut self.state
    }
}

impl<C: diesel::Connection> HookedConnection<C> {
    /// Runs one queued hook if it is of the `on_commit` kind, now or through
    /// the open capture (rule 12); other entries (spent `before_commit`
    /// slots, `on_rollback` hooks) are skipped.
    #[inline(always)]
    fn run_commit_entry(&mut self, entry: Entry<Hook<C>>, panics: &mut FirstPanic) {
        if let Hook::Commit(hook) = entry.hook {
            self.dispatch_commit_hook(hook, entry.label, panics);
        }
    }

    #[inline]
    fn dispatch_commit_hook(
        &mut self,
        hook: CommitHook<C>,
        label: HookLabel,
        panics: &mut FirstPanic,
    ) {
        if let Some(hook) = self.state.capture_or_pass(label, hook) {
            run_commit_hook(self, hook, &label, panics);
        }
    }

    /// Runs a batch of `on_commit`-kind hooks at `d == 0`, in order; their
    /// own registrations run at once (rule 2's exemption). Returns the first
    /// panic, for the caller to resume (or log) once it has tidied up.
    pub(crate) fn run_commit_hooks<I>(&mut self, hooks: I) -> FirstPanic
    where
        I: IntoIterator<Item = Entry<Hook<C>>>,
    {
        let mut panics = FirstPanic::new();
        let mut conn = Raised::new(self, Counter::CommitHooksRunning);
        for entry in hooks {
            conn.run_commit_entry(entry, &mut panics);
        }
        panics
    }

    /// The outermost COMMIT succeeded (rule 5.4): the `on_commit`-kind hooks
    /// of every level merged into level 1 run in registration order.
    #[inline]
    pub(crate) fn fire_commit_hooks(&mut self) {
        let Some(mut spent) = self.state.committed() else {
            return; // no hook: nothing to run, nothing allocated
        };
        let fired = spent.len();
        // `run_commit_hooks`, written out: handing it the `Drain` cost ~4
        // instructions per hook (BENCHMARKS.md).
        let mut panics = FirstPanic::new();
        let mut conn = Raised::new(self, Counter::CommitHooksRunning);
        for entry in spent.drain(..) {
            conn.run_commit_entry(entry, &mut panics);
        }
        drop(conn);
        self.state.recycle(spent, fired);
        panics.finish(
            self.state.hook_panics(),
            false,
            "after COMMIT; the transaction is committed",
        );
    }
}
