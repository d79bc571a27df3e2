//! The async wrapper's hook kinds, and running them: awaited in registration
//! order, each with its panic isolated (rules 5.4, 6, A1). What becomes of
//! hooks that were due when the caller's future was dropped is in
//! `later.rs`.
//!
//! The sync kinds (`on_commit`, `on_commit_robust`, `on_rollback`) are the
//! boxed closures of `rules/failures.rs`; the async kinds are boxed futures.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

use diesel::result::QueryResult;
use diesel_async::AsyncConnection;

use crate::async_hooked::connection::AsyncHookedConnection;
use crate::async_hooked::later::{AsyncLater, Orphan};
use crate::rules::failures::{self, FirstPanic, HookResult, PlainFn};
use crate::rules::label::HookLabel;
use crate::rules::levels::{Counter, HasHookState, HookState, Raised};
use crate::rules::queue::{Entry, QueuedHook};
use crate::transaction_hooks::AsyncHookFn;

/// A boxed, `Send` future.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// `on_commit_with` on the async wrapper: an async closure given the
/// connection after COMMIT.
pub(crate) type AsyncWithFn<C> = Box<
    dyn for<'c> FnOnce(&'c mut AsyncHookedConnection<C>, HookLabel) -> BoxFuture<'c, ()> + Send,
>;
/// `before_commit` on the async wrapper.
pub(crate) type AsyncBeforeFn<C> = Box<
    dyn for<'c> FnOnce(&'c mut AsyncHookedConnection<C>) -> BoxFuture<'c, QueryResult<()>> + Send,
>;
/// A sync closure given the connection (`TransactionHooks::__on_commit_with_labeled`).
pub(crate) type SyncWithFn<C> = Box<dyn FnOnce(&mut AsyncHookedConnection<C>, &HookLabel) + Send>;

/// An `on_commit`-kind hook of the async wrapper.
pub(crate) enum AsyncCommitHook<C: AsyncConnection> {
    Plain(PlainFn),
    Robust(PlainFn),
    /// `on_commit_async(future)`; reports its own result.
    Future(BoxFuture<'static, ()>),
    With(AsyncWithFn<C>),
    WithSync(SyncWithFn<C>),
}

/// Any hook queued on the async wrapper.
pub(crate) enum AsyncHook<C: AsyncConnection> {
    Commit(AsyncCommitHook<C>),
    Rollback(PlainFn),
    /// `on_rollback_async(future)`; reports its own result.
    RollbackFuture(BoxFuture<'static, ()>),
    BeforeCommit(AsyncBeforeFn<C>),
    /// Left behind in the queue by a `before_commit` hook that already ran.
    Spent,
}

impl<C: AsyncConnection> QueuedHook for AsyncHook<C> {
    type Commit = AsyncCommitHook<C>;

    fn kind(&self) -> &'static str {
        match self {
            AsyncHook::Commit(AsyncCommitHook::Plain(_)) => "on_commit",
            AsyncHook::Commit(AsyncCommitHook::Robust(_)) => "on_commit_robust",
            AsyncHook::Commit(AsyncCommitHook::Future(_)) => "on_commit_async",
            AsyncHook::Commit(AsyncCommitHook::With(_) | AsyncCommitHook::WithSync(_)) => {
                "on_commit_with"
            }
            AsyncHook::Rollback(_) => "on_rollback",
            AsyncHook::RollbackFuture(_) => "on_rollback_async",
            AsyncHook::BeforeCommit(_) => "before_commit",
            AsyncHook::Spent => "spent",
        }
    }

    #[inline]
    fn is_before_commit(&self) -> bool {
        matches!(self, AsyncHook::BeforeCommit(_))
    }

    #[inline]
    fn is_rollback(&self) -> bool {
        matches!(self, AsyncHook::Rollback(_) | AsyncHook::RollbackFuture(_))
    }

    fn take(&mut self) -> Self {
        std::mem::replace(self, AsyncHook::Spent)
    }

    #[inline]
    fn into_commit(self) -> Result<AsyncCommitHook<C>, Self> {
        match self {
            AsyncHook::Commit(hook) => Ok(hook),
            other => Err(other),
        }
    }

    type Later = AsyncLater<C>;

    /// The async wrapper awaits its `on_rollback` hooks, sync and async in
    /// one order, after the step that rolled back: they become due.
    #[inline]
    fn rolled_back(entry: Entry<Self>, later: &mut AsyncLater<C>, _panics: &mut FirstPanic) {
        if entry.hook.is_rollback() {
            later.due.push(entry);
        }
    }
}

impl<C: AsyncConnection> HasHookState for AsyncHookedConnection<C> {
    type Hook = AsyncHook<C>;

    #[inline]
    fn hook_state(&mut self) -> &mut HookState<AsyncHook<C>> {
        &mut self.state
    }
}

/// A future that catches a panic of each poll of the future it wraps (the
/// async counterpart of `catch_unwind`). No allocation: it holds whatever
/// it is given (a `Pin<&mut F>` from `std::pin::pin!`, or a boxed future).
pub(crate) struct CatchUnwind<F> {
    future: F,
}

impl<F> CatchUnwind<F> {
    pub(crate) fn new(future: F) -> Self {
        Self { future }
    }
}

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let future = &mut self.get_mut().future;
        match panic::catch_unwind(AssertUnwindSafe(|| Pin::new(&mut *future).poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

/// Boxes a future hook so that its result is reported under `label`.
pub(crate) fn future_hook<Fut, R>(label: HookLabel, future: Fut) -> BoxFuture<'static, ()>
where
    Fut: Future<Output = R> + Send + 'static,
    R: HookResult + 'static,
{
    R::__box_future(future, label)
}

/// Boxes an async closure given the connection.
pub(crate) fn with_hook<C, F, R>(f: F) -> AsyncWithFn<C>
where
    C: AsyncConnection,
    F: for<'c> AsyncHookFn<&'c mut AsyncHookedConnection<C>, R, Fut: Send> + Send + 'static,
    R: HookResult + 'static,
{
    Box::new(
        move |conn: &mut AsyncHookedConnection<C>, label: HookLabel| {
            let future = f(conn);
            Box::pin(async move { future.await.__report(&label) })
        },
    )
}

/// Boxes an async `before_commit` closure.
pub(crate) fn before_hook<C, F>(f: F) -> AsyncBeforeFn<C>
where
    C: AsyncConnection,
    F: for<'c> AsyncHookFn<&'c mut AsyncHookedConnection<C>, QueryResult<()>, Fut: Send>
        + Send
        + 'static,
{
    Box::new(move |conn: &mut AsyncHookedConnection<C>| Box::pin(f(conn)))
}

/// Runs due hooks in order, awaiting the async ones, with the connection.
/// If the caller's future is dropped meanwhile, `Drop` hands the hook being
/// awaited (when it does not hold the connection) and every later one to
/// [`orphaned`], so none is lost silently and none runs inside `Drop`.
pub(crate) struct HookRun<'a, C: AsyncConnection> {
    pub(crate) conn: &'a mut AsyncHookedConnection<C>,
    pending: VecDeque<Entry<AsyncHook<C>>>,
    /// The `'static` future being awaited.
    current: Option<(HookLabel, BoxFuture<'static, ()>)>,
    /// The connection-taking hook being awaited.
    with_running: Option<HookLabel>,
    /// Commit hooks (their registrations at `d == 0` are exempt from rule 2's
    /// policy, and hooks they register run next, depth first).
    commit: bool,
    /// Hooks registered by the hook of an enclosing run that is still
    /// running (this run belongs to a transaction it opened): they run
    /// after that hook, not here; handed back when this run ends.
    outer_next: Vec<Entry<AsyncHook<C>>>,
    why: &'static str,
    /// The first panic of the hooks run so far.
    panics: FirstPanic,
    done: bool,
}

impl<'a, C: AsyncConnection> HookRun<'a, C> {
    pub(crate) fn new(
        conn: &'a mut AsyncHookedConnection<C>,
        hooks: Vec<Entry<AsyncHook<C>>>,
        commit: bool,
        why: &'static str,
    ) -> Self {
        conn.state.later().live += 1;
        let outer_next = if commit {
            conn.state.raise(Counter::CommitHooksRunning);
            conn.state.later().hook_runs += 1;
            std::mem::take(&mut conn.state.later().next)
        } else {
            Vec::new()
        };
        Self {
            conn,
            pending: VecDeque::from(hooks),
            current: None,
            with_running: None,
            commit,
            outer_next,
            why,
            panics: FirstPanic::new(),
            done: false,
        }
    }

    /// Runs every hook, in order; hooks that become due meanwhile (registered
    /// at `d == 0` by a running hook) run right after the hook that
    /// registered them. Returns the first panic and the spent buffer.
    pub(crate) async fn run(mut self) -> (FirstPanic, Vec<Entry<AsyncHook<C>>>) {
        // `later().next` is empty here (`new` took it): only a hook given
        // the connection can fill it, so it is looked at after those.
        loop {
            let Some(Entry { label, hook }) = self.pending.pop_front() else {
                break;
            };
            // After COMMIT the on_commit-kind hooks run (through an open
            // capture); after a rollback the on_rollback-kind ones.
            let hook = match hook {
                AsyncHook::Commit(hook) if self.commit => {
                    match self.conn.state.capture_or_pass(label, hook) {
                        Some(hook) => hook,
                        None => continue,
                    }
                }
                AsyncHook::Rollback(f) if !self.commit => {
                    failures::run_plain(f, &label, &mut self.panics);
                    continue;
                }
                AsyncHook::RollbackFuture(f) if !self.commit => AsyncCommitHook::Future(f),
                _ => continue,
            };
            match hook {
                AsyncCommitHook::Plain(f) => failures::run_plain(f, &label, &mut self.panics),
                AsyncCommitHook::Robust(f) => failures::run_robust(f, &label),
                AsyncCommitHook::WithSync(f) => {
                    let conn = &mut *self.conn;
                    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| f(conn, &label)))
                    {
                        self.panics.record(label, payload);
                    }
                    self.take_next();
                }
                AsyncCommitHook::Future(f) => {
                    let (_, future) = self.current.insert((label, f));
                    let outcome = CatchUnwind::new(future.as_mut()).await;
                    self.current = None;
                    if let Err(payload) = outcome {
                        self.panics.record(label, payload);
                    }
                }
                AsyncCommitHook::With(f) => {
                    self.with_running = Some(label);
                    let outcome = CatchUnwind::new(f(&mut *self.conn, label)).await;
                    self.with_running = None;
                    if let Err(payload) = outcome {
                        self.panics.record(label, payload);
                    }
                    self.take_next();
                }
            }
        }
        let spent = Vec::from(std::mem::take(&mut self.pending));
        self.finish(spent)
    }

    /// Async hooks that the hook just run registered at `d == 0` (given the
    /// connection) run next, before the rest, depth first.
    #[inline]
    fn take_next(&mut self) {
        if self.commit && !self.conn.state.later().next.is_empty() {
            let next = std::mem::take(&mut self.conn.state.later().next);
            for entry in next.into_iter().rev() {
                self.pending.push_front(entry);
            }
        }
    }

    /// Every hook ran: the first panic, and the spent buffer.
    fn finish(
        &mut self,
        spent: Vec<Entry<AsyncHook<C>>>,
    ) -> (FirstPanic, Vec<Entry<AsyncHook<C>>>) {
        self.done = true;
        if self.commit {
            self.conn.state.later().next = std::mem::take(&mut self.outer_next);
        }
        (
            std::mem::replace(&mut self.panics, FirstPanic::new()),
            spent,
        )
    }
}

impl<C: AsyncConnection> AsyncHookedConnection<C> {
    /// The common batch: every hook is one a run of this kind (`commit`:
    /// after COMMIT, else after a rollback) handles without the connection
    /// or an await (`on_commit` / `on_commit_robust` after COMMIT with no
    /// capture open, `on_rollback` after a rollback; hooks of the other kind
    /// are dropped). Then they run here, in a plain loop over the drained
    /// batch as the sync wrapper runs its hooks, with no [`HookRun`] and no
    /// future, and the first panic is returned (`hooks` is left empty);
    /// otherwise `None`, `hooks` untouched, for a `HookRun`. None of these
    /// hooks can reach the connection (no registration, no capture, no
    /// `later().next`), and nothing here awaits (no cancellation).
    #[inline]
    pub(crate) fn try_run_sync(
        &mut self,
        hooks: &mut Vec<Entry<AsyncHook<C>>>,
        commit: bool,
    ) -> Option<FirstPanic> {
        // Written out for each kind: with `commit` tested inside the
        // closure, the test stayed in the loop (~9 instructions per hook).
        let all_sync = if commit {
            !self.state.capturing()
                && hooks.iter().all(|e| {
                    !matches!(
                        e.hook,
                        AsyncHook::Commit(
                            AsyncCommitHook::Future(_)
                                | AsyncCommitHook::With(_)
                                | AsyncCommitHook::WithSync(_)
                        )
                    )
                })
        } else {
            hooks
                .iter()
                .all(|e| !matches!(e.hook, AsyncHook::RollbackFuture(_)))
        };
        if !all_sync {
            return None;
        }
        let mut panics = FirstPanic::new();
        if commit {
            // As a `HookRun` of commit hooks would (rule 2's exemption).
            let _running = Raised::new(self, Counter::CommitHooksRunning);
            run_sync_batch(hooks, true, &mut panics);
        } else {
            run_sync_batch(hooks, false, &mut panics);
        }
        Some(panics)
    }
}

/// [`AsyncHookedConnection::try_run_sync`]'s loop: runs the sync hooks of `batch` of
/// this run's kind, drops the others, and leaves `batch` empty.
#[inline(never)]
fn run_sync_batch<C: AsyncConnection>(
    batch: &mut Vec<Entry<AsyncHook<C>>>,
    commit: bool,
    panics: &mut FirstPanic,
) {
    if commit {
        for Entry { label, hook } in batch.drain(..) {
            match hook {
                AsyncHook::Commit(AsyncCommitHook::Plain(f)) => {
                    failures::run_plain(f, &label, panics)
                }
                AsyncHook::Commit(AsyncCommitHook::Robust(f)) => failures::run_robust(f, &label),
                _ => {} // not an on_commit-kind hook, or spent
            }
        }
    } else {
        for Entry { label, hook } in batch.drain(..) {
            if let AsyncHook::Rollback(f) = hook {
                failures::run_plain(f, &label, panics);
            }
        }
    }
}

impl<C: AsyncConnection> Drop for HookRun<'_, C> {
    fn drop(&mut self) {
        if self.commit {
            self.conn.state.lower(Counter::CommitHooksRunning);
            self.conn.state.later().hook_runs -= 1;
        }
        if !self.done {
            self.orphan_the_rest();
        }
        self.conn.leave_guard();
    }
}

impl<C: AsyncConnection> HookRun<'_, C> {
    /// The caller's future was dropped while hooks ran: the hook being
    /// awaited (when it does not hold the connection), the hooks it
    /// registered and every later one join the connection's orphans, in
    /// that order; a panic already caught is logged.
    #[cold]
    fn orphan_the_rest(&mut self) {
        let why = self.why;
        if let Some(label) = self.with_running.take() {
            tracing::error!(hook = %label, "on_commit_with hook {label} was cancelled while it ran: {why}");
        }
        std::mem::replace(&mut self.panics, FirstPanic::new()).finish(
            self.conn.state.hook_panics(),
            true,
            "before its transaction's future was dropped",
        );
        let current = self.current.take().map(|(label, f)| Orphan {
            label,
            hook: AsyncHook::Commit(AsyncCommitHook::Future(f)),
            why,
        });
        let outer_next = std::mem::take(&mut self.outer_next);
        let next = if self.commit {
            std::mem::replace(&mut self.conn.state.later().next, outer_next)
        } else {
            Vec::new()
        };
        // Only the kind this run was running is still due.
        let commit = self.commit;
        let rest = std::mem::take(&mut self.pending)
            .into_iter()
            .filter(|e| match e.hook {
                AsyncHook::Commit(_) => commit,
                _ => !commit && e.hook.is_rollback(),
            });
        let orphans = current
            .into_iter()
            .chain(next.into_iter().chain(rest).map(|e| Orphan {
                label: e.label,
                hook: e.hook,
                why,
            }));
        let conn = &mut *self.conn;
        for Orphan { label, hook, why } in orphans {
            // An open capture keeps the on_commit hooks it collects.
            let hook = match hook {
                AsyncHook::Commit(hook) if commit => {
                    match conn.state.capture_or_pass(label, hook) {
                        Some(hook) => AsyncHook::Commit(hook),
                        None => continue,
                    }
                }
                hook => hook,
            };
            conn.state.later().orphans.push(Orphan { label, hook, why });
        }
    }
}
