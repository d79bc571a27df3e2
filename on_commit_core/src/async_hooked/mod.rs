//! The async wrapper, `AsyncHookedConnection<C>`, over any diesel-async
//! connection. Its files mirror the sync wrapper's (`hooked/`): a diff of
//! the two shows only blocking against awaiting.
//!
//! | file | what |
//! |---|---|
//! | `connection.rs` | the type and its one-line delegation of diesel-async's traits |
//! | `manager.rs` | the transaction manager: begin, commit, rollback, panic guard, cancellation (3, 4, 5, 7, 8, 9, C1–C3) |
//! | `hooks.rs` | hook kinds; awaiting hooks (5.4, 6, A1) |
//! | `later.rs` | hooks run later: due, next, and those a dropped future left (A2, C1, C2); no sync twin |
//! | `register.rs` | registration and `TransactionHooks` (1, 2, A1) |
//! | `testing.rs` | test transactions and capture (11, 12) |

pub(crate) mod connection;
pub(crate) mod hooks;
pub(crate) mod later;
pub(crate) mod manager;
pub(crate) mod register;
pub(crate) mod testing;
