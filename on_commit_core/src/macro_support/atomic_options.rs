//! What `#[atomic(..)]` calls when it has transaction options
//! (`isolation = ..`, `read_only`, `deferrable`, `immediate`) or `retry = N`.
//!
//! The options run through the wrapper's builders (`builder.rs`) and its
//! retry loop (`retry.rs`), so they need a [`HookedConnection`]. Whether the
//! connection's backend supports an option is checked by the compiler: each
//! option is a marker type ([`Isolation`], [`ReadOnly`], [`Deferrable`],
//! [`Immediate`], or [`Unset`]) that implements the option's trait
//! ([`IsolationFor<C>`], ...) only for the backends that have it, and the
//! macro spans the marker's type argument on the option in the attribute:
//! `#[atomic(immediate)]` on a `&mut HookedConnection<PgConnection>` is a
//! compile error there, with a message that says which backends have it and
//! what to write instead.
//!
//! At run time:
//!
//! * `durable`: a user transaction is open → `Error::AlreadyInTransaction`,
//!   body not run (as without options).
//! * Options other than `retry` set the mode of a whole transaction, so they
//!   need the outermost one: inside an open user transaction the call returns
//!   `Error::AlreadyInTransaction` without running the body, as the builders
//!   (and Diesel's) do. Inside a test transaction alone (the baseline), they
//!   cannot apply either; the body then runs in a savepoint without them (a
//!   `tracing` DEBUG event says so), as `durable` lets a test transaction
//!   pass, so that functions with options can be tested the usual way.
//! * `retry = N`: `RetryPolicy::attempts(N)` through `retry.rs`: each failed
//!   attempt is rolled back (its `on_commit` hooks dropped, its `on_rollback`
//!   hooks run) and the body runs again; only the attempt that commits fires.
//!   Inside an open user transaction the body runs once and the error is
//!   returned unchanged.

use std::fmt;

use diesel::connection::Connection;
use diesel::result::Error;

use crate::hooked::connection::HookedConnection;
use crate::macro_support::atomic::{AtomicError, AtomicReturn};
use crate::options::builder::IsolationLevel;
use crate::options::retry::{with_retry, RetryPolicy, Retryable};

// ---------------------------------------------------------------------------
// The connection

/// The connection of an `#[atomic]` function with options: a
/// [`HookedConnection<C>`] (the builders and the retry loop live there).
/// `C` is a parameter, not an associated type, so that a connection of
/// another type is one error, not two.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`#[atomic]`'s transaction options (`isolation`, `read_only`, `deferrable`, `immediate`, `retry`) need a `HookedConnection`, not `{Self}`",
    label = "not a `HookedConnection<C>`",
    note = "wrap the connection, `type DbConn = HookedConnection<PgConnection>;`, and take `conn: &mut DbConn`; from an r2d2 pool of them, pass `let conn: &mut DbConn = &mut pooled;`",
    note = "on a plain Diesel connection, drop the options from `#[atomic]` and call Diesel's own builder instead: `conn.build_transaction().serializable().run(|conn| ..)` (PostgreSQL), `conn.immediate_transaction(|conn| ..)` (SQLite)"
)]
pub trait AtomicOptionsConnection<C: Connection> {
    /// `self` as the wrapper it is.
    fn __hooked(&mut self) -> &mut HookedConnection<C>;
    /// Back from the wrapper.
    fn __from_hooked(conn: &mut HookedConnection<C>) -> &mut Self;
}

impl<C: Connection> AtomicOptionsConnection<C> for HookedConnection<C> {
    #[inline]
    fn __hooked(&mut self) -> &mut HookedConnection<C> {
        self
    }
    #[inline]
    fn __from_hooked(conn: &mut HookedConnection<C>) -> &mut Self {
        conn
    }
}

// ---------------------------------------------------------------------------
// The options

/// An option that was not given.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Unset;

/// `isolation = serializable | repeatable_read | read_committed`.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Isolation(pub IsolationLevel);

/// `read_only`.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct ReadOnly;

/// `deferrable`.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Deferrable;

/// `immediate`.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Immediate;

/// The options of one `#[atomic(..)]`, each a marker type above.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct AtomicOptions<I = Unset, RO = Unset, D = Unset, M = Unset> {
    /// [`Isolation`] or [`Unset`].
    pub isolation: I,
    /// [`ReadOnly`] or [`Unset`].
    pub read_only: RO,
    /// [`Deferrable`] or [`Unset`].
    pub deferrable: D,
    /// [`Immediate`] or [`Unset`].
    pub immediate: M,
}

/// The options as plain values, for the backend that applies them.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Resolved {
    pub(crate) isolation: Option<IsolationLevel>,
    pub(crate) read_only: bool,
    pub(crate) deferrable: bool,
    pub(crate) immediate: bool,
}

impl Resolved {
    pub(crate) fn is_empty(&self) -> bool {
        self.isolation.is_none() && !self.read_only && !self.deferrable && !self.immediate
    }
}

/// How a backend opens a transaction with options: through the wrapper's
/// builder for it (`builder.rs`), with every hook rule.
#[doc(hidden)]
pub trait BeginWith<C: Connection> {
    /// Runs `f` in an outermost transaction opened with `options`.
    fn run<T, E, F>(conn: &mut HookedConnection<C>, options: &Resolved, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut HookedConnection<C>) -> Result<T, E>,
        E: From<Error>;
}

/// No option: `conn.transaction(f)`.
#[doc(hidden)]
#[derive(Debug)]
pub struct Plain;

impl<C: Connection> BeginWith<C> for Plain {
    fn run<T, E, F>(conn: &mut HookedConnection<C>, _: &Resolved, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut HookedConnection<C>) -> Result<T, E>,
        E: From<Error>,
    {
        conn.transaction(f)
    }
}

/// `isolation = ..`: PostgreSQL and MySQL.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`#[atomic(isolation = ..)]` needs a PostgreSQL or MySQL connection; this one is `HookedConnection<{C}>`",
    label = "not supported by `{C}`",
    note = "isolation levels exist on PostgreSQL (`HookedConnection<PgConnection>`) and MySQL (`HookedConnection<MysqlConnection>`)",
    note = "SQLite has none: its transactions are always serializable; remove `isolation`, and write `#[atomic(immediate)]` to take the write lock at BEGIN",
    note = "in generic code, the backend must be known: make the connection type concrete, or call `conn.build_transaction()` yourself"
)]
pub trait IsolationFor<C: Connection> {
    /// The backend's way to begin.
    type Begin: BeginWith<C>;
    /// The level, if the option was given.
    fn __level(&self) -> Option<IsolationLevel>;
}

impl<C: Connection> IsolationFor<C> for Unset {
    type Begin = Plain;
    fn __level(&self) -> Option<IsolationLevel> {
        None
    }
}

/// `read_only`: PostgreSQL and MySQL.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`#[atomic(read_only)]` needs a PostgreSQL or MySQL connection; this one is `HookedConnection<{C}>`",
    label = "not supported by `{C}`",
    note = "read-only transactions exist on PostgreSQL (`HookedConnection<PgConnection>`) and MySQL (`HookedConnection<MysqlConnection>`)",
    note = "SQLite has none: remove `read_only` (`PRAGMA query_only = ON` makes a whole SQLite connection read-only)",
    note = "in generic code, the backend must be known: make the connection type concrete, or call `conn.build_transaction()` yourself"
)]
pub trait ReadOnlyFor<C: Connection> {
    /// The backend's way to begin.
    type Begin: BeginWith<C>;
    /// Whether the option was given.
    fn __on(&self) -> bool;
}

impl<C: Connection> ReadOnlyFor<C> for Unset {
    type Begin = Plain;
    fn __on(&self) -> bool {
        false
    }
}

/// `deferrable`: PostgreSQL only.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`#[atomic(deferrable)]` needs a PostgreSQL connection; this one is `HookedConnection<{C}>`",
    label = "not supported by `{C}`",
    note = "`DEFERRABLE` is PostgreSQL's (`HookedConnection<PgConnection>`): a `SERIALIZABLE READ ONLY DEFERRABLE` transaction waits for a snapshot that cannot fail",
    note = "remove `deferrable`; on MySQL, `conn.build_transaction().with_consistent_snapshot()` takes the snapshot at BEGIN",
    note = "in generic code, the backend must be known: make the connection type concrete, or call `conn.build_transaction()` yourself"
)]
pub trait DeferrableFor<C: Connection> {
    /// The backend's way to begin.
    type Begin: BeginWith<C>;
    /// Whether the option was given.
    fn __on(&self) -> bool;
}

impl<C: Connection> DeferrableFor<C> for Unset {
    type Begin = Plain;
    fn __on(&self) -> bool {
        false
    }
}

/// `immediate`: SQLite only.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`#[atomic(immediate)]` needs a SQLite connection; this one is `HookedConnection<{C}>`",
    label = "not supported by `{C}`",
    note = "`immediate` is SQLite's `BEGIN IMMEDIATE` (`HookedConnection<SqliteConnection>`): it takes the database's write lock at BEGIN",
    note = "PostgreSQL and MySQL lock rows, not the database: remove `immediate`, and lock the rows the function will change with `SELECT .. FOR UPDATE` (Diesel's `.for_update()`)",
    note = "in generic code, the backend must be known: make the connection type concrete, or call `conn.build_transaction()` yourself"
)]
pub trait ImmediateFor<C: Connection> {
    /// The backend's way to begin.
    type Begin: BeginWith<C>;
    /// Whether the option was given.
    fn __on(&self) -> bool;
}

impl<C: Connection> ImmediateFor<C> for Unset {
    type Begin = Plain;
    fn __on(&self) -> bool {
        false
    }
}

// The impls for a backend carry `#[diagnostic::do_not_recommend]`: without
// it, rustc lists them under an error ("the following other types implement
// trait .."), and that list depends on the backend features compiled in,
// which would make the compile-error snapshots differ between
// `cargo test` and `cargo test --all-features`.

impl<I, RO, D, M> AtomicOptions<I, RO, D, M> {
    /// Runs `f` once in a transaction with these options (see the module
    /// documentation for a transaction that is already open).
    fn run<C, T, E, F>(&self, conn: &mut HookedConnection<C>, f: F) -> Result<T, E>
    where
        C: Connection,
        I: IsolationFor<C>,
        RO: ReadOnlyFor<C>,
        D: DeferrableFor<C>,
        M: ImmediateFor<C>,
        F: FnOnce(&mut HookedConnection<C>) -> Result<T, E>,
        E: From<Error>,
    {
        let resolved = Resolved {
            isolation: self.isolation.__level(),
            read_only: self.read_only.__on(),
            deferrable: self.deferrable.__on(),
            immediate: self.immediate.__on(),
        };
        if resolved.is_empty() {
            return conn.transaction(f);
        }
        if conn.in_transaction() {
            // As the builders (and Diesel's own): a transaction's mode is set
            // by its BEGIN.
            return Err(Error::AlreadyInTransaction.into());
        }
        if conn.state.in_test_transaction() {
            tracing::debug!(
                options = ?resolved,
                "#[atomic] inside a test transaction: its options cannot apply to a savepoint; \
                 running without them"
            );
            return conn.transaction(f);
        }
        // Every option given has the same backend `Begin` (each is
        // implemented for one connection type only); take the first.
        if resolved.isolation.is_some() {
            I::Begin::run(conn, &resolved, f)
        } else if resolved.read_only {
            RO::Begin::run(conn, &resolved, f)
        } else if resolved.deferrable {
            D::Begin::run(conn, &resolved, f)
        } else {
            M::Begin::run(conn, &resolved, f)
        }
    }
}

// ---------------------------------------------------------------------------
// Retries

/// The error type of an `#[atomic(retry = ..)]` function: one the retry loop
/// can look into for a serialization failure or deadlock.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`#[atomic(retry = ..)]` needs an error type that implements `diesel_on_commit::Retryable`; `{Self}` does not",
    label = "the retry loop cannot see the Diesel error inside `{Self}`",
    note = "implement Retryable for your error type: fn diesel_error(&self) -> Option<&diesel::result::Error>, returning the Diesel error it carries (`Some(e)` for its Diesel variant, `None` for the others); or return `diesel::QueryResult<T>`"
)]
pub trait AtomicRetryable: Retryable {}

impl<E: Retryable> AtomicRetryable for E {}

/// `Self` is `T`: the retry entry point names the error type twice, once
/// spanned on the return type (for `AtomicError`) and once on `retry` (for
/// [`AtomicRetryable`]); this ties the two together (and lets the compiler
/// infer the second from the first).
#[doc(hidden)]
pub trait SameAs<T> {
    /// `self` as `T`.
    fn __to(self) -> T;
    /// `T` as `Self`.
    fn __back(t: T) -> Self;
}

impl<T> SameAs<T> for T {
    #[inline]
    fn __to(self) -> T {
        self
    }
    #[inline]
    fn __back(t: T) -> Self {
        t
    }
}

/// What `retry = ..` takes: a number of attempts (`retry = 5`, with the
/// default backoff of [`RetryPolicy::attempts`]) or a [`RetryPolicy`].
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`#[atomic(retry = ..)]` takes a number of attempts or a `RetryPolicy`, not `{Self}`",
    label = "expected a `u32` or a `RetryPolicy`",
    note = "write `retry = 5` (at most 5 attempts, with `RetryPolicy::attempts(5)`'s backoff), or `retry = RetryPolicy::attempts(5).deadline(Duration::from_secs(2))`"
)]
pub trait AtomicRetryPolicy {
    /// The policy.
    fn __policy(self) -> RetryPolicy;
}

impl AtomicRetryPolicy for u32 {
    #[inline]
    fn __policy(self) -> RetryPolicy {
        RetryPolicy::attempts(self)
    }
}

impl AtomicRetryPolicy for RetryPolicy {
    #[inline]
    fn __policy(self) -> RetryPolicy {
        self
    }
}

impl AtomicRetryPolicy for &RetryPolicy {
    #[inline]
    fn __policy(self) -> RetryPolicy {
        *self
    }
}

/// An attempt's error, for the retry loop of `retry.rs` (which logs the
/// retryable ones): the user's error type need not be `Display`.
pub(crate) struct Attempt<E>(pub(crate) E);

impl<E: Retryable> Retryable for Attempt<E> {
    fn diesel_error(&self) -> Option<&Error> {
        self.0.diesel_error()
    }
}

impl<E: Retryable> fmt::Display for Attempt<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.diesel_error() {
            Some(error) => fmt::Display::fmt(error, f),
            None => f.write_str("an error that carries no Diesel error"),
        }
    }
}

// ---------------------------------------------------------------------------
// Entry points

/// `#[atomic(..)]` with transaction options and no retry: `body` runs once,
/// in a transaction opened with `options` on `conn`.
///
/// Each option's marker type (`I`, `RO`, `D`, `M`) is given by the macro in
/// a turbofish spanned on the option in the attribute: an option the
/// backend does not have is reported there.
#[doc(hidden)]
pub fn atomic_with<X, C, R, E, F, I, RO, D, M>(
    conn: &mut X,
    durable: bool,
    options: AtomicOptions<I, RO, D, M>,
    body: F,
) -> R
where
    X: AtomicOptionsConnection<C>,
    C: Connection,
    F: FnOnce(&mut X) -> R,
    R: AtomicReturn<Err = E>,
    E: AtomicError,
    I: IsolationFor<C>,
    RO: ReadOnlyFor<C>,
    D: DeferrableFor<C>,
    M: ImmediateFor<C>,
{
    let conn = conn.__hooked();
    if durable && conn.in_transaction() {
        return R::__from_result(Err(Error::AlreadyInTransaction.into()));
    }
    R::__from_result(options.run(conn, |conn| body(X::__from_hooked(conn)).__into_result()))
}

/// `#[atomic(retry = .., ..)]`: `body` runs in a transaction with
/// `options`, again after a serialization failure or deadlock, as `policy`
/// allows. `body` must be `FnMut`. `E2` is the error type again (`E`,
/// through [`SameAs`]), with its `_` spanned on `retry` so that an error type
/// that is not [`Retryable`] is reported there.
#[doc(hidden)]
pub fn atomic_with_retry<X, C, R, E, E2, F, I, RO, D, M, P>(
    conn: &mut X,
    durable: bool,
    options: AtomicOptions<I, RO, D, M>,
    policy: P,
    mut body: F,
) -> R
where
    X: AtomicOptionsConnection<C>,
    C: Connection,
    F: FnMut(&mut X) -> R,
    R: AtomicReturn<Err = E>,
    E: AtomicError + SameAs<E2>,
    E2: AtomicRetryable,
    I: IsolationFor<C>,
    RO: ReadOnlyFor<C>,
    D: DeferrableFor<C>,
    M: ImmediateFor<C>,
    P: AtomicRetryPolicy,
{
    let policy = policy.__policy();
    let conn = conn.__hooked();
    if durable && conn.in_transaction() {
        return R::__from_result(Err(Error::AlreadyInTransaction.into()));
    }
    let result = with_retry(conn, &policy, |conn| {
        options
            .run(conn, |conn| body(X::__from_hooked(conn)).__into_result())
            .map_err(|error| Attempt(error.__to()))
    });
    R::__from_result(result.map_err(|Attempt(error)| E::__back(error)))
}
