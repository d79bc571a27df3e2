//! Hook kinds, labels, accepted return types, and running a hook with its
//! panic isolated (SPEC rule 6).
//!
//! Nothing here knows about levels or transactions: `queue.rs` decides *which*
//! hooks run and *when*; this file decides *how* one hook runs and how its
//! failure is reported.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe, Location};

use diesel::QueryResult;

use crate::HookedConnection;

/// The name of a hook in logs and captures: `file:line: text`.
///
/// The location is the registering call's (every registration method is
/// `#[track_caller]`); the text is the expression's source from
/// `on_commit!`, or [`std::any::type_name`] of a plain closure's type.
/// A label is two `&'static` references: making one costs no allocation.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct HookLabel {
    location: &'static Location<'static>,
    text: &'static str,
}

impl HookLabel {
    /// A label for a hook registered at `location` with the given text.
    pub const fn new(location: &'static Location<'static>, text: &'static str) -> Self {
        Self { location, text }
    }

    /// The source location of the registering call.
    pub fn location(&self) -> &'static Location<'static> {
        self.location
    }

    /// The text part: the expression given to `on_commit!`, or the closure's type name.
    pub fn text(&self) -> &'static str {
        self.text
    }
}

impl fmt::Display for HookLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}",
            self.location.file(),
            self.location.line(),
            self.text
        )
    }
}

impl fmt::Debug for HookLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What a hook may return: `()`, or a `Result<T, E>` whose error is
/// [`Display`](fmt::Display) (the `Ok` value is dropped).
///
/// An `Err` is logged with `tracing` at ERROR, with the hook's label and the
/// error formatted with `{:#}` (so `anyhow` chains show), and never stops the
/// hooks after it.
#[diagnostic::on_unimplemented(
    message = "a transaction hook must return `()` or a `Result<T, E>` with `E: Display`, not `{Self}`",
    label = "this hook returns `{Self}`",
    note = "end the hook with `;` or return a Result"
)]
pub trait HookResult {
    /// Logs the failure this value describes, if any, under `label`.
    #[doc(hidden)]
    fn __report(self, label: &HookLabel);
}

impl HookResult for () {
    #[inline]
    fn __report(self, _label: &HookLabel) {}
}

impl<T, E: fmt::Display> HookResult for Result<T, E> {
    #[inline]
    fn __report(self, label: &HookLabel) {
        if let Err(error) = self {
            tracing::error!(hook = %label, "transaction hook failed: {error:#}");
        }
    }
}

/// An async closure that takes one argument and whose future can be named
/// (to require it `Send`): what diesel-async's `transaction` asks of its
/// callback, for hooks that receive the connection. Every `async |conn| ..`
/// closure implements it.
pub trait AsyncHookFn<T, R>:
    AsyncFnOnce(T) -> R + FnOnce(T) -> <Self as AsyncHookFn<T, R>>::Fut
{
    /// The future the closure returns.
    type Fut: Future<Output = R>;
}

impl<F, T, Fut, R> AsyncHookFn<T, R> for F
where
    F: AsyncFnOnce(T) -> R + FnOnce(T) -> Fut,
    Fut: Future<Output = R>,
{
    type Fut = Fut;
}

/// Outside a transaction (`d == 0`), what registering an `on_commit`-kind
/// hook does (SPEC rule 2). Set with
/// [`HookedConnection::set_outside_transaction`].
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

/// What happens after a hook panicked (SPEC rule 6). Set with
/// [`HookedConnection::set_hook_panics`].
///
/// Either way the hooks after the panicking one still run and the panic is
/// logged at ERROR with the hook's label.
///
/// ```
/// use diesel::prelude::*;
/// use diesel_on_commit::{HookPanics, HookedConnection};
///
/// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
/// conn.set_hook_panics(HookPanics::Log);
/// let committed = conn.transaction::<_, diesel::result::Error, _>(|conn| {
///     conn.on_commit(|| -> () { panic!("bug in a hook") });
///     Ok("order placed")
/// });
/// assert_eq!(committed?, "order placed"); // logged, not resumed
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HookPanics {
    /// Once the remaining hooks ran, resume the first panic (out of
    /// `transaction()`, the registering call, or [`CapturedHooks::run`](crate::CapturedHooks::run)).
    /// A panic out of `transaction()` then does **not** mean a rollback.
    #[default]
    Resume,
    /// Only log it.
    Log,
}

pub(crate) type PlainFn = Box<dyn FnOnce(&HookLabel) + Send>;
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
    /// Left behind in the queue by a `before_commit` hook that already ran.
    Spent,
}

impl<C: diesel::Connection> crate::queue::QueuedHook for Hook<C> {
    type Commit = CommitHook<C>;

    fn kind(&self) -> &'static str {
        match self {
            Hook::Commit(CommitHook::Plain(_)) => "on_commit",
            Hook::Commit(CommitHook::Robust(_)) => "on_commit_robust",
            Hook::Commit(CommitHook::With(_)) => "on_commit_with",
            Hook::Rollback(_) => "on_rollback",
            Hook::BeforeCommit(_) => "before_commit",
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

    /// The sync wrapper runs an `on_rollback` hook at once.
    #[inline]
    fn rolled_back(self, label: &HookLabel, panics: &mut FirstPanic) -> Option<Self> {
        if let Hook::Rollback(f) = self {
            run_plain(f, label, panics);
        }
        None
    }
}

/// Wraps a user closure so that its return value is reported under the label
/// it is called with. The wrapper closure has the size of `f`: boxing it
/// allocates only when `f` captures something.
#[inline]
pub(crate) fn plain<F, R>(f: F) -> PlainFn
where
    F: FnOnce() -> R + Send + 'static,
    R: HookResult,
{
    Box::new(move |label: &HookLabel| f().__report(label))
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

/// The first panic seen while running a batch of hooks, kept to be resumed
/// (or only logged) once the whole batch ran.
pub(crate) struct FirstPanic {
    panic: Option<(HookLabel, Box<dyn Any + Send>)>,
}

impl FirstPanic {
    pub(crate) const fn new() -> Self {
        Self { panic: None }
    }

    pub(crate) fn record(&mut self, label: HookLabel, payload: Box<dyn Any + Send>) {
        if self.panic.is_none() {
            self.panic = Some((label, payload));
        } else {
            tracing::error!(hook = %label, "a second transaction hook panicked: {}", panic_message(&*payload));
        }
    }

    /// Logs the first panic with `context` ("after COMMIT; the transaction is
    /// committed", ...) and, under [`HookPanics::Resume`] and unless
    /// `never_resume`, resumes it.
    pub(crate) fn finish(self, policy: HookPanics, never_resume: bool, context: &str) {
        if let Some((label, payload)) = self.panic {
            tracing::error!(
                hook = %label,
                "transaction hook {label} panicked {context}: {}",
                panic_message(&*payload)
            );
            if policy == HookPanics::Resume && !never_resume {
                panic::resume_unwind(payload);
            }
        }
    }
}

pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "<non-string panic payload>"
    }
}

/// Runs a hook that receives nothing, isolating its panic.
#[inline]
pub(crate) fn run_plain(f: PlainFn, label: &HookLabel, panics: &mut FirstPanic) {
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| f(label))) {
        panics.record(*label, payload);
    }
}

/// Runs an `on_commit_robust` hook: a panic is logged and never resumed.
#[inline]
pub(crate) fn run_robust(f: PlainFn, label: &HookLabel) {
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(|| f(label))) {
        tracing::error!(
            hook = %label,
            "on_commit_robust hook {label} panicked (caught, not resumed): {}",
            panic_message(&*payload)
        );
    }
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
