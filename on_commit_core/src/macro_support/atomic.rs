//! What `#[atomic]` expands to call: a transaction on any Diesel connection,
//! with the panic guard of rule 7 (an r2d2 `PooledConnection` does not
//! reach `HookedConnection::transaction`, so the guard is applied here too),
//! and the return-type check with a message in the user's terms.

use std::panic::{self, AssertUnwindSafe};

use diesel::connection::{Connection, TransactionManager};
use diesel::result::Error;

use crate::rules::db_status::{depth_of, user_depth_of};

/// The inner depth minus a test transaction, or `None` when the manager is
/// in error.
fn user_depth<C: Connection>(conn: &mut C) -> Option<u32> {
    user_depth_of(C::TransactionManager::transaction_manager_status_mut(conn))
}

/// Diesel's transaction depth, or `None` when the manager is in error.
fn depth<C: Connection>(conn: &mut C) -> Option<u32> {
    depth_of(C::TransactionManager::transaction_manager_status_mut(conn))
}

/// Rolls back until the depth is back to `target`; stops when a rollback
/// makes no progress. Returns the first error.
fn roll_back_to<C: Connection>(conn: &mut C, target: u32) -> Result<(), Error> {
    let mut result = Ok(());
    while let Some(now) = depth(conn).filter(|&d| d > target) {
        let r = C::TransactionManager::rollback_transaction(conn);
        if result.is_ok() {
            result = r;
        }
        if depth(conn).is_none_or(|after| after >= now) {
            break;
        }
    }
    result
}

/// Runs `body` in a transaction (a savepoint when one is open) on any Diesel
/// connection: `conn.transaction(body)`, plus the panic guard: a panic in
/// `body` rolls the level back, restores the depth and is resumed. With
/// `durable`, returns [`Error::AlreadyInTransaction`] without running
/// `body` when a user transaction is open (a test transaction does not
/// count).
///
/// `R` is the `#[atomic]` function's return type, given by the macro in a
/// turbofish spanned on the user's return type: a wrong one is reported
/// there, by `AtomicReturn` (not a `Result`) or `AtomicError` (an error type
/// Diesel's errors do not convert into), in the user's terms.
#[doc(hidden)]
pub fn atomic<C, R, E, F>(conn: &mut C, durable: bool, body: F) -> R
where
    C: Connection,
    F: FnOnce(&mut C) -> R,
    R: AtomicReturn<Err = E>,
    E: AtomicError,
{
    R::__from_result(run(conn, durable, |conn| body(conn).__into_result()))
}

fn run<C, T, E, F>(conn: &mut C, durable: bool, body: F) -> Result<T, E>
where
    C: Connection,
    F: FnOnce(&mut C) -> Result<T, E>,
    E: From<Error>,
{
    if durable && user_depth(conn).is_some_and(|d| d > 0) {
        return Err(Error::AlreadyInTransaction.into());
    }
    let before = depth(conn).ok_or(Error::BrokenTransactionManager)?;
    C::TransactionManager::begin_transaction(conn)?;
    match panic::catch_unwind(AssertUnwindSafe(|| body(&mut *conn))) {
        Ok(Ok(value)) => match C::TransactionManager::commit_transaction(conn) {
            Ok(()) => Ok(value),
            Err(commit_error) => {
                let _ = roll_back_to(conn, before);
                Err(commit_error.into())
            }
        },
        Ok(Err(user_error)) => match roll_back_to(conn, before) {
            Ok(()) | Err(Error::BrokenTransactionManager) => Err(user_error),
            Err(rollback_error) => Err(rollback_error.into()),
        },
        Err(payload) => {
            // A panic of an on_rollback hook must not replace the body's.
            let cleanup = panic::catch_unwind(AssertUnwindSafe(|| roll_back_to(conn, before)));
            match cleanup {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!("rollback after a panic in an #[atomic] body failed: {e}")
                }
                Err(_) => tracing::error!(
                    "an on_rollback hook panicked while rolling back after a panic in an #[atomic] body"
                ),
            }
            panic::resume_unwind(payload)
        }
    }
}

/// The return type of an `#[atomic]` function: `Result<T, E>`. (That `E`
/// converts from Diesel's errors is [`AtomicError`]'s check, so that each
/// mistake gets its own message.)
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`#[atomic]` functions must return `Result<T, E>` with `E: From<diesel::result::Error>`, not `{Self}`",
    label = "this return type cannot carry a Diesel error",
    note = "return `diesel::QueryResult<T>`, or a `Result<T, E>` whose error type implements `From<diesel::result::Error>`"
)]
pub trait AtomicReturn: Sized {
    /// The `T` of `Result<T, E>`.
    type Ok;
    /// The `E` of `Result<T, E>`.
    type Err;
    /// `self` as the `Result` it is.
    fn __into_result(self) -> Result<Self::Ok, Self::Err>;
    /// Back from the `Result`.
    fn __from_result(result: Result<Self::Ok, Self::Err>) -> Self;
}

impl<T, E> AtomicReturn for Result<T, E> {
    type Ok = T;
    type Err = E;
    #[inline]
    fn __into_result(self) -> Self {
        self
    }
    #[inline]
    fn __from_result(result: Self) -> Self {
        result
    }
}

/// The error type of an `#[atomic]` function: one that Diesel's errors
/// convert into (the transaction's own failures, `BEGIN` or `COMMIT`, are
/// returned through it).
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`#[atomic]` functions must return `Result<T, E>` with `E: From<diesel::result::Error>`; `{Self}` does not implement `From<diesel::result::Error>`",
    label = "Diesel's errors cannot be converted into `{Self}`",
    note = "add `impl From<diesel::result::Error> for {Self}` (with thiserror: a variant `Db(#[from] diesel::result::Error)`), or return `diesel::QueryResult<T>`"
)]
pub trait AtomicError: From<Error> {}

impl<E: From<Error>> AtomicError for E {}
