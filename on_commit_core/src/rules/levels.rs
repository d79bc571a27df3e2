//! `HookState`: what a wrapper keeps beside its inner connection, and the
//! level rules that do not depend on how the inner transaction manager is
//! driven (rules 3, 4, 8, 9, 10), written once for both wrappers.
//!
//! `HookedConnection` (`hooked/manager.rs`) and `AsyncHookedConnection`
//! (`async_hooked/manager.rs`) differ only in how they drive the inner
//! manager (blocking or awaited) and how they run hooks (at once, or awaited
//! after the step). The wrapper's levels, how they are kept in line with the
//! inner connection's `TransactionManagerStatus`, and what a commit, a
//! rollback, a broken connection or vanished levels do to the queue are
//! here; where a new hook goes is in `placement.rs`, the error that aborted
//! a transaction in `abort.rs`, test transactions in `baseline.rs` and
//! capture in `capture.rs`. The fields are private to `rules/`: the wrappers
//! change them only through the named operations of those files, as
//! Diesel's `TransactionManagerStatus` changes its depth only through
//! `change_transaction_depth`.

use diesel::connection::TransactionManagerStatus;
use diesel::result::{Error, QueryResult};

use crate::rules::abort::AbortCause;
use crate::rules::capture::CaptureState;
use crate::rules::db_status::{depth_of, is_lost_connection, requires_rollback};
use crate::rules::failures::{FirstPanic, HookPanics};
use crate::rules::placement::OutsideTransaction;
use crate::rules::queue::{Entry, HookQueue, QueuedHook};

pub(crate) use crate::rules::counters::{Counter, HasHookState, Raised};

/// Everything a wrapper keeps beside the inner connection.
pub(crate) struct HookState<H: QueuedHook> {
    pub(in crate::rules) queue: HookQueue<H>,
    /// User levels opened by the wrapper and still open (`d` when in sync).
    pub(in crate::rules) levels: u32,
    /// A test transaction is open below the user levels (rule 11).
    pub(in crate::rules) baseline: bool,
    pub(in crate::rules) outside: OutsideTransaction,
    pub(in crate::rules) hook_panics: HookPanics,
    /// Non-zero while `on_commit`-kind hooks run after COMMIT or at once:
    /// their own registrations are exempt from `WarnAndRun` and `Panic`
    /// (rule 2). Changed only by `counters.rs`.
    pub(in crate::rules) running_commit_hooks: u32,
    /// Non-zero while a panic of the transaction body is being handled: an
    /// `on_rollback` hook's panic is then only logged (rule 6). Changed only
    /// by `counters.rs`.
    pub(in crate::rules) unwinding: u32,
    pub(in crate::rules) capture: Option<CaptureState<H::Commit>>,
    /// The first database error seen inside the open user transaction, kept
    /// to report a transaction the database aborted (rule 5.3).
    pub(in crate::rules) abort_cause: Option<AbortCause>,
    /// A database error said the connection was lost (rule 9).
    pub(in crate::rules) lost: bool,
    /// What reached the inner connection since the wrapper last checked its
    /// levels against it (see [`Freshness`]).
    pub(in crate::rules) freshness: Freshness,
    /// What the wrapper keeps for hooks it runs later (the async wrapper's
    /// due and next hooks; nothing for the sync wrapper, which runs hooks
    /// at once). The rules hand hooks to it through
    /// [`QueuedHook::rolled_back`].
    pub(in crate::rules) later: H::Later,
}

/// What reached the inner connection since the wrapper last checked its
/// levels against the inner depth (rules 8, 9). Only the wrapper's own
/// paths reach the inner connection, and each of them records here that it
/// did, so a hook registered right after a check (the common case: several
/// hooks in a row) skips the depth read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
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

impl<H: QueuedHook> HookState<H> {
    pub(crate) fn new(later: H::Later) -> Self {
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
            freshness: Freshness::Unchecked,
            later,
        }
    }

    #[cfg(feature = "async")]
    /// Whether a panic of the transaction body is being handled: a hook's
    /// panic is then only logged (rule 6).
    pub(crate) fn unwinding(&self) -> bool {
        self.unwinding > 0
    }

    /// User levels the wrapper opened that are still open (`d`, once
    /// checked against the inner connection).
    #[inline]
    pub(crate) fn levels(&self) -> u32 {
        self.levels
    }

    /// Sets the policy of rule 2.
    pub(crate) fn set_outside(&mut self, policy: OutsideTransaction) {
        self.outside = policy;
    }

    /// The policy of rule 6.
    pub(crate) fn hook_panics(&self) -> HookPanics {
        self.hook_panics
    }

    /// Sets the policy of rule 6.
    pub(crate) fn set_hook_panics(&mut self, policy: HookPanics) {
        self.hook_panics = policy;
    }

    /// A database error said the connection was lost (rule 9).
    pub(crate) fn lost(&self) -> bool {
        self.lost
    }

    #[cfg(feature = "async")]
    /// The connection is known to be lost (rule 9): it is reported broken
    /// from the next check on.
    pub(crate) fn mark_lost(&mut self) {
        self.lost = true;
    }

    /// What the wrapper keeps for hooks it runs later.
    #[cfg(feature = "async")]
    pub(crate) fn later(&mut self) -> &mut H::Later {
        &mut self.later
    }

    /// `into_inner()` with an open user transaction (rule 10): every queued
    /// hook is discarded with a warning, none runs.
    pub(crate) fn discard_for_into_inner(&mut self, wrapper: &str) {
        if !self.queue.is_empty() || self.levels > 0 {
            tracing::warn!(
                discarded = self.queue.len(),
                levels = self.levels,
                "{wrapper}::into_inner with an open transaction: its hooks are discarded, none runs"
            );
            drop(self.queue.take_all());
            self.levels = 0;
        }
    }

    /// The state's part of a wrapper's `Debug` output.
    pub(crate) fn debug_fields(&self, out: &mut std::fmt::DebugStruct<'_, '_>) {
        out.field("levels", &self.levels)
            .field("test_transaction", &self.baseline)
            .field("queued_hooks", &self.queue.len())
            .field("outside_transaction", &self.outside)
            .field("hook_panics", &self.hook_panics);
    }

    /// The inner connection may have changed: the next registration checks.
    #[inline]
    pub(crate) fn touched(&mut self) {
        if self.freshness == Freshness::Checked {
            self.freshness = Freshness::Unchecked;
        }
    }

    /// Brings the levels in line with the inner connection's status (rules
    /// 8 and 9); called at every step. In the common case it is a flag test
    /// (nothing reached the inner connection since the last check, so its
    /// status is not even read: behind an `Arc` and a `Mutex` in
    /// diesel-async's `SyncConnectionWrapper`) or one status read and a
    /// comparison, inlined.
    #[inline]
    pub(crate) fn check_levels<'s>(
        &mut self,
        status: impl FnOnce() -> &'s mut TransactionManagerStatus,
    ) -> DepthCheck {
        if self.freshness == Freshness::Checked {
            return DepthCheck::Matches;
        }
        self.check_depth(status())
    }

    /// [`check_levels`](Self::check_levels) without the flag test, for a status at hand.
    #[inline]
    pub(crate) fn check_depth(&mut self, status: &mut TransactionManagerStatus) -> DepthCheck {
        let expected = u32::from(self.baseline) + self.levels;
        match depth_of(status) {
            Some(real) if real == expected && !self.lost && self.freshness != Freshness::Failed => {
                self.freshness = Freshness::Checked;
                DepthCheck::Matches
            }
            real => self.check_levels_slow(real),
        }
    }

    #[cold]
    #[inline(never)]
    fn check_levels_slow(&mut self, real: Option<u32>) -> DepthCheck {
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
            self.freshness = Freshness::Unchecked;
            DepthCheck::Foreign
        } else {
            self.freshness = Freshness::Checked;
            DepthCheck::Matches
        }
    }

    /// The inner depth the levels stand for: what the inner connection's
    /// depth is right after a check that returned [`DepthCheck::Matches`].
    #[cfg(feature = "async")]
    #[inline]
    pub(crate) fn expected_depth(&self) -> u32 {
        u32::from(self.baseline) + self.levels
    }

    /// User depth `d`: the inner depth minus the test-transaction baseline.
    #[inline]
    pub(crate) fn user_depth(&self, status: &TransactionManagerStatus) -> u32 {
        depth_of(status)
            .unwrap_or(0)
            .saturating_sub(u32::from(self.baseline))
    }

    /// Whether the levels were checked against the inner connection and
    /// nothing reached it since (see [`Freshness`]).
    #[cfg(feature = "async")]
    #[inline]
    pub(crate) fn is_checked(&self) -> bool {
        self.freshness == Freshness::Checked && !self.lost
    }

    /// The wrapper's own BEGIN (or SAVEPOINT) succeeded, and the levels had
    /// been checked right before it (`was_checked`, from
    /// [`is_checked`](Self::is_checked) before the step touched the inner
    /// connection): the inner depth went up by one with the levels, so they
    /// are still checked and the next registration skips the depth read.
    #[cfg(feature = "async")]
    #[inline]
    pub(crate) fn began_checked(&mut self, was_checked: bool) {
        // `began`, with `forget_abort_cause`.
        self.levels += 1;
        if self.levels == 1 {
            self.forget_abort_cause();
            self.lost = false;
        }
        if was_checked {
            self.freshness = Freshness::Checked;
        }
    }

    /// Right after a step of the wrapper's own (COMMIT, RELEASE, ROLLBACK)
    /// and its bookkeeping, with the inner status at hand: when the inner
    /// depth is the one the levels stand for, they are checked, as the next
    /// [`check_levels`](Self::check_levels) would find without this (it
    /// would read the status again). Only `check_depth`'s fast path: a
    /// mismatch is left to that next check, as before.
    #[cfg(feature = "async")]
    #[inline]
    pub(crate) fn checked_if_matches(&mut self, status: &TransactionManagerStatus) {
        if !self.lost
            && self.freshness != Freshness::Failed
            && depth_of(status) == Some(self.expected_depth())
        {
            self.freshness = Freshness::Checked;
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
    // Kept out of line: the sync wrapper's counts depend on it (see
    // `after_commit_inline`).
    #[inline(never)]
    pub(crate) fn after_commit(
        &mut self,
        level: u32,
        before: u32,
        ok: bool,
        status: &mut TransactionManagerStatus,
    ) -> bool {
        self.after_commit_body(level, before, ok, status)
    }

    /// [`after_commit`](Self::after_commit), inlined into the async
    /// wrapper's commit (~25 instructions per COMMIT or RELEASE less).
    /// Inlined into the sync wrapper's too (`#[inline]` on `after_commit`),
    /// it made the sync counts worse (100 hooks 1.303 -> 1.328), so
    /// `after_commit` stays a call there.
    #[cfg(feature = "async")]
    #[inline]
    pub(crate) fn after_commit_inline(
        &mut self,
        level: u32,
        before: u32,
        ok: bool,
        status: &mut TransactionManagerStatus,
    ) -> bool {
        self.after_commit_body(level, before, ok, status)
    }

    #[inline(always)]
    fn after_commit_body(
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
    /// registration order (or, for the async wrapper, are handed to
    /// [`later`](Self::later) to be awaited in that order). Hooks of the
    /// enclosing levels stay.
    pub(crate) fn rolled_back(&mut self, level: u32) {
        if self.queue.is_empty() {
            return;
        }
        let policy = self.hook_panics;
        let never_resume = self.unwinding > 0 || std::thread::panicking();
        let mut panics = FirstPanic::new();
        for entry in self.queue.take_from_level(level) {
            H::rolled_back(entry, &mut self.later, &mut panics);
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
        if self.freshness == Freshness::Failed && vanished > 0 {
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
             (a raw COMMIT/ROLLBACK or a reset): their outcome is unknown, their hooks \
             were discarded and none runs; transaction() returns NotInTransaction"
        );
        self.abort_cause = None;
    }

    /// The outermost COMMIT succeeded (rule 5.4): the abort cause is
    /// forgotten, and the hooks of level 1, in registration order, are
    /// handed over to run (`None` when there are none: the fast path of a
    /// transaction without hooks, which allocates nothing). Hand the spent
    /// `Vec` back with [`recycle`](Self::recycle).
    #[inline]
    pub(crate) fn committed(&mut self) -> Option<Vec<Entry<H>>> {
        self.abort_cause = None;
        if self.queue.is_empty() {
            self.queue.release_idle_capacity();
            return None;
        }
        Some(self.queue.take_all())
    }

    /// [`committed`](Self::committed) for the async wrapper, with
    /// `forget_abort_cause`. (Shared, that test made the sync wrapper's
    /// callgrind counts worse by a few instructions per transaction and
    /// ~1 per hook: a change of its inlining, so each wrapper has its own.)
    #[cfg(feature = "async")]
    #[inline]
    pub(crate) fn committed_async(&mut self) -> Option<Vec<Entry<H>>> {
        self.forget_abort_cause();
        if self.queue.is_empty() {
            self.queue.release_idle_capacity();
            return None;
        }
        Some(self.queue.take_all())
    }

    /// `abort_cause = None`, with the test written out: in the common case
    /// (no cause recorded) no out-of-line drop of the old value is called
    /// (~20 instructions per transaction on the async wrapper).
    #[cfg(feature = "async")]
    #[inline]
    fn forget_abort_cause(&mut self) {
        if self.abort_cause.is_some() {
            self.abort_cause = None;
        }
    }

    /// The `Vec` that [`committed`](Self::committed) handed over, emptied
    /// after `fired` hooks ran: kept for the next transaction unless it grew
    /// huge (rule 14).
    #[inline]
    pub(crate) fn recycle(&mut self, spent: Vec<Entry<H>>, fired: usize) {
        self.queue.recycle(spent, fired);
    }

    /// Whether a `before_commit` hook is queued (rule 5.1): without one, the
    /// async wrapper's commit skips its `before_commit` step (and its
    /// future) altogether.
    #[cfg(feature = "async")]
    #[inline]
    pub(crate) fn has_before_commit(&self) -> bool {
        self.queue.has_before_commit()
    }

    /// The next `before_commit` hook of the open transaction, in
    /// registration order from `cursor` (rule 5.1); hooks that the ones run
    /// so far registered are included.
    pub(crate) fn next_before_commit(&mut self, cursor: &mut usize) -> Option<Entry<H>> {
        self.queue.next_before_commit(cursor)
    }
}

/// Rule 10: dropping a wrapper with an open user transaction runs its
/// `on_rollback` hooks (the database rolls back when the session ends) and
/// discards the rest. A hook's panic here is logged, never resumed. Hooks
/// that the wrapper runs later (async) go to its `later`, whose own `Drop`
/// hands them on: no user hook runs inside the async wrapper's `Drop`.
impl<H: QueuedHook> Drop for HookState<H> {
    fn drop(&mut self) {
        if self.levels > 0 || !self.queue.is_empty() {
            self.levels = 0;
            self.unwinding += 1; // no panic may leave `drop`
            self.rolled_back(1);
        }
    }
}
