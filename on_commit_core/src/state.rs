//! `HookState`: what a wrapper keeps beside its inner connection, and the
//! rules that do not depend on how the inner transaction manager is driven
//! (SPEC rules 2, 4, 5.3, 8, 9, 10), written once for both wrappers.
//!
//! `HookedConnection` (`transaction.rs`) and `AsyncHookedConnection`
//! (`async_transaction.rs`) differ only in how they drive the inner manager
//! (blocking or awaited) and how they run hooks (at once, or awaited after
//! the step). Everything else — the wrapper's levels and how they are kept in
//! line with the inner connection's `TransactionManagerStatus`, the error
//! that aborted a transaction, what a rollback, a broken connection or
//! vanished levels do to the queue, and where a new hook goes — is here.

use diesel::connection::{TransactionManagerStatus, ValidTransactionManagerStatus};
use diesel::result::{DatabaseErrorInformation, DatabaseErrorKind, Error, QueryResult};

use crate::hook::{FirstPanic, HookLabel, HookPanics, OutsideTransaction};
use crate::queue::{Entry, HookQueue, QueuedHook};
use crate::testing::CaptureState;

/// Everything a wrapper keeps beside the inner connection.
pub(crate) struct HookState<H: QueuedHook> {
    pub(crate) queue: HookQueue<H>,
    /// User levels opened by the wrapper and still open (`d` when in sync).
    pub(crate) levels: u32,
    /// A test transaction is open below the user levels (rule 11).
    pub(crate) baseline: bool,
    pub(crate) outside: OutsideTransaction,
    pub(crate) hook_panics: HookPanics,
    /// Non-zero while `on_commit`-kind hooks run after COMMIT or at once:
    /// their own registrations are exempt from `WarnAndRun` and `Panic`
    /// (rule 2).
    pub(crate) running_commit_hooks: u32,
    /// Non-zero while a panic of the transaction body is being handled: an
    /// `on_rollback` hook's panic is then only logged (rule 6).
    pub(crate) unwinding: u32,
    pub(crate) capture: Option<CaptureState<H::Commit>>,
    /// The first database error seen inside the open user transaction, kept
    /// to report a transaction the database aborted (rule 5.3).
    pub(crate) abort_cause: Option<AbortCause>,
    /// A database error said the connection was lost (rule 9).
    pub(crate) lost: bool,
    /// What touched the inner connection since the wrapper last checked its
    /// levels against it (see [`Touch`]).
    pub(crate) touch: Touch,
    /// `on_rollback` hooks that are due but that this wrapper runs later, in
    /// order: the async wrapper awaits them after the step that rolled back.
    /// The sync wrapper runs hooks at once and never uses it.
    pub(crate) due: Vec<Entry<H>>,
    /// Every failed statement aborts the transaction (PostgreSQL), but the
    /// inner connection does not say so: diesel-async's `AsyncPgConnection`
    /// sets Diesel's requires-rollback flag for serialization failures only
    /// (sync `PgConnection` follows libpq). Then a recorded error is enough
    /// for rule 5.3.
    pub(crate) errors_abort: bool,
    /// Async hooks registered at `d == 0` by a running `on_commit`-kind hook
    /// (async wrapper): they run right after it, depth first.
    pub(crate) next: Vec<Entry<H>>,
}

/// What touched the inner connection since the wrapper last checked its
/// levels against the inner depth (rules 8, 9). Only the wrapper's own
/// paths reach the inner connection, and each of them records here that it
/// did, so a hook registered right after a check (the common case: several
/// hooks in a row) skips the depth read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Touch {
    /// Checked: the inner depth is the baseline plus the levels, and
    /// nothing reached the inner connection since.
    Checked,
    /// Something reached it (a statement, `inner_mut()`, a transaction
    /// step): check again before trusting the levels.
    Unchecked,
    /// The last statement through the wrapper failed: levels that vanish
    /// now were rolled back by the database, not behind our back.
    Failed,
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

/// The depth a transaction manager status reports, or `None` when it is in
/// error.
#[inline]
pub(crate) fn depth_of(status: &TransactionManagerStatus) -> Option<u32> {
    match status.transaction_depth() {
        Ok(depth) => Some(depth.map_or(0, |d| d.get())),
        Err(_) => None,
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
fn is_innodb_deadlock(message: &str) -> bool {
    message.starts_with("Deadlock found when trying to get lock")
}

impl<H: QueuedHook> HookState<H> {
    pub(crate) const fn new() -> Self {
        Self {
            queue: HookQueue::new(),
            levels: 0,
            baseline: false,
            outside: OutsideTransaction::Run,
            hook_panics: HookPanics::Resume,
            running_commit_hooks: 0,
            unwinding: 0,
            capture: None,
            abort_cause: None,
            lost: false,
            touch: Touch::Unchecked,
            due: Vec::new(),
            errors_abort: false,
            next: Vec::new(),
        }
    }

    /// The inner connection may have changed: the next registration checks.
    #[inline]
    pub(crate) fn touched(&mut self) {
        if self.touch == Touch::Checked {
            self.touch = Touch::Unchecked;
        }
    }

    /// Brings the levels in line with the inner connection's status (rules
    /// 8 and 9); called at every step. In the common case it is a flag test
    /// (nothing reached the inner connection since the last check, so its
    /// status is not even read: behind an `Arc` and a `Mutex` in
    /// diesel-async's `SyncConnectionWrapper`) or one status read and a
    /// comparison, inlined.
    #[inline]
    pub(crate) fn sync<'s>(
        &mut self,
        status: impl FnOnce() -> &'s mut TransactionManagerStatus,
    ) -> DepthCheck {
        if self.touch == Touch::Checked {
            return DepthCheck::Matches;
        }
        self.check_depth(status())
    }

    /// [`sync`](Self::sync) without the flag test, for a status at hand.
    #[inline]
    pub(crate) fn check_depth(&mut self, status: &mut TransactionManagerStatus) -> DepthCheck {
        let expected = u32::from(self.baseline) + self.levels;
        match depth_of(status) {
            Some(real) if real == expected && !self.lost && self.touch != Touch::Failed => {
                self.touch = Touch::Checked;
                DepthCheck::Matches
            }
            real => self.sync_slow(real),
        }
    }

    #[cold]
    #[inline(never)]
    fn sync_slow(&mut self, real: Option<u32>) -> DepthCheck {
        let real = match real {
            Some(real) if !self.lost => real,
            _ => {
                self.connection_broken();
                return DepthCheck::Broken;
            }
        };
        let expected = u32::from(self.baseline) + self.levels;
        if real < expected {
            self.levels_vanished(real);
        }
        if real > expected {
            self.touch = Touch::Unchecked;
            DepthCheck::Foreign
        } else {
            self.touch = Touch::Checked;
            DepthCheck::Matches
        }
    }

    /// User depth `d`: the inner depth minus the test-transaction baseline.
    #[inline]
    pub(crate) fn user_depth(&self, status: &TransactionManagerStatus) -> u32 {
        depth_of(status)
            .unwrap_or(0)
            .saturating_sub(u32::from(self.baseline))
    }

    /// An `on_commit`-kind hook is about to run (rule 12): with no capture
    /// open it is handed back; an open capture records its label and keeps
    /// it (`None`, [`Capture::Collect`](crate::Capture::Collect)) or hands
    /// it back to run (`Capture::Execute`).
    #[inline]
    pub(crate) fn through_capture(
        &mut self,
        label: HookLabel,
        hook: H::Commit,
    ) -> Option<H::Commit> {
        match &mut self.capture {
            Some(capture) => capture.capture(label, hook),
            None => Some(hook),
        }
    }

    /// A level was opened on the inner connection.
    pub(crate) fn began(&mut self) {
        self.levels += 1;
        if self.levels == 1 {
            self.abort_cause = None;
            // BEGIN went through: whatever error looked like a lost
            // connection, this one answers.
            self.lost = false;
        }
    }

    /// BEGIN, COMMIT or ROLLBACK failed: only whether the connection was
    /// lost matters here (the step's own bookkeeping does the rest).
    pub(crate) fn observe_step(&mut self, result: &QueryResult<()>) {
        if let Err(Error::DatabaseError(kind, info)) = result {
            if is_lost_connection(*kind, info.message()) {
                self.lost = true;
            }
        }
    }

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

    /// Rule 5.3: before COMMIT (or RELEASE), whether the database aborted
    /// the transaction: Diesel's requires-rollback flag, or a recorded
    /// InnoDB deadlock Diesel did not flag.
    pub(crate) fn aborted(&self, status: &TransactionManagerStatus) -> bool {
        requires_rollback(status)
            || self
                .abort_cause
                .as_ref()
                .is_some_and(|c| c.aborts_all || self.errors_abort)
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

    /// The error for a level that closed without the wrapper.
    pub(crate) fn take_level_gone_error(&mut self) -> Error {
        match self.abort_cause.take() {
            Some(cause) => cause.into_error(),
            None => Error::DatabaseError(
                DatabaseErrorKind::Unknown,
                Box::new(String::from(
                    "the transaction was closed behind the wrapper's back (a raw COMMIT or \
                     ROLLBACK, or a reset); its outcome is unknown and its hooks were discarded",
                )),
            ),
        }
    }

    /// Level `level` was rolled back while the database may still consider
    /// the transaction aborted (`still_aborted`): keep the cause for the
    /// enclosing level then, else forget it.
    fn cause_after_rollback(&mut self, level: u32, still_aborted: bool) {
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

    /// After the inner manager was asked to roll back level `level`, which
    /// was at inner depth `before`: if the level is gone (whether ROLLBACK
    /// succeeded or not), it and every level above it are rolled back (rule
    /// 4); a level still open stays for the caller.
    pub(crate) fn after_rollback(
        &mut self,
        level: u32,
        before: u32,
        status: &mut TransactionManagerStatus,
    ) {
        match depth_of(status) {
            None => self.connection_broken(),
            Some(after) if after < before => {
                self.levels -= 1;
                self.cause_after_rollback(level, requires_rollback(status));
                self.rolled_back(level);
                if after + 1 < before {
                    self.check_depth(status);
                }
            }
            Some(_) => {} // nothing was rolled back; the level stays open
        }
    }

    /// After the inner manager was asked to commit level `level`, which was
    /// at inner depth `before`, with result `ok`. Returns whether the
    /// outermost COMMIT succeeded: the caller then fires the `on_commit`-kind
    /// hooks (rule 5.4).
    ///
    /// * Released savepoint: its hooks join level `level - 1` (rule 3).
    /// * A failed COMMIT or RELEASE that closed the level: a rollback (rule
    ///   4). One that left it open leaves it to the caller.
    pub(crate) fn after_commit(
        &mut self,
        level: u32,
        before: u32,
        ok: bool,
        status: &mut TransactionManagerStatus,
    ) -> bool {
        match depth_of(status) {
            None => {
                self.connection_broken();
                false
            }
            Some(after) if after < before => {
                self.levels -= 1;
                let committed = match (ok, level) {
                    (true, 1) => true,
                    (true, _) => {
                        self.queue.release(level);
                        if let Some(cause) = &mut self.abort_cause {
                            cause.level = cause.level.min(level - 1);
                        }
                        false
                    }
                    (false, _) => {
                        self.cause_after_rollback(level, requires_rollback(status));
                        self.rolled_back(level);
                        false
                    }
                };
                if after + 1 < before {
                    self.check_depth(status);
                }
                committed
            }
            Some(_) => false, // still open: the caller rolls it back
        }
    }

    /// Level `level` and every level above it rolled back (rule 4): their
    /// hooks are discarded, then their `on_rollback` hooks run in
    /// registration order (or, for the async wrapper, are queued in `due`
    /// to be awaited in that order). Hooks of the enclosing levels stay.
    pub(crate) fn rolled_back(&mut self, level: u32) {
        if self.queue.is_empty() {
            return;
        }
        let policy = self.hook_panics;
        let never_resume = self.unwinding > 0 || std::thread::panicking();
        let mut panics = FirstPanic::new();
        for entry in self.queue.take_from_level(level) {
            if let Some(hook) = entry.hook.rolled_back(&entry.label, &mut panics) {
                self.due.push(Entry {
                    label: entry.label,
                    hook,
                });
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
            "transaction levels opened by the wrapper were closed behind its back \
             (a raw COMMIT/ROLLBACK or a reset): their hooks are discarded, none runs"
        );
        self.abort_cause = None;
    }

    /// The level a new hook joins (rule 1): the current one, when the
    /// levels match the inner connection and a user transaction is open.
    /// Otherwise the wrapper hands the hook to [`place_slow`](Self::place_slow).
    // The wrappers push with this test written out in their `register`:
    // returning the hook through `Option` from a shared `place()` cost ~9
    // instructions per hook (BENCHMARKS.md, change 5).
    #[inline]
    pub(crate) fn open_level(&self, check: DepthCheck) -> Option<u32> {
        (check == DepthCheck::Matches && self.levels >= 1).then_some(self.levels)
    }

    /// Where a new hook goes when [`open_level`](Self::open_level) has
    /// none (rules 1, 2, 8, 9): outside a transaction, or in a foreign or
    /// broken one. Queued (`None`: levels changed meanwhile), dropped or
    /// panicking by rule 2, 8 or 9, or handed back to be run at once
    /// (`Some`: an `on_commit`-kind hook at `d == 0` the policy lets run).
    #[cold]
    #[inline(never)]
    pub(crate) fn place_slow(
        &mut self,
        check: DepthCheck,
        label: HookLabel,
        hook: H,
    ) -> Option<H::Commit> {
        match check {
            DepthCheck::Matches => {}
            DepthCheck::Broken => {
                self.register_on_broken(label, hook);
                return None;
            }
            DepthCheck::Foreign => panic!(
                "{} hook {label} registered while the connection is in a transaction that \
                 the wrapper did not open (begun on inner_mut() or through the inner \
                 TransactionManager); open transactions with the wrapper's transaction()",
                hook.kind()
            ),
        }
        if self.levels >= 1 {
            let level = self.levels;
            self.queue.push(level, Entry { label, hook });
            return None;
        }
        let exempt = self.running_commit_hooks > 0;
        let kind = hook.kind();
        if hook.is_before_commit() {
            panic!(
                "before_commit hook {label} registered outside a transaction: autocommit \
                 already committed, there is nothing to veto; open a transaction first"
            );
        }
        match hook.into_commit() {
            Ok(commit) => {
                match self.outside {
                    _ if exempt => {}
                    OutsideTransaction::Run => {}
                    OutsideTransaction::WarnAndRun => tracing::warn!(
                        hook = %label,
                        "{kind} hook {label} registered outside a transaction: it runs at once"
                    ),
                    OutsideTransaction::Panic => panic!(
                        "{kind} hook {label} registered outside a transaction \
                         (OutsideTransaction::Panic): open a transaction first"
                    ),
                }
                Some(commit)
            }
            Err(_rollback) => {
                match self.outside {
                    OutsideTransaction::Run => {
                        tracing::debug!(hook = %label, "{kind} hook outside a transaction: dropped")
                    }
                    OutsideTransaction::WarnAndRun => tracing::warn!(
                        hook = %label,
                        "{kind} hook {label} registered outside a transaction: dropped, it can never run"
                    ),
                    OutsideTransaction::Panic => panic!(
                        "{kind} hook {label} registered outside a transaction \
                         (OutsideTransaction::Panic): there is nothing to roll back"
                    ),
                }
                None
            }
        }
    }

    /// Rule 9: on a broken connection a new `on_rollback` hook runs at once
    /// (the async wrapper: is due); other hooks are dropped with an ERROR log.
    fn register_on_broken(&mut self, label: HookLabel, hook: H) {
        if hook.is_rollback() {
            let mut panics = FirstPanic::new();
            if let Some(hook) = hook.rolled_back(&label, &mut panics) {
                self.due.push(Entry { label, hook });
            }
            panics.finish(self.hook_panics, false, "on a broken connection");
        } else {
            tracing::error!(
                hook = %label,
                "{} hook {label} registered on a broken connection: dropped, it will never run",
                hook.kind()
            );
        }
    }

    /// Takes the hooks queued in `due`, in order.
    #[cfg(feature = "async")]
    pub(crate) fn take_due(&mut self) -> Vec<Entry<H>> {
        std::mem::take(&mut self.due)
    }
}

/// Rule 10: dropping a wrapper with an open user transaction runs its
/// `on_rollback` hooks (the database rolls back when the session ends) and
/// discards the rest. A hook's panic here is logged, never resumed. Hooks
/// that the wrapper runs later (async) are handed to [`QueuedHook::orphaned`]:
/// no user hook runs inside the async wrapper's `Drop`.
impl<H: QueuedHook> Drop for HookState<H> {
    fn drop(&mut self) {
        if self.levels > 0 || !self.queue.is_empty() {
            self.levels = 0;
            self.unwinding += 1; // no panic may leave `drop`
            self.rolled_back(1);
        }
        if !self.due.is_empty() || !self.next.is_empty() {
            let mut due = std::mem::take(&mut self.due);
            due.append(&mut self.next);
            H::orphaned(due, "the connection was dropped");
        }
    }
}
