//! Hooks the async wrapper runs later (rules A2, C1, C2): the `on_rollback`
//! hooks a synchronous step made due, hooks registered by a running hook,
//! and the orphans that a dropped future or a dropped connection left due,
//! which run on one spawned task (or are reported), never inside `Drop`.
//! The sync wrapper has no such file: it runs every hook at once.

use diesel_async::AsyncConnection;

use crate::async_hooked::connection::AsyncHookedConnection;
use crate::async_hooked::hooks::{AsyncCommitHook, AsyncHook, BoxFuture};
use crate::rules::failures::PlainFn;
use crate::rules::label::HookLabel;
use crate::rules::queue::{Entry, QueuedHook};

/// What the async wrapper keeps beside the rules' state for the hooks it
/// runs later: it cannot run a hook inside the synchronous step that made
/// it due, nor inside `Drop`.
pub(crate) struct AsyncLater<C: AsyncConnection> {
    /// `on_rollback` hooks that are due, in order: awaited after the step
    /// that rolled back.
    pub(crate) due: Vec<Entry<AsyncHook<C>>>,
    /// Async hooks registered at `d == 0` by a running `on_commit`-kind
    /// hook: they run right after it, depth first.
    pub(crate) next: Vec<Entry<AsyncHook<C>>>,
    /// Every failed statement aborts the transaction (PostgreSQL), but the
    /// inner connection does not say so: diesel-async's `AsyncPgConnection`
    /// sets Diesel's requires-rollback flag for serialization failures only
    /// (sync `PgConnection` follows libpq). Then a recorded error is enough
    /// for rule 5.3.
    pub(crate) every_error_aborts: bool,
    /// How many guards of futures in flight on this connection are alive
    /// (`InFlight`, `HookRun`): hooks that a dropped future left due are
    /// collected in `orphans` and handed to one task, in order, when the
    /// outermost of them goes.
    pub(crate) live: u32,
    /// How many `HookRun`s of `on_commit`-kind hooks are alive: an async
    /// hook registered at `d == 0` then runs after the hook that registered
    /// it (`next`).
    pub(crate) hook_runs: u32,
    pub(crate) orphans: Vec<Orphan<C>>,
}

impl<C: AsyncConnection> AsyncLater<C> {
    pub(crate) fn new(every_error_aborts: bool) -> Self {
        Self {
            due: Vec::new(),
            next: Vec::new(),
            every_error_aborts,
            live: 0,
            hook_runs: 0,
            orphans: Vec::new(),
        }
    }
}

/// Rule A2: hooks still due when the wrapper goes (its `Drop` ran the
/// `on_rollback` hooks of an open transaction into `due`) run on a task or
/// are reported, never inside `Drop`.
impl<C: AsyncConnection> Drop for AsyncLater<C> {
    fn drop(&mut self) {
        let why = "the connection was dropped";
        let due = self.due.drain(..).chain(self.next.drain(..));
        let orphans = due.map(|e| Orphan {
            label: e.label,
            hook: e.hook,
            why,
        });
        let orphans: Vec<_> = std::mem::take(&mut self.orphans)
            .into_iter()
            .chain(orphans)
            .collect();
        if !orphans.is_empty() {
            orphaned(orphans);
        }
    }
}

/// A hook that can run without the connection, on a task of its own.
// Without the `tokio` feature there is no task: only logged.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
enum DetachedRun {
    Sync(PlainFn),
    Robust(PlainFn),
    Future(BoxFuture<'static, ()>),
}

/// A hook that will run on a task, without the connection.
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
struct Detached {
    label: HookLabel,
    kind: &'static str,
    why: &'static str,
    run: DetachedRun,
}

/// A hook that was due when the future that was to run it went away, and
/// why it did not run there.
pub(crate) struct Orphan<C: AsyncConnection> {
    pub(crate) label: HookLabel,
    pub(crate) hook: AsyncHook<C>,
    pub(crate) why: &'static str,
}

/// Hooks that were due when the caller's future was dropped or the
/// connection went away: no user hook runs inside `Drop`. With the `tokio`
/// feature and a runtime, they run in the given order on one task spawned
/// on it; otherwise each is logged at ERROR with its label. Hooks that need
/// the connection (`on_commit_with`, `before_commit`) cannot run without it
/// and are logged at ERROR.
pub(crate) fn orphaned<C: AsyncConnection>(due: impl IntoIterator<Item = Orphan<C>>) {
    let mut detached = Vec::new();
    for Orphan { label, hook, why } in due {
        let kind = hook.kind();
        let run = match hook {
            AsyncHook::Commit(AsyncCommitHook::Plain(f)) | AsyncHook::Rollback(f) => {
                DetachedRun::Sync(f)
            }
            AsyncHook::Commit(AsyncCommitHook::Robust(f)) => DetachedRun::Robust(f),
            AsyncHook::Commit(AsyncCommitHook::Future(f)) | AsyncHook::RollbackFuture(f) => {
                DetachedRun::Future(f)
            }
            AsyncHook::Commit(AsyncCommitHook::With(_) | AsyncCommitHook::WithSync(_))
            | AsyncHook::BeforeCommit(_) => {
                tracing::error!(
                    hook = %label,
                    "{kind} hook {label} was due but did not run: {why}, and it needs the connection"
                );
                continue;
            }
            AsyncHook::Spent => continue,
        };
        detached.push(Detached {
            label,
            kind,
            why,
            run,
        });
    }
    if detached.is_empty() {
        return;
    }
    #[cfg(feature = "tokio")]
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        tracing::warn!(
            hooks = detached.len(),
            "{}: the {} hook(s) still due run on a spawned task",
            detached[0].why,
            detached.len()
        );
        runtime.spawn(run_detached(detached));
        return;
    }
    for Detached {
        label, kind, why, ..
    } in detached
    {
        tracing::error!(
            hook = %label,
            "{kind} hook {label} was due but did not run: {why}, and no tokio runtime was there \
             to run it (enable diesel-on-commit's `tokio` feature and run on a tokio runtime)"
        );
    }
}

#[cfg(feature = "tokio")]
async fn run_detached(hooks: Vec<Detached>) {
    use std::panic::{self, AssertUnwindSafe};

    use crate::async_hooked::hooks::CatchUnwind;
    use crate::rules::failures::panic_message;

    for Detached {
        label, kind, run, ..
    } in hooks
    {
        let outcome = match run {
            DetachedRun::Sync(f) | DetachedRun::Robust(f) => {
                panic::catch_unwind(AssertUnwindSafe(|| f(&label)))
            }
            DetachedRun::Future(f) => CatchUnwind::new(f).await,
        };
        if let Err(payload) = outcome {
            tracing::error!(
                hook = %label,
                "{kind} hook {label} panicked on the task that ran it after its transaction's \
                 future was dropped (logged, not resumed): {}",
                panic_message(&*payload)
            );
        }
    }
}

impl<C: AsyncConnection> AsyncHookedConnection<C> {
    /// A guard of a future in flight went away. When it was the outermost,
    /// every hook the dropped futures left due goes to one task, in order
    /// (or to the log).
    pub(crate) fn leave_guard(&mut self) {
        self.state.later().live -= 1;
        if self.state.later().live == 0 && !self.state.later().orphans.is_empty() {
            orphaned(std::mem::take(&mut self.state.later().orphans));
        }
    }
}
