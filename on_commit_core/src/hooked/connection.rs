//! `HookedConnection<C>`: the wrapper and its thin, complete delegation of
//! Diesel's connection traits to the inner connection.
//!
//! Every method here is one line of forwarding, as in Diesel's
//! `PooledConnection`, except that errors coming back from the database are
//! shown to the hook state (`observe_result`), which needs them for rules 5.3
//! and 9. Hook logic lives in `manager.rs`, `register.rs` and `testing.rs`.

use std::fmt;

use diesel::connection::{
    CacheSize, Connection, ConnectionSealed, Instrumentation, LoadConnection,
    MultiConnectionHelper, SimpleConnection, TransactionManager, WithMetadataLookup,
};
use diesel::expression::QueryMetadata;
use diesel::migration::MigrationConnection;
use diesel::query_builder::{Query, QueryFragment, QueryId};
use diesel::query_dsl::UpdateAndFetchResults;
use diesel::result::{ConnectionResult, QueryResult};

use diesel::connection::TransactionManagerStatus;

use crate::hooked::hooks::Hook;
use crate::hooked::manager::HookedTransactionManager;
use crate::rules::failures::HookPanics;
use crate::rules::levels::{DepthCheck, HookState};
use crate::rules::placement::OutsideTransaction;

/// A Diesel connection that runs transaction hooks: [`on_commit`] after the
/// outermost COMMIT, [`on_rollback`] after a rollback, [`before_commit`] just
/// before COMMIT.
///
/// It wraps any `C: Connection` (`PgConnection`, `MysqlConnection`,
/// `SqliteConnection`, a `MultiConnection` enum) and is itself a
/// `diesel::Connection`: ordinary Diesel code runs through it unchanged.
///
/// ```
/// use diesel::prelude::*;
/// use diesel_on_commit::HookedConnection;
/// use std::sync::{Arc, Mutex};
///
/// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
/// let sent = Arc::new(Mutex::new(Vec::new()));
/// let log = sent.clone();
/// conn.transaction::<_, diesel::result::Error, _>(|conn| {
///     diesel::sql_query("CREATE TABLE orders (id INTEGER PRIMARY KEY)").execute(conn)?;
///     conn.on_commit(move || log.lock().unwrap().push("confirmation email"));
///     assert!(sent.lock().unwrap().is_empty()); // not yet: nothing is committed
///     Ok(())
/// })?;
/// assert_eq!(*sent.lock().unwrap(), ["confirmation email"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// For services: `type DbConn = HookedConnection<PgConnection>;` and a pool of
/// them (`r2d2::Pool<ConnectionManager<DbConn>>`); functions take `&mut DbConn`.
///
/// [`on_commit`]: HookedConnection::on_commit
/// [`on_rollback`]: HookedConnection::on_rollback
/// [`before_commit`]: HookedConnection::before_commit
pub struct HookedConnection<C: Connection> {
    pub(crate) inner: C,
    pub(crate) state: HookState<Hook<C>>,
}

/// The inner connection's own transaction manager.
pub(crate) type Inner<C> = <C as Connection>::TransactionManager;

impl<C: Connection> HookedConnection<C> {
    /// Wraps a connection. It must not be inside a transaction: one opened
    /// before wrapping is not the wrapper's and registering a hook in it
    /// panics (rule 8).
    pub fn new(inner: C) -> Self {
        Self {
            inner,
            state: HookState::new(()),
        }
    }

    /// The inner connection.
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use diesel_on_commit::HookedConnection;
    ///
    /// let conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
    /// let inner: &SqliteConnection = conn.inner();
    /// # let _ = inner;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn inner(&self) -> &C {
        &self.inner
    }

    /// The inner connection, for backend-specific methods (for example
    /// `SqliteConnection::register_sql_function`) and for helpers that only
    /// run queries. A transaction begun on it is not the wrapper's (rule 8).
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use diesel_on_commit::HookedConnection;
    ///
    /// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
    /// // A helper written for the plain connection runs on the inner one.
    /// fn create_schema(conn: &mut SqliteConnection) -> QueryResult<usize> {
    ///     diesel::sql_query("CREATE TABLE orders (id INTEGER PRIMARY KEY)").execute(conn)
    /// }
    /// create_schema(conn.inner_mut())?;
    /// diesel::sql_query("INSERT INTO orders (id) VALUES (1)").execute(&mut conn)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn inner_mut(&mut self) -> &mut C {
        self.state.touched();
        &mut self.inner
    }

    /// Unwraps the connection. With an open user transaction, every queued
    /// hook is discarded with a warning: none of them runs (rule 10).
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use diesel_on_commit::HookedConnection;
    ///
    /// let conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
    /// let mut plain: SqliteConnection = conn.into_inner();
    /// diesel::sql_query("SELECT 1").execute(&mut plain)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn into_inner(mut self) -> C {
        self.state.discard_for_into_inner("HookedConnection");
        let Self { inner, state } = self;
        drop(state);
        inner
    }

    /// What registering an `on_commit`-kind hook outside a transaction does
    /// (rule 2); the default is [`OutsideTransaction::Run`].
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use diesel_on_commit::{HookedConnection, OutsideTransaction};
    /// use std::sync::mpsc;
    ///
    /// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
    /// conn.set_outside_transaction(OutsideTransaction::WarnAndRun);
    /// let (tx, rx) = mpsc::channel();
    /// conn.on_commit(move || tx.send("ran at once")); // logs a warning first
    /// assert_eq!(rx.try_recv(), Ok("ran at once"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_outside_transaction(&mut self, policy: OutsideTransaction) {
        self.state.set_outside(policy);
    }

    /// What a hook's panic does once the other hooks ran (rule 6); the
    /// default is [`HookPanics::Resume`].
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use diesel_on_commit::{HookPanics, HookedConnection};
    /// use std::panic::{catch_unwind, AssertUnwindSafe};
    ///
    /// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
    /// // Resume (the default): the panic comes out of `transaction`, after COMMIT.
    /// let resumed = catch_unwind(AssertUnwindSafe(|| {
    ///     conn.transaction::<_, diesel::result::Error, _>(|conn| {
    ///         conn.on_commit(|| -> () { panic!("bug in a hook") });
    ///         Ok(())
    ///     })
    /// }));
    /// assert!(resumed.is_err());
    /// // Log: the panic is logged only.
    /// conn.set_hook_panics(HookPanics::Log);
    /// conn.transaction::<_, diesel::result::Error, _>(|conn| {
    ///     conn.on_commit(|| -> () { panic!("bug in a hook") });
    ///     Ok(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_hook_panics(&mut self, policy: HookPanics) {
        self.state.set_hook_panics(policy);
    }

    /// Runs `f` in a transaction: Diesel's
    /// [`Connection::transaction`], with the hook rules of the contract.
    ///
    /// * `Ok`: `before_commit` hooks run, then COMMIT (or RELEASE SAVEPOINT
    ///   when nested); after the outermost COMMIT the `on_commit` hooks run in
    ///   registration order, on this connection, outside any transaction.
    /// * `Err`, a failed COMMIT, or a transaction the database had aborted:
    ///   the level is rolled back, its hooks are discarded, its `on_rollback`
    ///   hooks run, and the error is returned. `Ok` is never returned for
    ///   work that was not committed.
    /// * A panic in `f`: the level is rolled back (as for `Err`), the
    ///   connection stays usable, and the panic is resumed.
    ///
    /// **A panic out of `transaction` does not always mean a rollback**: under
    /// [`HookPanics::Resume`], a panic of an `on_commit` hook is resumed after
    /// COMMIT succeeded and the other hooks ran.
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use diesel_on_commit::HookedConnection;
    /// use std::sync::mpsc;
    ///
    /// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
    /// let (tx, rx) = mpsc::channel();
    /// let failed = conn.transaction::<(), _, _>(|conn| {
    ///     conn.on_commit(move || tx.send("never sent"));
    ///     Err(diesel::result::Error::RollbackTransaction)
    /// });
    /// assert!(failed.is_err());
    /// assert!(rx.try_recv().is_err()); // rolled back: the hook was discarded
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Self) -> Result<T, E>,
        E: From<diesel::result::Error>,
    {
        <Self as Connection>::transaction(self, f)
    }

    /// The inner connection's transaction status (its depth, its flags).
    #[inline]
    pub(crate) fn inner_status(&mut self) -> &mut TransactionManagerStatus {
        Inner::<C>::transaction_manager_status_mut(&mut self.inner)
    }

    /// Brings the wrapper's levels in line with the inner connection (rules
    /// 8 and 9); called at every step. See [`HookState::check_levels`].
    #[inline]
    pub(crate) fn check_levels(&mut self) -> DepthCheck {
        self.state
            .check_levels(|| Inner::<C>::transaction_manager_status_mut(&mut self.inner))
    }

    /// User depth `d`: the inner depth minus the test-transaction baseline.
    #[inline]
    pub(crate) fn user_depth(&mut self) -> u32 {
        self.state
            .user_depth(Inner::<C>::transaction_manager_status_mut(&mut self.inner))
    }
}

impl<C: Connection> fmt::Debug for HookedConnection<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("HookedConnection");
        out.field("inner", &std::any::type_name::<C>());
        self.state.debug_fields(&mut out);
        out.finish_non_exhaustive()
    }
}

impl<C: Connection> SimpleConnection for HookedConnection<C> {
    fn batch_execute(&mut self, query: &str) -> QueryResult<()> {
        let result = self.inner.batch_execute(query);
        self.state.observe_result(&result);
        result
    }
}

impl<C: Connection> ConnectionSealed for HookedConnection<C> {}

impl<C: Connection> Connection for HookedConnection<C> {
    type Backend = C::Backend;
    type TransactionManager = HookedTransactionManager<C>;

    fn establish(database_url: &str) -> ConnectionResult<Self> {
        C::establish(database_url).map(Self::new)
    }

    fn begin_test_transaction(&mut self) -> QueryResult<()> {
        crate::hooked::testing::begin_test_transaction(self)
    }

    fn test_transaction<T, E, F>(&mut self, f: F) -> T
    where
        F: FnOnce(&mut Self) -> Result<T, E>,
        E: fmt::Debug,
    {
        crate::hooked::testing::test_transaction(self, f)
    }

    fn execute_returning_count<T>(&mut self, source: &T) -> QueryResult<usize>
    where
        T: QueryFragment<Self::Backend> + QueryId,
    {
        let result = self.inner.execute_returning_count(source);
        self.state.observe_result(&result);
        result
    }

    fn transaction_state(
        &mut self,
    ) -> &mut <Self::TransactionManager as TransactionManager<Self>>::TransactionStateData {
        self.state.touched();
        self.inner.transaction_state()
    }

    fn instrumentation(&mut self) -> &mut dyn Instrumentation {
        self.inner.instrumentation()
    }

    fn set_instrumentation(&mut self, instrumentation: impl Instrumentation) {
        self.inner.set_instrumentation(instrumentation)
    }

    fn set_prepared_statement_cache_size(&mut self, size: CacheSize) {
        self.inner.set_prepared_statement_cache_size(size)
    }
}

impl<B, C> LoadConnection<B> for HookedConnection<C>
where
    C: LoadConnection<B>,
{
    type Cursor<'conn, 'query>
        = C::Cursor<'conn, 'query>
    where
        Self: 'conn;
    type Row<'conn, 'query>
        = C::Row<'conn, 'query>
    where
        Self: 'conn;

    fn load<'conn, 'query, T>(
        &'conn mut self,
        source: T,
    ) -> QueryResult<Self::Cursor<'conn, 'query>>
    where
        T: Query + QueryFragment<Self::Backend> + QueryId + 'query,
        Self::Backend: QueryMetadata<T::SqlType>,
    {
        // Split the borrow: the cursor borrows `inner`, the error path `state`.
        let Self { inner, state } = self;
        let result = inner.load(source);
        state.observe_result(&result);
        result
    }
}

impl<C: MigrationConnection> MigrationConnection for HookedConnection<C> {
    fn setup(&mut self) -> QueryResult<usize> {
        self.state.touched();
        self.inner.setup()
    }
}

impl<Changes, Output, C> UpdateAndFetchResults<Changes, Output> for HookedConnection<C>
where
    C: UpdateAndFetchResults<Changes, Output>,
{
    fn update_and_fetch(&mut self, changeset: Changes) -> QueryResult<Output> {
        self.state.touched();
        self.inner.update_and_fetch(changeset)
    }
}

impl<C: WithMetadataLookup> WithMetadataLookup for HookedConnection<C> {
    fn metadata_lookup(
        &mut self,
    ) -> &mut <Self::Backend as diesel::sql_types::TypeMetadata>::MetadataLookup {
        self.state.touched();
        self.inner.metadata_lookup()
    }
}

impl<C> MultiConnectionHelper for HookedConnection<C>
where
    C: MultiConnectionHelper + 'static,
{
    fn to_any<'a>(
        lookup: &mut <Self::Backend as diesel::sql_types::TypeMetadata>::MetadataLookup,
    ) -> &mut (dyn std::any::Any + 'a) {
        C::to_any(lookup)
    }

    fn from_any(
        lookup: &mut dyn std::any::Any,
    ) -> Option<&mut <Self::Backend as diesel::sql_types::TypeMetadata>::MetadataLookup> {
        // A backend whose lookup is the connection itself (PostgreSQL) hands
        // us the wrapper; the others hand their own lookup type.
        if lookup.is::<Self>() {
            let wrapper = lookup.downcast_mut::<Self>()?;
            C::from_any(&mut wrapper.inner)
        } else {
            C::from_any(lookup)
        }
    }
}

#[cfg(feature = "postgres")]
impl<C> diesel::pg::GetPgMetadataCache for HookedConnection<C>
where
    C: diesel::pg::GetPgMetadataCache + Connection<Backend = diesel::pg::Pg>,
{
    fn get_metadata_cache(&mut self) -> &mut diesel::pg::PgMetadataCache {
        self.state.touched();
        self.inner.get_metadata_cache()
    }
}

#[cfg(feature = "r2d2")]
impl<C: diesel::r2d2::R2D2Connection> diesel::r2d2::R2D2Connection for HookedConnection<C> {
    fn ping(&mut self) -> QueryResult<()> {
        self.state.touched();
        self.inner.ping()
    }

    /// Broken when the inner connection is, when the connection was lost,
    /// or when a user transaction is still open: a pool then drops it rather
    /// than hand its hooks to the next checkout.
    fn is_broken(&mut self) -> bool {
        self.state.lost() || self.state.levels() > 0 || self.inner.is_broken()
    }
}
