//! A hook's failure (rule 6): what a hook may return, how an `Err` is
//! reported, how one hook runs with its panic isolated, and what happens to
//! the first panic of a batch once the batch ran.
//!
//! Nothing here knows about levels or transactions: the queue decides
//! *which* hooks run and *when*; this file decides *how* one hook that needs
//! no connection runs and how its failure is reported.

use std::any::Any;
use std::fmt;
use std::panic::{self, AssertUnwindSafe};

use crate::rules::label::HookLabel;

/// What a hook may return: `()`, or a `Result<T, E>` whose error is
/// [`Display`](fmt::Display) (the `Ok` value is dropped), or `!`: a hook
/// whose body only panics (`|| panic!("..")`, `async { panic!("..") }`)
/// needs no type annotation.
///
/// An `Err` is logged with `tracing` at ERROR, with the hook's label and the
/// error formatted with `{:#}` (so `anyhow` chains show), and never stops the
/// hooks after it.
///
/// ```
/// use diesel::prelude::*;
/// use diesel_on_commit::HookedConnection;
/// use std::sync::mpsc;
///
/// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
/// let (tx, rx) = mpsc::channel();
/// conn.transaction::<_, diesel::result::Error, _>(|conn| {
///     conn.on_commit(|| println!("returns ()"));
///     // An Err is logged at ERROR with the hook's label ...
///     conn.on_commit(|| Err::<(), _>("the mail server said no"));
///     // ... and the hooks after it still run.
///     conn.on_commit(move || tx.send("returns a Result"));
///     Ok(())
/// })?;
/// assert_eq!(rx.try_recv(), Ok("returns a Result"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[diagnostic::on_unimplemented(
    message = "a transaction hook must return `()` or a `Result<T, E>` with `E: Display`, not `{Self}`",
    label = "this hook returns `{Self}`",
    note = "end the hook with `;` or return a Result"
)]
pub trait HookResult {
    /// Logs the failure this value describes, if any, under `label`.
    #[doc(hidden)]
    fn __report(self, label: &HookLabel);

    /// Boxes a future hook of the async wrapper whose output is reported
    /// under `label` once it completes.
    #[cfg(feature = "async")]
    #[doc(hidden)]
    #[inline]
    fn __box_future<F>(
        future: F,
        label: HookLabel,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>>
    where
        F: std::future::Future<Output = Self> + Send + 'static,
        Self: Sized + 'static,
    {
        Box::pin(async move { future.await.__report(&label) })
    }
}

impl HookResult for () {
    #[inline]
    fn __report(self, _label: &HookLabel) {}

    /// Nothing to report: the future is boxed as it is, without the label
    /// (a capture-less `async` block stays a 1-byte box, as a hand-rolled
    /// `Vec<Pin<Box<dyn Future>>>` would hold it).
    #[cfg(feature = "async")]
    #[inline]
    fn __box_future<F>(
        future: F,
        _label: HookLabel,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        Box::pin(future)
    }
}

/// Names the never type `!` on stable Rust: `fn() -> !` is a stable type,
/// and its return type, read back through a trait, is `!` itself (the
/// technique of the `never-say-never` crate).
#[doc(hidden)]
pub trait __FnOutput {
    type Output;
}

impl<T> __FnOutput for fn() -> T {
    type Output = T;
}

/// `!`.
type Never = <fn() -> ! as __FnOutput>::Output;

/// A hook whose body only panics (`|| panic!("..")`,
/// `async { panic!("..") }`) returns `!`, which Rust's never-type fallback
/// keeps as `!` (edition 2024, and the lint that warns of it in 2021) rather
/// than `()`: with this impl such a hook needs no type annotation. Not
/// listed when a hook returns something else (`end the hook with ;`).
#[diagnostic::do_not_recommend]
impl HookResult for Never {
    #[inline]
    fn __report(self, _label: &HookLabel) {
        self
    }
}

impl<T, E: fmt::Display> HookResult for Result<T, E> {
    #[inline]
    fn __report(self, label: &HookLabel) {
        if let Err(error) = self {
            tracing::error!(hook = %label, "transaction hook failed: {error:#}");
        }
    }
}

/// What happens after a hook panicked (rule 6). Set with
/// [`HookedConnection::set_hook_panics`](crate::HookedConnection::set_hook_panics).
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
///     conn.on_commit(|| panic!("bug in a hook"));
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

/// A hook that receives nothing, boxed with the reporting of its result:
/// `on_commit`, `on_commit_robust` and `on_rollback` on both wrappers.
pub(crate) type PlainFn = Box<dyn FnOnce(&HookLabel) + Send>;

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
