//! The runtime of diesel-on-commit: [`HookedConnection`], a Diesel
//! connection that runs hooks after the outermost COMMIT, after a rollback,
//! or just before COMMIT, and its async sibling `AsyncHookedConnection`.
//!
//! Users depend on the facade crate `diesel-on-commit`, which re-exports
//! everything here together with the macros. The contract (below) numbers
//! its rules; the code cites those numbers. Where each rule lives:
//!
//! | path | rules |
//! |---|---|
//! | `rules/queue.rs` | levels, merge, discard, order, capacity (1, 3, 4, 13, 14) |
//! | `rules/levels.rs` | the levels kept in line with the inner connection; commit, rollback, broken and vanished levels, `Drop` (3, 4, 8, 9, 10) |
//! | `rules/placement.rs` | where a new hook goes; the outside-a-transaction policy (1, 2, 8, 9) |
//! | `rules/abort.rs` | the error that aborted a transaction (5.3) |
//! | `rules/db_status.rs` | what Diesel's status and the database's errors say (5.3, 9, retries) |
//! | `rules/label.rs`, `rules/failures.rs` | labels; hook errors and panics (6, 14) |
//! | `rules/baseline.rs`, `rules/capture.rs` | test transactions, capture (11, 12) |
//! | `hooked/` | the sync wrapper: `connection.rs` (delegation), `manager.rs` (begin, commit, rollback, panic guard: 3, 4, 5, 7), `hooks.rs` (hook kinds, running them: 5.4, 6), `register.rs` (1, 2), `testing.rs` (11, 12) |
//! | `async_hooked/` | the async wrapper, same file names (A1, A2, C1–C3) |
//! | `transaction_hooks.rs` | the `TransactionHooks` trait |
//! | `options/` | transaction options and retries; `backends/` each backend's options |
//! | `macro_support/` | what the macros call (7, M1–M4) |
//! | `outbox/` | outbox hooks (feature `outbox`): registration, the flush, schema, handlers, drain, stats (O1, O2, O5, O6, O9, O11) |
//!
#![doc = include_str!("../CONTRACT.md")]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![warn(missing_debug_implementations)]

#[cfg(feature = "async")]
mod async_hooked;
mod backends;
mod hooked;
mod macro_support;
mod options;
#[cfg(feature = "outbox")]
#[cfg_attr(docsrs, doc(cfg(feature = "outbox")))]
pub mod outbox;
mod rules;
mod transaction_hooks;

#[cfg(feature = "async")]
pub use crate::async_hooked::connection::{AsyncHookedConnection, Observed};
#[cfg(feature = "async")]
pub use crate::async_hooked::manager::AsyncHookedTransactionManager;
#[cfg(feature = "async")]
pub use crate::async_hooked::testing::AsyncCapturedHooks;
#[cfg(feature = "mysql")]
pub use crate::backends::mysql::MysqlTransactionOptions;
#[cfg(feature = "postgres")]
pub use crate::backends::pg::PgTransactionOptions;
#[cfg(feature = "sqlite")]
pub use crate::backends::sqlite::SqliteTransactionMode;
pub use crate::hooked::connection::HookedConnection;
pub use crate::hooked::manager::HookedTransactionManager;
pub use crate::hooked::testing::CapturedHooks;
#[cfg(feature = "async")]
#[doc(hidden)]
pub use crate::options::async_builder::AsyncBeginSql;
#[cfg(feature = "async")]
pub use crate::options::async_builder::AsyncTransactionBuilder;
#[doc(hidden)]
pub use crate::options::builder::IsolationAndReadMode;
pub use crate::options::builder::{BeginStatement, IsolationLevel, NoRetry, TransactionBuilder};
pub use crate::options::retry::{RetryPolicy, Retryable};
pub use crate::rules::capture::Capture;
pub use crate::rules::db_status::is_retryable;
pub use crate::rules::failures::{HookPanics, HookResult};
pub use crate::rules::label::HookLabel;
pub use crate::rules::placement::OutsideTransaction;
pub use crate::transaction_hooks::{AsyncHookFn, TransactionHooks};

/// The names most code needs: `use diesel_on_commit::prelude::*;`.
///
/// ```
/// use diesel::prelude::*;
/// use diesel_on_commit::prelude::*;
///
/// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
/// conn.set_outside_transaction(OutsideTransaction::Panic);
/// let ((), hooks) = conn.capture_on_commit(Capture::Collect, |conn| {
///     conn.transaction::<_, diesel::result::Error, _>(|conn| {
///         TransactionHooks::on_commit(conn, || println!("sent"));
///         Ok(())
///     })
///     .unwrap();
/// });
/// assert_eq!(hooks.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub mod prelude {
    #[cfg(feature = "async")]
    pub use crate::{AsyncCapturedHooks, AsyncHookedConnection};
    pub use crate::{
        Capture, CapturedHooks, HookPanics, HookedConnection, OutsideTransaction, RetryPolicy,
        TransactionHooks,
    };
}

/// Items the macros' expansions name. Not public API: no stability promise.
#[doc(hidden)]
pub mod __private {
    #[cfg(feature = "async")]
    pub use crate::macro_support::async_atomic::*;
    #[cfg(feature = "async")]
    pub use crate::macro_support::async_atomic_options::*;
    pub use crate::macro_support::atomic::{atomic, AtomicReturn};
    pub use crate::macro_support::atomic_options::*;
    pub use crate::macro_support::conn_arg::{OnCommitConnection, WrappedConnection};
    pub use crate::macro_support::path_hook::{on_commit_path, NoArg, PathHook, WithConn};
    pub use crate::transaction_hooks::AsyncTransactionHooks;
    pub use diesel;
    #[cfg(feature = "async")]
    pub use diesel_async;
}
