//! The sync wrapper's transaction manager: begin, commit, rollback, the
//! panic guard, and keeping the wrapper's levels in line with the inner
//! connection (rules 3, 4, 5, 7, 8, 9).
//!
//! `HookedTransactionManager<C>` delegates every step to `C`'s own manager and
//! then reads the inner depth back: Diesel's connections change their status
//! by themselves (PostgreSQL follows libpq after every query), so the
//! wrapper never trusts its own count alone.

use std::marker::PhantomData;
use std::panic::{self, AssertUnwindSafe};

use diesel::connection::{Connection, TransactionManager, TransactionManagerStatus};
use diesel::result::{Error, QueryResult};

use crate::hooked::connection::{HookedConnection, Inner};
use crate::hooked::hooks::Hook;
use crate::rules::db_status::depth_of;
use crate::rules::levels::{Counter, DepthCheck, Raised};

/// The transaction manager of [`HookedConnection<C>`]: `C`'s own manager plus
/// the hook rules. You do not use it directly; `transaction()`,
/// `begin_test_transaction()` and pools call it.
///
/// Each method states what it guarantees about the hook levels, in the
/// manner of Diesel's `TransactionManager`.
///
/// ```
/// use diesel::connection::{Connection, TransactionManager};
/// use diesel::prelude::*;
/// use diesel_on_commit::{HookedConnection, HookedTransactionManager};
///
/// type DbConn = HookedConnection<SqliteConnection>;
/// type Manager = HookedTransactionManager<SqliteConnection>;
///
/// let mut conn = DbConn::establish(":memory:")?;
/// conn.transaction::<_, diesel::result::Error, _>(|conn| {
///     // Generic code that reads the depth through Diesel's trait:
///     let depth = Manager::transaction_manager_status_mut(conn).transaction_depth()?;
///     assert_eq!(depth.map(|d| d.get()), Some(1));
///     Ok(())
/// })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct HookedTransactionManager<C>(PhantomData<C>);

impl<C> std::fmt::Debug for HookedTransactionManager<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HookedTransactionManager")
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
        let level = conn.state.levels();
        match panic::catch_unwind(AssertUnwindSafe(|| callback(&mut *conn))) {
            Ok(Ok(_))
                if conn.check_levels() != DepthCheck::Broken && conn.state.levels() < level =>
            {
                // The level is already gone: the database rolled it back
                // after a failed statement the body swallowed (its hooks
                // were handled then), or it was closed behind our back.
                Err(conn.state.take_level_gone_error().into())
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
                let mut conn = Raised::new(conn, Counter::Unwinding);
                if let Err(e) = Self::roll_back_level(&mut conn, level) {
                    tracing::error!("rollback after a panic in the transaction body failed: {e}");
                }
                drop(conn);
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
        conn.check_levels();
        conn.state.touched();
        let result = begin_inner(&mut conn.inner);
        conn.state.observe_step(&result);
        result?;
        conn.state.began();
        Ok(())
    }

    /// Rule 5.1–5.2: `before_commit` hooks of level 1 run in order, inside
    /// the transaction; ones they register run too. On an `Err` or a panic
    /// the transaction is rolled back and the error returned (panic resumed).
    fn run_before_commit(conn: &mut HookedConnection<C>) -> QueryResult<()> {
        let mut cursor = 0;
        while let Some(entry) = conn.state.next_before_commit(&mut cursor) {
            let Hook::BeforeCommit(f) = entry.hook else {
                unreachable!("next_before_commit returns before_commit hooks")
            };
            match panic::catch_unwind(AssertUnwindSafe(|| f(&mut *conn))) {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::debug!(hook = %entry.label, "before_commit hook failed: {error}; rolling back");
                    let _ = Self::roll_back_level(conn, conn.state.levels());
                    return Err(error);
                }
                Err(payload) => {
                    tracing::error!(hook = %entry.label, "before_commit hook panicked; rolling back");
                    let mut conn = Raised::new(conn, Counter::Unwinding);
                    let level = conn.state.levels();
                    let _ = Self::roll_back_level(&mut conn, level);
                    drop(conn);
                    panic::resume_unwind(payload);
                }
            }
        }
        Ok(())
    }

    /// Rule 5.3: the database aborted the transaction (a statement error the
    /// body swallowed). Roll back and return the error that aborted it.
    fn roll_back_aborted(conn: &mut HookedConnection<C>) -> Error {
        let error = conn.state.take_abort_error();
        tracing::debug!(
            "transaction aborted by an earlier error; rolling back instead of committing: {error}"
        );
        let _ = Self::roll_back_level(conn, conn.state.levels());
        error
    }

    /// Rolls back until the wrapper's levels are below `level` (the body may
    /// have left inner levels open). Returns the first error.
    pub(crate) fn roll_back_level(conn: &mut HookedConnection<C>, level: u32) -> QueryResult<()> {
        let mut result = Ok(());
        while conn.state.levels() >= level && level >= 1 {
            let before = conn.state.levels();
            let r = Self::rollback_transaction(conn);
            if result.is_ok() {
                result = r;
            }
            if conn.state.levels() >= before {
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
        if conn.check_levels() != DepthCheck::Matches || conn.state.levels() == 0 {
            conn.state.touched();
            return Inner::<C>::rollback_transaction(&mut conn.inner);
        }
        let level = conn.state.levels();
        let before = depth_of(conn.inner_status()).unwrap_or(0);
        conn.state.touched();
        let result = Inner::<C>::rollback_transaction(&mut conn.inner);
        conn.state.observe_step(&result);
        let status = Inner::<C>::transaction_manager_status_mut(&mut conn.inner);
        conn.state.after_rollback(level, before, status);
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
        match conn.check_levels() {
            DepthCheck::Matches if conn.state.levels() > 0 => {}
            DepthCheck::Broken => {
                // Its hooks were handled as a rollback (rule 9): nothing may
                // commit now. Roll back as far as the connection allows.
                conn.state.touched();
                return Err(Inner::<C>::rollback_transaction(&mut conn.inner)
                    .err()
                    .unwrap_or(Error::BrokenTransactionManager));
            }
            _ => {
                conn.state.touched();
                return Inner::<C>::commit_transaction(&mut conn.inner);
            }
        }
        let level = conn.state.levels();
        if level == 1 {
            Self::run_before_commit(conn)?;
            if conn.state.levels() != 1 || conn.check_levels() != DepthCheck::Matches {
                // A before_commit hook closed the transaction itself.
                return Err(Error::NotInTransaction);
            }
        }
        if conn.state.aborted(
            Inner::<C>::transaction_manager_status_mut(&mut conn.inner),
            false,
        ) {
            return Err(Self::roll_back_aborted(conn));
        }
        // O1: the outbox rows of the transaction are written after the last
        // before_commit hook, before COMMIT; a failed flush rolls back like
        // a before_commit Err. One comparison when there is none.
        #[cfg(feature = "outbox")]
        let flushed = if level == 1 && conn.state.outbox_rows() > 0 {
            match crate::outbox::flush::flush_queued(conn) {
                Ok(flushed) => flushed,
                Err(error) => {
                    let _ = Self::roll_back_level(conn, conn.state.levels());
                    return Err(error);
                }
            }
        } else {
            None
        };
        let before = depth_of(conn.inner_status()).unwrap_or(0);
        conn.state.touched();
        let result = Inner::<C>::commit_transaction(&mut conn.inner);
        conn.state.observe_step(&result);
        let status = Inner::<C>::transaction_manager_status_mut(&mut conn.inner);
        if conn
            .state
            .after_commit(level, before, result.is_ok(), status)
        {
            #[cfg(feature = "outbox")]
            if let Some(flushed) = flushed {
                conn.state.capture_outbox(flushed);
            }
            conn.fire_commit_hooks();
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
        conn.state.lost() || Inner::<C>::is_broken_transaction_manager(&mut conn.inner)
    }
}
