//! The abort cause (rule 5.3): the first database error seen inside the
//! user transaction, kept so that a transaction the database had aborted is
//! reported with an error of the same kind and message (a swallowed
//! serialization failure stays retryable), and so that a level that closed
//! without the wrapper says why.

use diesel::connection::TransactionManagerStatus;
use diesel::result::{DatabaseErrorInformation, DatabaseErrorKind, Error};

use crate::rules::db_status::{is_innodb_deadlock, is_lost_connection, requires_rollback};
use crate::rules::levels::{Freshness, HookState};
use crate::rules::queue::QueuedHook;

/// The first database error seen inside the user transaction (rule 5.3).
pub(in crate::rules) struct AbortCause {
    pub(in crate::rules) level: u32,
    kind: DatabaseErrorKind,
    info: RecordedInfo,
    /// The server rolled back the whole transaction (an InnoDB deadlock):
    /// no savepoint rollback revives it, and Diesel may not know (its MySQL
    /// `batch_execute` reports 1213 as `Unknown` and sets no flag).
    pub(in crate::rules) aborts_all: bool,
    /// The statement aborted its level although Diesel did not flag it
    /// (a failed `COPY FROM`: Diesel's `PgConnection::copy_from` does not
    /// update its transaction status).
    aborts_level: bool,
}

impl AbortCause {
    fn into_error(self) -> Error {
        Error::DatabaseError(self.kind, Box::new(self.info))
    }
}

/// A copy of a database error's details, to return an error "of the same
/// kind and message" after the original was swallowed by the body.
#[derive(Debug, Clone)]
struct RecordedInfo {
    message: String,
    details: Option<String>,
    hint: Option<String>,
    table_name: Option<String>,
    column_name: Option<String>,
    constraint_name: Option<String>,
    statement_position: Option<i32>,
}

impl RecordedInfo {
    fn of(info: &dyn DatabaseErrorInformation) -> Self {
        Self {
            message: info.message().to_owned(),
            details: info.details().map(str::to_owned),
            hint: info.hint().map(str::to_owned),
            table_name: info.table_name().map(str::to_owned),
            column_name: info.column_name().map(str::to_owned),
            constraint_name: info.constraint_name().map(str::to_owned),
            statement_position: info.statement_position(),
        }
    }
}

impl DatabaseErrorInformation for RecordedInfo {
    fn message(&self) -> &str {
        &self.message
    }
    fn details(&self) -> Option<&str> {
        self.details.as_deref()
    }
    fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }
    fn table_name(&self) -> Option<&str> {
        self.table_name.as_deref()
    }
    fn column_name(&self) -> Option<&str> {
        self.column_name.as_deref()
    }
    fn constraint_name(&self) -> Option<&str> {
        self.constraint_name.as_deref()
    }
    fn statement_position(&self) -> Option<i32> {
        self.statement_position
    }
}

impl<H: QueuedHook> HookState<H> {
    /// A statement through the wrapper finished: it touched the inner
    /// connection, and an error is kept for rules 5.3 and 9. The success
    /// path is one store. Both wrappers record every statement's result
    /// here.
    #[inline]
    pub(crate) fn observe_result<T>(&mut self, result: &Result<T, Error>) {
        self.observe(result.as_ref().err());
    }

    /// [`observe_result`](Self::observe_result) for a result already reduced
    /// to its error: `None` for success.
    #[inline]
    pub(crate) fn observe(&mut self, error: Option<&Error>) {
        match error {
            None => self.freshness = Freshness::Unchecked,
            Some(error) => self.observe_error(error),
        }
    }

    /// A database error came back through the wrapper.
    #[cold]
    pub(crate) fn observe_error(&mut self, error: &Error) {
        self.freshness = Freshness::Failed;
        if let Error::DatabaseError(kind, info) = error {
            if is_lost_connection(*kind, info.message()) {
                self.lost = true;
            }
            let deadlock = is_innodb_deadlock(info.message());
            // Keep the first error, unless a later one is the serialization
            // failure or deadlock that made the database abort (MySQL only
            // aborts for those; PostgreSQL for the first error already).
            let replace = match &self.abort_cause {
                None => true,
                Some(cause) => {
                    (deadlock && !cause.aborts_all)
                        || (*kind == DatabaseErrorKind::SerializationFailure
                            && cause.kind != DatabaseErrorKind::SerializationFailure)
                }
            };
            if self.levels > 0 && replace {
                self.abort_cause = Some(AbortCause {
                    level: self.levels,
                    // Diesel maps 1213 to `SerializationFailure` on prepared
                    // statements only; report it the same on both paths.
                    kind: if deadlock {
                        DatabaseErrorKind::SerializationFailure
                    } else {
                        *kind
                    },
                    info: RecordedInfo::of(&**info),
                    aborts_all: deadlock,
                    aborts_level: false,
                });
            }
        }
    }

    /// A statement failed that aborts the level it ran in on every backend
    /// it exists for, although the inner connection does not flag it (a
    /// failed `COPY FROM` on PostgreSQL): the error is recorded as by
    /// [`observe_error`](Self::observe_error), and the level counts as
    /// aborted (rule 5.3) when the recorded cause is its own.
    #[cfg(feature = "postgres")]
    #[cold]
    pub(crate) fn observe_aborting_error(&mut self, error: &Error) {
        self.observe_error(error);
        let levels = self.levels;
        if let Some(cause) = &mut self.abort_cause {
            if cause.level == levels {
                cause.aborts_level = true;
            }
        }
    }

    /// Rule 5.3: before COMMIT (or RELEASE), whether the database aborted
    /// the transaction: Diesel's requires-rollback flag, or a recorded
    /// InnoDB deadlock Diesel did not flag.
    ///
    /// `every_error_aborts`: the backend aborts the transaction on any failed
    /// statement although the inner connection does not flag it (see
    /// `AsyncHookedConnection::new`); then a recorded error is enough.
    pub(crate) fn aborted(
        &self,
        status: &TransactionManagerStatus,
        every_error_aborts: bool,
    ) -> bool {
        requires_rollback(status)
            || self
                .abort_cause
                .as_ref()
                .is_some_and(|c| c.aborts_all || c.aborts_level || every_error_aborts)
    }

    /// The recorded cause says the server rolled the whole transaction back
    /// (an InnoDB deadlock): a failing savepoint rollback is then expected.
    #[cfg(feature = "async")]
    pub(crate) fn aborted_all(&self) -> bool {
        self.abort_cause.as_ref().is_some_and(|c| c.aborts_all)
    }

    /// Rule 5.3: the error to return for a transaction the database had
    /// aborted: the one that aborted it, when it passed through the wrapper.
    pub(crate) fn take_abort_error(&mut self) -> Error {
        match self.abort_cause.take() {
            Some(cause) => cause.into_error(),
            None => Error::DatabaseError(
                DatabaseErrorKind::Unknown,
                Box::new(String::from(
                    "the transaction had been aborted by the database after an earlier error \
                     (which did not pass through the wrapper); it was rolled back, not committed",
                )),
            ),
        }
    }

    /// The error for a level that closed without the wrapper: the recorded
    /// database error when a failed statement made the database roll it
    /// back; else (a raw COMMIT or ROLLBACK, a reset: rule 8) Diesel's own
    /// `NotInTransaction`, as plain Diesel returns then. The explanation
    /// (outcome unknown, hooks discarded) was logged at ERROR when the
    /// levels were found gone (`levels_vanished`).
    pub(crate) fn take_level_gone_error(&mut self) -> Error {
        match self.abort_cause.take() {
            Some(cause) => cause.into_error(),
            None => Error::NotInTransaction,
        }
    }

    /// Level `level` was rolled back while the database may still consider
    /// the transaction aborted (`still_aborted`): keep the cause for the
    /// enclosing level then, else forget it.
    pub(in crate::rules) fn cause_after_rollback(&mut self, level: u32, still_aborted: bool) {
        if level <= 1 {
            self.abort_cause = None;
        } else if let Some(cause) = &mut self.abort_cause {
            if still_aborted || cause.aborts_all {
                cause.level = cause.level.min(level - 1);
            } else if cause.level >= level {
                self.abort_cause = None;
            }
        }
    }
}
