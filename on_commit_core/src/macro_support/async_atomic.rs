//! What `#[atomic]` on an `async fn` expands to call: a transaction on any
//! diesel-async connection, through its `TransactionManager` (so an
//! `AsyncHookedConnection` keeps its hooks), with the panic guard of rule 7
//! and a guard for a future dropped mid-transaction.

use std::panic::{self, AssertUnwindSafe};
use std::pin::pin;

use diesel::result::Error;
use diesel_async::{AsyncConnection, TransactionManager};

use crate::async_hooked::hooks::CatchUnwind;
use crate::macro_support::atomic::{AtomicError, AtomicReturn};
use crate::rules::db_status::{depth_of, user_depth_of};

/// Diesel's transaction depth (a test transaction included), or `None` when
/// the manager is in error.
fn depth<C: AsyncConnection>(conn: &mut C) -> Option<u32> {
    depth_of(C::TransactionManager::transaction_manager_status_mut(conn))
}

/// The depth minus a test transaction, or `None` when the manager is in
/// error.
fn user_depth<C: AsyncConnection>(conn: &mut C) -> Option<u32> {
    user_depth_of(C::TransactionManager::transaction_manager_status_mut(conn))
}

/// Rolls back until the depth is back to `target`; stops when a rollback
/// makes no progress. Returns the first error.
async fn roll_back_to<C: AsyncConnection>(conn: &mut C, target: u32) -> Result<(), Error> {
    let mut result = Ok(());
    while let Some(now) = depth(conn).filter(|&d| d > target) {
        let r = C::TransactionManager::rollback_transaction(conn).await;
        if result.is_ok() {
            result = r;
        }
        if depth(conn).is_none_or(|after| after >= now) {
            break;
        }
    }
    result
}

/// Holds the connection while a transaction is open. Dropped armed (the
/// caller dropped the future after BEGIN was sent and before the
/// transaction finished), it marks the transaction manager as in error: the
/// outcome is unknown and the work is not committed, so the connection must
/// not be reused as if nothing happened. Pools then see it broken and drop
/// it; Diesel refuses further transactions on it.
///
/// While COMMIT or ROLLBACK is in flight (`closing`), it marks the manager
/// only if the manager still reports the level open: a manager that
/// finished the statement and closed the level (diesel-async's
/// `SyncConnectionWrapper` waits for its blocking task when dropped; a
/// hooked connection runs its hooks after COMMIT) knows the outcome.
struct Guard<'c, C: AsyncConnection> {
    conn: &'c mut C,
    /// The depth before BEGIN.
    before: u32,
    armed: bool,
    closing: bool,
}

impl<C: AsyncConnection> Guard<'_, C> {
    /// The transaction step (BEGIN, COMMIT, ROLLBACK) that produced `result`
    /// panicked (a hook resumed by the connection's transaction manager):
    /// that manager decided the state, so disarm, and resume the panic.
    fn resume_panic<T>(&mut self, result: std::thread::Result<T>) -> T {
        result.unwrap_or_else(|payload| {
            self.armed = false;
            panic::resume_unwind(payload)
        })
    }
}

impl<C: AsyncConnection> Drop for Guard<'_, C> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (conn, before, closing) = (&mut *self.conn, self.before, self.closing);
        // Some connections cannot show their status while a query is in
        // flight (diesel-async's `SyncConnectionWrapper` panics then): never
        // panic out of `drop`.
        let marked = panic::catch_unwind(AssertUnwindSafe(|| {
            if closing && depth(conn) == Some(before) {
                return false;
            }
            C::TransactionManager::transaction_manager_status_mut(conn).set_in_error();
            true
        }));
        // Rule C1 on every entry point. Rust has no specialization, and the
        // macro cannot tell at its call site whether `C` is an
        // `AsyncHookedConnection` (generic code, pool guards), so rather than
        // picking the wrapper's own guarded `transaction` for it, this asks
        // the connection's transaction manager whether it is broken: the
        // one synchronous entry diesel-async's `TransactionManager` offers,
        // and one that pool guards forward. A plain connection only answers;
        // the wrapper (reached through a pool guard too) first settles the
        // level just abandoned, handing its due `on_rollback` hooks to one
        // spawned task now, as its own `transaction` does. Never panic out
        // of `drop`.
        let _ = panic::catch_unwind(AssertUnwindSafe(|| {
            C::TransactionManager::is_broken_transaction_manager(conn)
        }));
        match marked {
            Ok(false) => {}
            Ok(true) if closing => tracing::error!(
                "an #[atomic] async fn's future was dropped during its COMMIT or ROLLBACK: the \
                 outcome is unknown and the connection is marked broken"
            ),
            Ok(true) => tracing::error!(
                "an #[atomic] async fn's future was dropped inside its transaction: the work is \
                 not committed and the connection is marked broken"
            ),
            Err(_) => tracing::error!(
                "an #[atomic] async fn's future was dropped inside its transaction, while a query \
                 was in flight: the work is not committed; the connection could not be marked \
                 broken (it still reports the open transaction)"
            ),
        }
    }
}

/// A diesel-async connection, for `#[atomic] async fn`: the bound with a
/// message in the user's terms.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`#[atomic]` on an `async fn` needs a diesel-async connection; `{Self}` is not one (it does not implement `diesel_async::AsyncConnection`)",
    label = "not a diesel-async connection",
    note = "take `&mut AsyncHookedConnection<AsyncPgConnection>`, or a plain diesel-async connection (`AsyncPgConnection`, `SyncConnectionWrapper<SqliteConnection>`); for a sync Diesel connection, make the function a sync `fn`"
)]
pub trait AtomicAsyncConnection: AsyncConnection {}

// Not recommended: an error names `AtomicAsyncConnection` with its message
// rather than the impls of `AsyncConnection` (which vary with the features).
#[diagnostic::do_not_recommend]
impl<C: AsyncConnection> AtomicAsyncConnection for C {}

/// Runs `body` in a transaction (a savepoint when one is open) on any
/// diesel-async connection, through `C::TransactionManager`:
///
/// * With `durable`, returns [`Error::AlreadyInTransaction`] without
///   running `body` when a user transaction is open (a test transaction
///   does not count).
/// * `Ok` commits; a failed COMMIT rolls back to the depth before and
///   returns the error. `Err` rolls back to the depth before.
/// * A panic in `body` rolls back to the depth before, then is resumed: the
///   connection stays usable.
/// * A future dropped after BEGIN was sent and before the transaction
///   finished (in the body, or during a COMMIT or ROLLBACK that the
///   connection's manager had not finished) marks the transaction manager
///   as in error and asks it whether it is broken; an
///   `AsyncHookedConnection` then hands the due `on_rollback` hooks to one
///   spawned task (rule C1; see `Guard`).
///
/// The future is `Send` when `body`'s future and `R` are (auto traits leak
/// through `async fn`). `R` is the function's return type, given by the
/// macro in a turbofish spanned on it, as for the sync `atomic`.
#[doc(hidden)]
pub async fn atomic_async<C, R, E, F>(conn: &mut C, durable: bool, body: F) -> R
where
    C: AtomicAsyncConnection,
    F: AsyncFnOnce(&mut C) -> R,
    R: AtomicReturn<Err = E>,
    E: AtomicError,
{
    if durable && user_depth(conn).is_some_and(|d| d > 0) {
        return R::__from_result(Err(Error::AlreadyInTransaction.into()));
    }
    let Some(before) = depth(conn) else {
        return R::__from_result(Err(Error::BrokenTransactionManager.into()));
    };
    // Armed from BEGIN on: a BEGIN in flight when the future is dropped has
    // an unknown outcome too.
    let mut guard = Guard {
        conn,
        before,
        armed: true,
        closing: false,
    };
    let begun = CatchUnwind::new(pin!(C::TransactionManager::begin_transaction(
        &mut *guard.conn
    )))
    .await;
    if let Err(e) = guard.resume_panic(begun) {
        guard.armed = false;
        return R::__from_result(Err(e.into()));
    }
    let outcome = CatchUnwind::new(pin!(body(&mut *guard.conn))).await;
    guard.closing = true;
    let result = match outcome.map(R::__into_result) {
        Ok(Ok(value)) => {
            let committed = CatchUnwind::new(pin!(C::TransactionManager::commit_transaction(
                &mut *guard.conn
            )))
            .await;
            match guard.resume_panic(committed) {
                Ok(()) => Ok(value),
                Err(commit_error) => {
                    let rolled_back =
                        CatchUnwind::new(pin!(roll_back_to(&mut *guard.conn, before))).await;
                    let _ = guard.resume_panic(rolled_back);
                    Err(commit_error.into())
                }
            }
        }
        Ok(Err(user_error)) => {
            let rolled_back = CatchUnwind::new(pin!(roll_back_to(&mut *guard.conn, before))).await;
            match guard.resume_panic(rolled_back) {
                Ok(()) | Err(Error::BrokenTransactionManager) => Err(user_error),
                Err(rollback_error) => Err(rollback_error.into()),
            }
        }
        Err(payload) => {
            // A panic of an on_rollback hook must not replace the body's.
            let cleanup = CatchUnwind::new(pin!(roll_back_to(&mut *guard.conn, before))).await;
            guard.armed = false;
            match cleanup {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(
                    "rollback after a panic in an #[atomic] async fn's body failed: {e}"
                ),
                Err(_) => tracing::error!(
                    "an on_rollback hook panicked while rolling back after a panic in an \
                     #[atomic] async fn's body"
                ),
            }
            panic::resume_unwind(payload)
        }
    };
    guard.armed = false;
    R::__from_result(result)
}
