//! The transaction manager: begin, commit, rollback, the panic guard, and
//! keeping the wrapper's levels in line with the inner connection (SPEC
//! rules 3, 4, 5, 7, 8, 9).
//!
//! `HookedTransactionManager<C>` delegates every step to `C`'s own manager and
//! then reads the inner depth back: Diesel's connections change their status
//! by themselves (PostgreSQL follows libpq after every query), so the
//! wrapper never trusts its own count alone.

use std::marker::PhantomData;
use std::panic::{self, AssertUnwindSafe};

use diesel::connection::{
    Connection, TransactionManager, TransactionManagerStatus, ValidTransactionManagerStatus,
};
use diesel::result::{DatabaseErrorInformation, DatabaseErrorKind, Error, QueryResult};

use crate::connection::{HookState, HookedConnection, Touch};
use crate::hook::{self, CommitHook, FirstPanic, Hook, HookLabel};
use crate::testing::Capture;

type Inner<C> = <C as Connection>::TransactionManager;

/// The transaction manager of [`HookedConnection<C>`]: `C`'s own manager plus
/// the hook rules. You do not use it directly; `transaction()`,
/// `begin_test_transaction()` and pools call it.
///
/// Each method states what it guarantees about the hook levels, in the
/// manner of Diesel's `TransactionManager`.
pub struct HookedTransactionManager<C>(PhantomData<C>);

impl<C> std::fmt::Debug for HookedTransactionManager<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HookedTransactionManager")
    }
}

/// How the wrapper's levels compare with the inner connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DepthCheck {
    /// The inner depth is the baseline plus the wrapper's levels.
    Matches,
    /// The inner connection is deeper: a transaction the wrapper did not open.
    Foreign,
    /// The inner transaction manager is in error, or the connection was lost.
    Broken,
}

/// The inner connection's depth, or `None` when its manager is in error.
#[inline]
pub(crate) fn real_depth<C: Connection>(inner: &mut C) -> Option<u32> {
    match Inner::<C>::transaction_manager_status_mut(inner).transaction_depth() {
        Ok(depth) => Some(depth.map_or(0, |d| d.get())),
        Err(_) => None,
    }
}

/// Diesel's flag for "the database aborted this transaction": set by
/// PostgreSQL after a failed statement, by MySQL after a deadlock.
fn requires_rollback<C: Connection>(inner: &mut C) -> bool {
    matches!(
        Inner::<C>::transaction_manager_status_mut(inner),
        TransactionManagerStatus::Valid(ValidTransactionManagerStatus {
            in_transaction: Some(status),
            ..
        }) if status.requires_rollback_maybe_up_to_top_level
    )
}

/// The first database error seen inside the user transaction (rule 5.3).
pub(crate) struct AbortCause {
    level: u32,
    kind: DatabaseErrorKind,
    info: RecordedInfo,
    /// The server rolled back the whole transaction (an InnoDB deadlock):
    /// no savepoint rollback revives it, and Diesel may not know (its MySQL
    /// `batch_execute` reports 1213 as `Unknown` and sets no flag).
    aborts_all: bool,
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

/// MySQL and MariaDB report a lost connection as an unknown error.
fn is_lost_connection(kind: DatabaseErrorKind, message: &str) -> bool {
    kind == DatabaseErrorKind::ClosedConnection
        || message.contains("server has gone away")
        || message.contains("Lost connection to")
        || message.contains("server closed the connection unexpectedly")
}

impl<C: Connection> HookState<C> {
    /// A database error came back through the wrapper.
    pub(crate) fn observe_error(&mut self, error: &Error) {
        self.touch = Touch::Failed;
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
                });
            }
        }
    }

    /// The recorded cause says the whole transaction is gone.
    pub(crate) fn aborted_by_server(&self) -> bool {
        self.abort_cause.as_ref().is_some_and(|c| c.aborts_all)
    }

    /// Level `level` was rolled back while the database may still consider
    /// the transaction aborted (`still_aborted`): keep the cause for the
    /// enclosing level then, else forget it.
    pub(crate) fn cause_after_rollback(&mut self, level: u32, still_aborted: bool) {
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

    /// Level `level` and every level above it rolled back (rule 4): their
    /// hooks are discarded, then their `on_rollback` hooks run in
    /// registration order. Hooks of the enclosing levels stay.
    pub(crate) fn rolled_back(&mut self, level: u32) {
        if self.queue.is_empty() {
            return;
        }
        let policy = self.hook_panics;
        let never_resume = self.unwinding > 0 || std::thread::panicking();
        let mut panics = FirstPanic::new();
        for entry in self.queue.take_from_level(level) {
            if let Hook::Rollback(f) = entry.hook {
                hook::run_plain(f, &entry.label, &mut panics);
            }
        }
        panics.finish(policy, never_resume, "after a rollback");
    }

    /// The connection is broken or lost (rule 9): every queued hook is
    /// discarded, the `on_rollback` hooks run, no `on_commit` hook ever will.
    pub(crate) fn connection_broken(&mut self) {
        if self.levels > 0 || !self.queue.is_empty() {
            tracing::error!(
                levels = self.levels,
                queued = self.queue.len(),
                "the connection broke inside a transaction: its on_commit hooks are discarded, \
                 its on_rollback hooks run (the outcome of an unfinished COMMIT is unknown)"
            );
        }
        self.levels = 0;
        self.baseline = false;
        self.abort_cause = None;
        self.rolled_back(1);
    }

    /// Levels the wrapper opened vanished without it committing or rolling
    /// them back.
    ///
    /// * Right after a statement failed through the wrapper (SQLite rolls
    ///   the whole transaction back on `RAISE(ROLLBACK)` or a full disk, and
    ///   Diesel notices): a failed statement commits nothing, so this is a
    ///   rollback (rule 4): their `on_rollback` hooks run, and the error is
    ///   kept to be returned from `transaction()`.
    /// * Otherwise (a raw COMMIT or ROLLBACK, a reset) the wrapper cannot know
    ///   what happened, so neither kind of their hooks runs (rule 8).
    fn levels_vanished(&mut self, real: u32) {
        let baseline = self.baseline && real >= 1;
        let kept = real - u32::from(baseline);
        let vanished = self.levels - kept;
        self.levels = kept;
        self.baseline = baseline;
        if self.touch == Touch::Failed && vanished > 0 {
            tracing::debug!(
                vanished,
                "the database rolled back the transaction after a failed statement"
            );
            if let Some(cause) = &mut self.abort_cause {
                cause.level = cause.level.min(kept);
            }
            self.rolled_back(kept + 1);
            return;
        }
        let discarded = self.queue.take_from_level(kept + 1).count();
        tracing::error!(
            vanished,
            test_transaction_vanished = !baseline && real == 0,
            discarded_hooks = discarded,
            "transaction levels opened by HookedConnection were closed behind its back \
             (a raw COMMIT/ROLLBACK or a reset): their hooks are discarded, none runs"
        );
        self.abort_cause = None;
    }
}

/// InnoDB's deadlock (1213): the server rolled the whole transaction back.
fn is_innodb_deadlock(message: &str) -> bool {
    message.starts_with("Deadlock found when trying to get lock")
}

impl<C: Connection> HookedConnection<C> {
    /// Brings the wrapper's levels in line with the inner connection (rules
    /// 8 and 9); called at every step. In the common case it is a flag test
    /// (nothing touched the inner connection since the last check) or one
    /// status read and a comparison, inlined.
    #[inline]
    pub(crate) fn sync(&mut self) -> DepthCheck {
        // Nothing reached the inner connection since the last check: the
        // levels are still right (see `Touch`), no need to read the depth.
        if self.state.touch == Touch::Checked {
            return DepthCheck::Matches;
        }
        let expected = u32::from(self.state.baseline) + self.state.levels;
        match real_depth(&mut self.inner) {
            Some(real)
                if real == expected && !self.state.lost && self.state.touch != Touch::Failed =>
            {
                self.state.touch = Touch::Checked;
                DepthCheck::Matches
            }
            real => self.sync_slow(real),
        }
    }

    #[cold]
    #[inline(never)]
    fn sync_slow(&mut self, real: Option<u32>) -> DepthCheck {
        let real = match real {
            Some(real) if !self.state.lost => real,
            _ => {
                self.state.connection_broken();
                return DepthCheck::Broken;
            }
        };
        let expected = u32::from(self.state.baseline) + self.state.levels;
        if real < expected {
            self.state.levels_vanished(real);
        }
        if real > expected {
            self.state.touch = Touch::Unchecked;
            DepthCheck::Foreign
        } else {
            self.state.touch = Touch::Checked;
            DepthCheck::Matches
        }
    }

    /// User depth `d`: the inner depth minus the test-transaction baseline.
    #[inline]
    pub(crate) fn user_depth(&mut self) -> u32 {
        real_depth(&mut self.inner)
            .unwrap_or(0)
            .saturating_sub(u32::from(self.state.baseline))
    }

    /// Runs one `on_commit`-kind hook now, or hands it to the open capture
    /// (rule 12).
    #[inline]
    pub(crate) fn dispatch_commit_hook(
        &mut self,
        hook: CommitHook<C>,
        label: HookLabel,
        panics: &mut FirstPanic,
    ) {
        if let Some(capture) = &mut self.state.capture {
            capture.labels.push(label);
            if capture.mode == Capture::Collect {
                capture.hooks.push(hook);
                return;
            }
        }
        hook::run_commit_hook(self, hook, &label, panics);
    }

    /// Runs a batch of `on_commit`-kind hooks at `d == 0`, in order; their
    /// own registrations run at once (rule 2's exemption). Returns the first
    /// panic, for the caller to resume (or log) once it has tidied up.
    pub(crate) fn run_commit_hooks<I>(&mut self, hooks: I) -> FirstPanic
    where
        I: IntoIterator<Item = (HookLabel, CommitHook<C>)>,
    {
        let mut panics = FirstPanic::new();
        self.state.running_commit_hooks += 1;
        for (label, hook) in hooks {
            self.dispatch_commit_hook(hook, label, &mut panics);
        }
        self.state.running_commit_hooks -= 1;
        panics
    }

    /// The outermost COMMIT succeeded (rule 5.4).
    #[inline]
    fn fire_commit_hooks(&mut self) {
        self.state.abort_cause = None;
        if self.state.queue.is_empty() {
            self.state.queue.release_idle_capacity();
            return;
        }
        let mut spent = self.state.queue.take_all();
        let fired = spent.len();
        let mut panics = FirstPanic::new();
        self.state.running_commit_hooks += 1;
        for entry in spent.drain(..) {
            if let Hook::Commit(hook) = entry.hook {
                self.dispatch_commit_hook(hook, entry.label, &mut panics);
            }
        }
        self.state.running_commit_hooks -= 1;
        self.state.queue.recycle(spent, fired);
        panics.finish(
            self.state.hook_panics,
            false,
            "after COMMIT; the transaction is committed",
        );
    }
}

impl<C: Connection> HookedTransactionManager<C> {
    /// `transaction()` with the first step given: `begin` opens the level
    /// (plain BEGIN/SAVEPOINT, or a `BEGIN` with options from a builder).
    /// On `Ok` the level is committed; on `Err`, a failed COMMIT or RELEASE
    /// that left it open, or a panic, it is rolled back (rules 4, 5, 7).
    pub(crate) fn run<F, R, E>(
        conn: &mut HookedConnection<C>,
        begin: impl FnOnce(&mut HookedConnection<C>) -> QueryResult<()>,
        callback: F,
    ) -> Result<R, E>
    where
        F: FnOnce(&mut HookedConnection<C>) -> Result<R, E>,
        E: From<Error>,
    {
        begin(conn)?;
        let level = conn.state.levels;
        match panic::catch_unwind(AssertUnwindSafe(|| callback(&mut *conn))) {
            Ok(Ok(_)) if conn.sync() != DepthCheck::Broken && conn.state.levels < level => {
                // The level is already gone: the database rolled it back
                // after a failed statement the body swallowed (its hooks
                // were handled then), or it was closed behind our back.
                Err(Self::level_gone_error(conn).into())
            }
            Ok(Ok(value)) => match Self::commit_transaction(conn) {
                Ok(()) => Ok(value),
                Err(commit_error) => {
                    let _ = Self::roll_back_level(conn, level);
                    Err(commit_error.into())
                }
            },
            Ok(Err(user_error)) => match Self::roll_back_level(conn, level) {
                Ok(()) | Err(Error::BrokenTransactionManager) => Err(user_error),
                Err(rollback_error) => Err(rollback_error.into()),
            },
            Err(payload) => {
                conn.state.unwinding += 1;
                if let Err(e) = Self::roll_back_level(conn, level) {
                    tracing::error!("rollback after a panic in the transaction body failed: {e}");
                }
                conn.state.unwinding -= 1;
                panic::resume_unwind(payload)
            }
        }
    }

    /// Opens a level with `begin_inner` run on the inner connection; the
    /// wrapper's level count follows only if it succeeded.
    pub(crate) fn begin_with(
        conn: &mut HookedConnection<C>,
        begin_inner: impl FnOnce(&mut C) -> QueryResult<()>,
    ) -> QueryResult<()> {
        conn.sync();
        conn.state.touched();
        begin_inner(&mut conn.inner)?;
        conn.state.levels += 1;
        if conn.state.levels == 1 {
            conn.state.abort_cause = None;
            // BEGIN went through: whatever error looked like a lost
            // connection, this one answers.
            conn.state.lost = false;
        }
        Ok(())
    }

    /// Rule 5.1–5.2: `before_commit` hooks of level 1 run in order, inside
    /// the transaction; ones they register run too. On an `Err` or a panic
    /// the transaction is rolled back and the error returned (panic resumed).
    fn run_before_commit(conn: &mut HookedConnection<C>) -> QueryResult<()> {
        let mut cursor = 0;
        while let Some(entry) = conn.state.queue.next_before_commit(&mut cursor) {
            let Hook::BeforeCommit(f) = entry.hook else {
                unreachable!("next_before_commit returns before_commit hooks")
            };
            match panic::catch_unwind(AssertUnwindSafe(|| f(&mut *conn))) {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::debug!(hook = %entry.label, "before_commit hook failed: {error}; rolling back");
                    let _ = Self::roll_back_level(conn, conn.state.levels);
                    return Err(error);
                }
                Err(payload) => {
                    tracing::error!(hook = %entry.label, "before_commit hook panicked; rolling back");
                    conn.state.unwinding += 1;
                    let _ = Self::roll_back_level(conn, conn.state.levels);
                    conn.state.unwinding -= 1;
                    panic::resume_unwind(payload);
                }
            }
        }
        Ok(())
    }

    /// Rule 5.3: the database aborted the transaction (a statement error the
    /// body swallowed). Roll back and return the error that aborted it.
    fn roll_back_aborted(conn: &mut HookedConnection<C>) -> Error {
        let error = match conn.state.abort_cause.take() {
            Some(cause) => cause.into_error(),
            None => Error::DatabaseError(
                DatabaseErrorKind::Unknown,
                Box::new(String::from(
                    "the transaction had been aborted by the database after an earlier error \
                     (which did not pass through HookedConnection); it was rolled back, not committed",
                )),
            ),
        };
        tracing::debug!(
            "transaction aborted by an earlier error; rolling back instead of committing: {error}"
        );
        let _ = Self::roll_back_level(conn, conn.state.levels);
        error
    }

    /// The error for a level that closed without the wrapper.
    fn level_gone_error(conn: &mut HookedConnection<C>) -> Error {
        match conn.state.abort_cause.take() {
            Some(cause) => cause.into_error(),
            None => Error::DatabaseError(
                DatabaseErrorKind::Unknown,
                Box::new(String::from(
                    "the transaction was closed behind HookedConnection's back (a raw COMMIT or \
                     ROLLBACK, or a reset); its outcome is unknown and its hooks were discarded",
                )),
            ),
        }
    }

    /// Rolls back until the wrapper's levels are below `level` (the body may
    /// have left inner levels open). Returns the first error.
    pub(crate) fn roll_back_level(conn: &mut HookedConnection<C>, level: u32) -> QueryResult<()> {
        let mut result = Ok(());
        while conn.state.levels >= level && level >= 1 {
            let before = conn.state.levels;
            let r = Self::rollback_transaction(conn);
            if result.is_ok() {
                result = r;
            }
            if conn.state.levels >= before {
                break; // no progress: the connection is broken; sync reports it
            }
        }
        result
    }
}

impl<C: Connection> TransactionManager<HookedConnection<C>> for HookedTransactionManager<C> {
    type TransactionStateData = <Inner<C> as TransactionManager<C>>::TransactionStateData;

    /// Begins a transaction or savepoint on the inner connection; on success
    /// the wrapper opens level `d + 1`, which holds no hook yet (and costs
    /// no allocation).
    fn begin_transaction(conn: &mut HookedConnection<C>) -> QueryResult<()> {
        Self::begin_with(conn, Inner::<C>::begin_transaction)
    }

    /// Rolls back the innermost level. Its hooks and those of every level
    /// above it are discarded and its `on_rollback` hooks run, whether the
    /// ROLLBACK succeeded or failed (the level is gone either way). A level
    /// the wrapper did not open is only delegated.
    fn rollback_transaction(conn: &mut HookedConnection<C>) -> QueryResult<()> {
        if conn.sync() != DepthCheck::Matches || conn.state.levels == 0 {
            conn.state.touched();
            return Inner::<C>::rollback_transaction(&mut conn.inner);
        }
        let level = conn.state.levels;
        let before = real_depth(&mut conn.inner).unwrap_or(0);
        conn.state.touched();
        let result = Inner::<C>::rollback_transaction(&mut conn.inner);
        match real_depth(&mut conn.inner) {
            None => conn.state.connection_broken(),
            Some(after) if after < before => {
                conn.state.levels -= 1;
                let still_aborted = requires_rollback(&mut conn.inner);
                conn.state.cause_after_rollback(level, still_aborted);
                conn.state.rolled_back(level);
                if after + 1 < before {
                    conn.sync();
                }
            }
            Some(_) => {} // nothing was rolled back; the level stays open
        }
        result
    }

    /// Commits the innermost level.
    ///
    /// * Level `k >= 2` (RELEASE SAVEPOINT): its hooks move to the end of
    ///   level `k - 1`, order kept; nothing runs.
    /// * Level 1 (COMMIT, or RELEASE of the savepoint above a test
    ///   transaction): `before_commit` hooks run first; then, if the database
    ///   had aborted the transaction, it is rolled back and that error
    ///   returned; else COMMIT is sent and, once it succeeded, the
    ///   `on_commit`-kind hooks run in registration order at `d == 0`.
    /// * A failed COMMIT or RELEASE that closed the level counts as a
    ///   rollback (rule 4); one that left it open leaves it to the caller.
    fn commit_transaction(conn: &mut HookedConnection<C>) -> QueryResult<()> {
        if conn.sync() != DepthCheck::Matches || conn.state.levels == 0 {
            conn.state.touched();
            return Inner::<C>::commit_transaction(&mut conn.inner);
        }
        let level = conn.state.levels;
        if level == 1 {
            Self::run_before_commit(conn)?;
            if conn.state.levels != 1 || conn.sync() != DepthCheck::Matches {
                // A before_commit hook closed the transaction itself.
                return Err(Error::NotInTransaction);
            }
        }
        if requires_rollback(&mut conn.inner) || conn.state.aborted_by_server() {
            return Err(Self::roll_back_aborted(conn));
        }
        let before = real_depth(&mut conn.inner).unwrap_or(0);
        conn.state.touched();
        let result = Inner::<C>::commit_transaction(&mut conn.inner);
        match real_depth(&mut conn.inner) {
            None => conn.state.connection_broken(),
            Some(after) if after < before => {
                conn.state.levels -= 1;
                match (&result, level) {
                    (Ok(()), 1) => conn.fire_commit_hooks(),
                    (Ok(()), _) => {
                        conn.state.queue.release(level);
                        if let Some(cause) = &mut conn.state.abort_cause {
                            cause.level = cause.level.min(level - 1);
                        }
                    }
                    (Err(_), _) => {
                        let still_aborted = requires_rollback(&mut conn.inner);
                        conn.state.cause_after_rollback(level, still_aborted);
                        conn.state.rolled_back(level);
                    }
                }
                if after + 1 < before {
                    conn.sync();
                }
            }
            Some(_) => {} // still open: the caller rolls it back
        }
        result
    }

    fn transaction_manager_status_mut(
        conn: &mut HookedConnection<C>,
    ) -> &mut TransactionManagerStatus {
        conn.state.touched();
        Inner::<C>::transaction_manager_status_mut(&mut conn.inner)
    }

    /// Diesel's `transaction`, plus: a failed COMMIT or RELEASE that left the
    /// level open is rolled back, and a panic in `callback` rolls the level
    /// back, restores the depth and is resumed (rule 7).
    fn transaction<F, R, E>(conn: &mut HookedConnection<C>, callback: F) -> Result<R, E>
    where
        F: FnOnce(&mut HookedConnection<C>) -> Result<R, E>,
        E: From<Error>,
    {
        Self::run(conn, Self::begin_transaction, callback)
    }

    fn is_broken_transaction_manager(conn: &mut HookedConnection<C>) -> bool {
        conn.state.lost || Inner::<C>::is_broken_transaction_manager(&mut conn.inner)
    }
}
