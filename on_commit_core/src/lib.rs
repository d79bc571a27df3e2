//! The runtime of [diesel-on-commit](https://docs.rs/diesel-on-commit):
//! [`HookedConnection`], a Diesel connection that runs hooks after the
//! outermost COMMIT, after a rollback, or just before COMMIT.
//!
//! Users depend on the facade crate `diesel-on-commit`, which re-exports
//! everything here together with the macros. Where each rule of the contract
//! lives:
//!
//! | file | rules |
//! |---|---|
//! | `connection.rs` | the wrapper and its delegation of Diesel's traits |
//! | `transaction.rs` | begin, commit, rollback, panic guard (3, 4, 5, 7), driving the shared rules of `state.rs` |
//! | `queue.rs` | levels, merge, discard, order, cost (1, 3, 4, 13, 14) |
//! | `hook.rs` | hook kinds, labels, return types, panic isolation (6) |
//! | `register.rs` | registration and the outside-a-transaction policy (1, 2) |
//! | `testing.rs` | test transactions and capture (11, 12) |
//! | `builder.rs`, `retry.rs` | isolation levels and modes; retrying serialization failures |
//! | `atomic.rs` | what `#[atomic]` calls: the guard for any connection (7) |
//! | `atomic_options.rs` | what `#[atomic(isolation = .., retry = ..)]` calls |
//! | `state.rs` | the levels kept in line with the inner connection, for both wrappers (2, 4, 5.3, 8, 9, 10) |
//! | `async_connection.rs` | `AsyncHookedConnection` and its delegation of diesel-async's traits |
//! | `async_transaction.rs` | the async transaction manager; cancellation |
//! | `async_hook.rs` | async hook kinds; awaiting hooks; hooks left due by a dropped future |
//! | `async_register.rs`, `async_testing.rs` | registration, test transactions and capture on the async wrapper |
//! | `async_atomic.rs` | what `#[atomic]` on an `async fn` calls: the guards for any diesel-async connection |
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(missing_debug_implementations)]

#[cfg(feature = "async")]
mod async_atomic;
#[cfg(feature = "async")]
mod async_connection;
#[cfg(feature = "async")]
mod async_hook;
#[cfg(feature = "async")]
mod async_register;
#[cfg(feature = "async")]
mod async_testing;
#[cfg(feature = "async")]
mod async_transaction;
mod atomic;
mod atomic_options;
mod builder;
mod connection;
mod hook;
mod queue;
mod register;
mod retry;
mod state;
mod testing;
mod transaction;

#[cfg(feature = "async")]
pub use crate::async_connection::{AsyncHookedConnection, Observed};
#[cfg(feature = "async")]
pub use crate::async_testing::AsyncCapturedHooks;
#[cfg(feature = "async")]
pub use crate::async_transaction::AsyncHookedTransactionManager;
#[doc(hidden)]
pub use crate::builder::IsolationAndReadMode;
#[cfg(feature = "mysql")]
pub use crate::builder::MysqlTransactionOptions;
#[cfg(feature = "postgres")]
pub use crate::builder::PgTransactionOptions;
#[cfg(feature = "sqlite")]
pub use crate::builder::SqliteTransactionMode;
pub use crate::builder::{BeginStatement, IsolationLevel, NoRetry, TransactionBuilder};
pub use crate::connection::HookedConnection;
pub use crate::hook::{AsyncHookFn, HookLabel, HookPanics, HookResult, OutsideTransaction};
pub use crate::register::TransactionHooks;
pub use crate::retry::{is_retryable, RetryPolicy, Retryable};
pub use crate::testing::{Capture, CapturedHooks};
pub use crate::transaction::HookedTransactionManager;

/// The names most code needs: `use diesel_on_commit::prelude::*;`.
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
    pub use crate::async_atomic::*;
    pub use crate::atomic::{atomic, AtomicReturn};
    pub use crate::atomic_options::*;
    pub use crate::register::AsyncTransactionHooks;
    pub use diesel;
    #[cfg(feature = "async")]
    pub use diesel_async;
}
