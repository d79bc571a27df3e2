//! `on_commit!(conn, path)`: a bare path (a function, or a variable holding a
//! closure) is registered as it is, and its type decides the kind: a hook
//! that takes nothing is an `on_commit` hook, one that takes the connection an
//! `on_commit_with` hook. The marker type parameter lets the compiler pick the
//! one impl whose `Fn` bound holds, as axum's handlers do.

use crate::rules::failures::HookResult;
use crate::transaction_hooks::TransactionHooks;

/// Marker: the hook takes nothing.
#[derive(Debug)]
pub enum NoArg {}

/// Marker: the hook takes the connection.
#[derive(Debug)]
pub enum WithConn {}

/// A hook given to `on_commit!` by its path.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a hook `on_commit!` can register on `{Conn}`",
    label = "not a function or closure taking nothing or `&mut {Conn}`",
    note = "a hook is `move || ..` (an `on_commit` hook) or `move |conn| ..` (an `on_commit_with` hook), returning `()` or a `Result`; any other expression is wrapped in `move || ..`"
)]
pub trait PathHook<Conn: ?Sized, Marker> {
    /// Registers `self` on `conn` with the label text `text`.
    #[track_caller]
    fn __register(self, conn: &mut Conn, text: &'static str);
}

impl<Conn, F, R> PathHook<Conn, NoArg> for F
where
    Conn: TransactionHooks,
    F: FnOnce() -> R + Send + 'static,
    R: HookResult,
{
    #[track_caller]
    fn __register(self, conn: &mut Conn, text: &'static str) {
        TransactionHooks::__on_commit_labeled(conn, text, self)
    }
}

impl<Conn, F, R> PathHook<Conn, WithConn> for F
where
    Conn: TransactionHooks,
    F: FnOnce(&mut Conn) -> R + Send + 'static,
    R: HookResult,
{
    #[track_caller]
    fn __register(self, conn: &mut Conn, text: &'static str) {
        TransactionHooks::__on_commit_with_labeled(conn, text, self)
    }
}

/// What `on_commit!(conn, path)` expands to.
#[track_caller]
pub fn on_commit_path<Conn, Marker, F>(conn: &mut Conn, text: &'static str, hook: F)
where
    Conn: TransactionHooks,
    F: PathHook<Conn, Marker>,
{
    hook.__register(conn, text)
}
