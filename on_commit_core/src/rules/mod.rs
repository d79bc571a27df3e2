//! The rules that know no connection and do no I/O, written once for both
//! wrappers: the hook queue and its levels, where a new hook goes, the
//! abort cause, what Diesel's status and the database's errors say, labels,
//! hook failures, test transactions and capture.
//!
//! | file | rules of `CONTRACT.md` |
//! |---|---|
//! | `queue.rs` | levels, merge, discard, order, capacity (1, 3, 4, 13, 14) |
//! | `levels.rs` | the levels kept in line with the inner connection; commit, rollback, broken and vanished levels, `Drop` (3, 4, 8, 9, 10) |
//! | `placement.rs` | where a new hook goes (1, 2, 8, 9) |
//! | `abort.rs` | the error that aborted a transaction (5.3) |
//! | `db_status.rs` | depth, requires-rollback, lost connection, deadlock, retryable (5.3, 9) |
//! | `label.rs` | hook labels (14) |
//! | `failures.rs` | return types, errors and panics of hooks (6) |
//! | `baseline.rs` | test transactions (11) |
//! | `capture.rs` | capture (12) |
//! | `counters.rs` | the counters raised around a scope (2, 6) |
//! | `outbox.rs` | outbox rows in the queue, outside a transaction, captured (O1, O2, O11) |

pub(crate) mod abort;
pub(crate) mod baseline;
pub(crate) mod capture;
pub(crate) mod counters;
pub(crate) mod db_status;
pub(crate) mod failures;
pub(crate) mod label;
pub(crate) mod levels;
#[cfg(feature = "outbox")]
pub(crate) mod outbox;
pub(crate) mod placement;
pub(crate) mod queue;
