//! Test transactions (rule 11): the test transaction is the baseline below
//! the user levels, for either wrapper. `begin_test_transaction()` needs no
//! transaction open; `test_transaction(f)` inside an open transaction runs
//! `f` in a savepoint that is rolled back, as Diesel's does; nothing fires
//! when a test transaction ends.

use std::fmt;
use std::panic;

use diesel::connection::TransactionManagerStatus;
use diesel::result::Error;

use crate::rules::levels::HookState;
use crate::rules::queue::QueuedHook;

/// As in Diesel (whose `begin_test_transaction` asserts that the depth is
/// `None`): `begin_test_transaction()` opens a test transaction only where
/// no transaction is open, on a manager that is not in error.
pub(crate) fn assert_no_transaction(status: &TransactionManagerStatus) {
    match status {
        TransactionManagerStatus::Valid(status) => assert_eq!(
            None,
            status.transaction_depth(),
            "begin_test_transaction() cannot be called inside a transaction (as in Diesel); \
             test_transaction(..) there runs in a savepoint instead"
        ),
        TransactionManagerStatus::InError => panic!("Transaction manager in error"),
    }
}

/// Whether `test_transaction(f)` runs inside an open transaction, and so, as
/// Diesel's default `Connection::test_transaction` (a `transaction()` whose
/// closure returns `Err(RollbackTransaction)`), as a savepoint rolled back at
/// the end: its `on_commit`-kind hooks are discarded and its `on_rollback`
/// hooks run (rule 4). A manager in error panics, as for
/// `begin_test_transaction()`.
pub(crate) fn test_transaction_nests(status: &TransactionManagerStatus) -> bool {
    match status {
        TransactionManagerStatus::Valid(status) => status.transaction_depth().is_some(),
        TransactionManagerStatus::InError => panic!("Transaction manager in error"),
    }
}

/// What the closure of the savepoint of a nested `test_transaction` does:
/// keeps `f`'s result aside and makes the wrapper roll the savepoint back.
pub(crate) fn keep_and_roll_back<T, E>(
    slot: &mut Option<Result<T, E>>,
    result: Result<T, E>,
) -> Result<(), Error> {
    *slot = Some(result);
    Err(Error::RollbackTransaction)
}

/// What a nested `test_transaction` returns once its savepoint was rolled
/// back, as Diesel: `f`'s `Ok` value, or a panic for its `Err` (or when the
/// savepoint could not be opened, so `f` never ran).
pub(crate) fn nested_test_outcome<T, E: fmt::Debug>(
    slot: Option<Result<T, E>>,
    savepoint: Result<(), Error>,
) -> T {
    match slot {
        Some(result) => test_outcome(Ok(result)),
        None => panic!(
            "Transaction never executed: the test transaction's savepoint could not be opened: {}",
            savepoint.err().map_or_else(String::new, |e| e.to_string())
        ),
    }
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

impl<H: QueuedHook> HookState<H> {
    /// The test transaction's BEGIN went through: it is the baseline, and
    /// flagged (like Diesel) so that pools do not count the connection as
    /// broken.
    pub(crate) fn test_transaction_began(&mut self, status: &mut TransactionManagerStatus) {
        status.set_test_transaction_flag();
        self.baseline = true;
    }

    /// Whether a test transaction is the baseline below the user levels.
    pub(crate) fn in_test_transaction(&self) -> bool {
        self.baseline
    }

    /// The body of a test transaction is done and its user levels are rolled
    /// back: the baseline goes. Returns whether the test transaction is
    /// still open on the inner connection (the caller then rolls it back;
    /// no hook fires).
    pub(crate) fn test_transaction_ending(&mut self) -> bool {
        self.baseline = false;
        self.levels == 0
    }
}
