//! What Diesel's transaction status and the database's errors say, read in
//! one place: the depth, the requires-rollback flag, a lost connection, a
//! deadlock, an error worth retrying (rules 5.3, 9 and retries).
//!
//! Both wrappers, the macros' guards and the retry loop ask these questions;
//! each has one answer here.

use diesel::connection::{TransactionManagerStatus, ValidTransactionManagerStatus};
use diesel::result::{DatabaseErrorKind, Error};

/// The depth a transaction manager status reports (a test transaction
/// included), or `None` when it is in error.
#[inline]
pub(crate) fn depth_of(status: &TransactionManagerStatus) -> Option<u32> {
    match status.transaction_depth() {
        Ok(depth) => Some(depth.map_or(0, |d| d.get())),
        Err(_) => None,
    }
}

/// The depth minus a test transaction that Diesel itself opened (its
/// `test_transaction` flag), or `None` when the manager is in error: what
/// the macros' guards see on a connection that is not a wrapper.
pub(crate) fn user_depth_of(status: &TransactionManagerStatus) -> Option<u32> {
    match status {
        TransactionManagerStatus::Valid(valid) => Some(match &valid.in_transaction {
            Some(s) => s.transaction_depth.get() - u32::from(s.test_transaction),
            None => 0,
        }),
        TransactionManagerStatus::InError => None,
    }
}

/// Diesel's flag for "the database aborted this transaction": set by
/// PostgreSQL after a failed statement, by MySQL after a deadlock.
pub(crate) fn requires_rollback(status: &TransactionManagerStatus) -> bool {
    matches!(
        status,
        TransactionManagerStatus::Valid(ValidTransactionManagerStatus {
            in_transaction: Some(status),
            ..
        }) if status.requires_rollback_maybe_up_to_top_level
    )
}

/// Whether an error says the connection is gone (rule 9). MySQL and MariaDB
/// report a lost connection as an unknown error, so the servers' and
/// clients' fixed messages are matched too.
pub(crate) fn is_lost_connection(kind: DatabaseErrorKind, message: &str) -> bool {
    kind == DatabaseErrorKind::ClosedConnection
        || message.contains("server has gone away")
        || message.contains("Lost connection to")
        || message.contains("server closed the connection unexpectedly")
        // tokio-postgres (diesel-async) after the server ended the session
        || message.contains("connection closed")
        || message.starts_with("terminating connection due to administrator command")
        // mysql_async (diesel-async) on a killed or dropped connection
        || message.contains("Broken pipe")
        || message.contains("Connection reset by peer")
        || message.contains("unexpected end of file")
        || message.contains("Connection to the server is closed")
        || message.contains("Connection was killed")
}

/// InnoDB's deadlock (1213): the server rolled the whole transaction back.
pub(crate) fn is_innodb_deadlock(message: &str) -> bool {
    message.starts_with("Deadlock found when trying to get lock")
}

/// Whether `error` is worth retrying the whole transaction for:
/// serialization failures and deadlocks on PostgreSQL (SQLSTATE 40001,
/// 40P01) and MySQL (1213, 1205), `SQLITE_BUSY`/locked on SQLite; nothing
/// else.
///
/// ```
/// use diesel::result::{DatabaseErrorKind, Error};
/// use diesel_on_commit::is_retryable;
///
/// let conflict = Error::DatabaseError(
///     DatabaseErrorKind::SerializationFailure,
///     Box::new("could not serialize access due to concurrent update".to_owned()),
/// );
/// assert!(is_retryable(&conflict));
/// let busy = Error::DatabaseError(DatabaseErrorKind::Unknown, Box::new("database is locked".to_owned()));
/// assert!(is_retryable(&busy));
/// let duplicate = Error::DatabaseError(
///     DatabaseErrorKind::UniqueViolation,
///     Box::new("UNIQUE constraint failed: orders.id".to_owned()),
/// );
/// assert!(!is_retryable(&duplicate));
/// assert!(!is_retryable(&Error::NotFound));
/// ```
pub fn is_retryable(error: &Error) -> bool {
    match error {
        Error::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => true,
        Error::DatabaseError(_, info) => {
            // Diesel maps these codes to `Unknown`; their messages are fixed
            // by the servers.
            let m = info.message();
            m.contains("deadlock detected") // PostgreSQL 40P01
                || m.contains("Deadlock found") // MySQL 1213
                || m.contains("Lock wait timeout exceeded") // MySQL 1205
                || m.contains("database is locked") // SQLITE_BUSY
                || m.contains("database table is locked") // SQLITE_LOCKED
        }
        _ => false,
    }
}
