//! The sync wrapper, `HookedConnection<C>`, over any `diesel::Connection`.
//! The async wrapper (`async_hooked/`) has the same files: a diff of the two
//! shows only blocking against awaiting.
//!
//! | file | what |
//! |---|---|
//! | `connection.rs` | the type and its one-line delegation of Diesel's traits |
//! | `manager.rs` | the transaction manager: begin, commit, rollback, panic guard (3, 4, 5, 7, 8, 9) |
//! | `hooks.rs` | hook kinds; running `on_commit`-kind hooks (5.4, 6) |
//! | `register.rs` | registration and `TransactionHooks` (1, 2) |
//! | `testing.rs` | test transactions and capture (11, 12) |

pub(crate) mod connection;
pub(crate) mod hooks;
pub(crate) mod manager;
pub(crate) mod register;
pub(crate) mod testing;
