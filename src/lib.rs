//! Django's `transaction.on_commit` for Diesel: side effects that run only
//! after the outermost COMMIT succeeded, are discarded on rollback (including
//! the rollback of the savepoint they were registered in), and run in
//! registration order.
//!
//! Wrap the connection in [`HookedConnection`]; register hooks with
//! [`on_commit!`], [`HookedConnection::on_commit`] and its siblings; run a
//! function in a transaction with [`#[atomic]`](macro@atomic).
//!
//! ```
//! use diesel::prelude::*;
//! use diesel_on_commit::prelude::*;
//! use std::sync::mpsc;
//!
//! type DbConn = HookedConnection<SqliteConnection>;
//!
//! #[atomic]
//! fn create_order(conn: &mut DbConn, id: i32, outbox: mpsc::Sender<i32>) -> QueryResult<i32> {
//!     diesel::sql_query("INSERT INTO orders (id) VALUES (?)")
//!         .bind::<diesel::sql_types::Integer, _>(id)
//!         .execute(conn)?;
//!     on_commit!(conn, outbox.send(id));
//!     Ok(id)
//! }
//!
//! let mut conn = DbConn::establish(":memory:")?;
//! diesel::sql_query("CREATE TABLE orders (id INTEGER PRIMARY KEY)").execute(&mut conn)?;
//! let (tx, rx) = mpsc::channel();
//! create_order(&mut conn, 1, tx.clone())?;
//! assert_eq!(rx.try_recv(), Ok(1)); // sent after COMMIT
//! assert!(create_order(&mut conn, 1, tx).is_err()); // duplicate key: rolled back
//! assert!(rx.try_recv().is_err()); // nothing sent
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The README covers the use cases, pools, testing, and a mapping from
//! Django's API; the rules are documented on [`HookedConnection`] and its
//! methods. Hooks are **at most once**: a crash between COMMIT and the hook
//! loses it; work that must happen needs an outbox row written in the same
//! transaction.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]

pub use on_commit_core::*;
pub use on_commit_macros::{atomic, on_commit};

/// The names most code needs: `use diesel_on_commit::prelude::*;` brings the
/// wrapper, the [`TransactionHooks`] trait, the policies, capture, and the
/// macros [`atomic`](macro@atomic) and [`on_commit!`].
///
/// ```
/// use diesel::prelude::*;
/// use diesel_on_commit::prelude::*;
///
/// #[atomic]
/// fn place_order(conn: &mut HookedConnection<SqliteConnection>) -> QueryResult<()> {
///     on_commit!(conn, println!("order placed"));
///     Ok(())
/// }
///
/// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
/// conn.set_hook_panics(HookPanics::Log);
/// let ((), hooks) = conn.capture_on_commit(Capture::Collect, |conn| place_order(conn).unwrap());
/// assert_eq!(hooks.labels()[0].text(), "println!(\"order placed\")");
/// hooks.run(&mut conn);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub mod prelude {
    pub use on_commit_core::prelude::*;
    pub use on_commit_macros::{atomic, on_commit};
}

/// Items the macros' expansions name. Not public API: no stability promise.
#[doc(hidden)]
pub mod __private {
    pub use on_commit_core::__private::*;
}

// The macros' documentation lives in `on_commit_macros/docs/`; its examples
// need this crate and Diesel, so they are doctested here.
#[cfg(doctest)]
#[doc = include_str!("../on_commit_macros/docs/atomic.md")]
mod atomic_doctests {}

#[cfg(doctest)]
#[doc = include_str!("../on_commit_macros/docs/on_commit.md")]
mod on_commit_doctests {}
