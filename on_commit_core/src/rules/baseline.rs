//! Test transactions (rule 11): the test transaction is the baseline below
//! the user levels, for either wrapper. Opening one needs no transaction
//! open; nothing fires when it ends.

use std::fmt;
use std::panic;

use diesel::connection::TransactionManagerStatus;

use crate::rules::levels::HookState;
use crate::rules::queue::QueuedHook;

/// As in Diesel: a test transaction opens only where no transaction is
/// open, on a manager that is not in error.
pub(crate) fn assert_no_transaction(status: &TransactionManagerStatus) {
    match status {
        TransactionManagerStatus::Valid(status) => assert_eq!(
            None,
            status.transaction_depth(),
            "a test transaction cannot be opened inside a transaction"
        ),
        TransactionManagerStatus::InError => panic!("Transaction manager in error"),
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
