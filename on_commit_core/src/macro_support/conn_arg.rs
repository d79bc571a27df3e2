//! `on_commit!(conn, ..)`: the connection as the user holds it (M3).
//!
//! The expansion's first step is the method call
//! `(conn).__diesel_on_commit_conn()`, which the compiler resolves as it
//! resolves any method call: it auto-borrows an owned `mut` binding,
//! reborrows a `&mut` reference (no `mut` binding needed), and follows
//! `DerefMut` through pool guards (r2d2's `PooledConnection`, deadpool's
//! `Object`, bb8's and mobc's guards) down to the wrapper, where
//! `TransactionHooks::__diesel_on_commit_conn` returns it. The second step
//! calls `TransactionHooks` (or `AsyncTransactionHooks`) by its full path on
//! that `&mut` wrapper. The method's name is unique on purpose: Diesel's
//! next release adds `SqliteConnection::on_commit`, which a method named
//! `on_commit` would reach on a plain connection.
//!
//! `OnCommitConnection`, the other trait with that method, is only there so
//! that misuse reads as well as it did when the macro took `&mut` only:
//! - Diesel's own connection types (and diesel-async's) implement it,
//!   returning themselves, so a plain connection (owned, `&mut`, or behind
//!   a pool guard) gets through the first step and fails the second with
//!   `TransactionHooks`' `#[diagnostic::on_unimplemented]` (E0277), as
//!   before.
//! - Any other type (a generic `C: Connection`, a `MultiConnection` enum)
//!   has no such method (E0599). The blanket impl below, whose bound
//!   `WrappedConnection` has no impl, gives rustc an unsatisfied bound with
//!   an `on_unimplemented` message, which it shows as the error's message;
//!   and since `TransactionHooks` defines the method, rustc suggests
//!   bounding a type parameter with it.
//!
//! The two traits never both apply to one type (no wrapper is a Diesel
//! connection type listed here, and nothing implements
//! `WrappedConnection`), so the method call is never ambiguous.

/// The connection types `on_commit!` recognises without their being
/// wrappers: the first step accepts them so that the second one says to wrap
/// them. Not public API.
pub trait OnCommitConnection {
    /// `self`, as `&mut`.
    #[doc(hidden)]
    fn __diesel_on_commit_conn(&mut self) -> &mut Self;
}

/// The message of a connection `on_commit!` cannot use, for types this
/// crate does not know: implemented by nothing. (The same words as
/// `TransactionHooks`' own.)
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot register transaction hooks: it is not a `HookedConnection`",
    label = "a plain Diesel connection or a pool guard",
    note = "wrap the connection: `type DbConn = HookedConnection<PgConnection>;` then `HookedConnection::new(conn)` or `DbConn::establish(url)`",
    note = "in generic code, bound the connection type with `TransactionHooks`"
)]
pub trait WrappedConnection {}

/// Never applies (nothing implements `WrappedConnection`): see the module
/// docs.
impl<T: WrappedConnection + ?Sized> OnCommitConnection for T {
    #[inline(always)]
    fn __diesel_on_commit_conn(&mut self) -> &mut Self {
        self
    }
}

/// Diesel's plain connections: through the first step, so that the second
/// one says to wrap them.
macro_rules! plain_connections {
    ($($(#[$cfg:meta])* [$($generics:tt)*] $ty:ty;)*) => {$(
        $(#[$cfg])*
        impl<$($generics)*> OnCommitConnection for $ty {
            #[inline(always)]
            fn __diesel_on_commit_conn(&mut self) -> &mut Self {
                self
            }
        }
    )*};
}

plain_connections! {
    #[cfg(feature = "sqlite")] [] diesel::SqliteConnection;
    #[cfg(feature = "postgres")] [] diesel::PgConnection;
    #[cfg(feature = "mysql")] [] diesel::MysqlConnection;
    #[cfg(all(feature = "async", feature = "postgres"))] [] diesel_async::AsyncPgConnection;
    #[cfg(all(feature = "async", feature = "mysql"))] [] diesel_async::AsyncMysqlConnection;
    #[cfg(all(feature = "async", feature = "sqlite"))]
    [C] diesel_async::sync_connection_wrapper::SyncConnectionWrapper<C>;
}
