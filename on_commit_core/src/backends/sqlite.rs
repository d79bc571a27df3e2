//! SQLite: `immediate_transaction`/`exclusive_transaction`/`build_transaction()`
//! on the wrapper and the `#[atomic]` option it accepts (`immediate`).

use crate::hooked::connection::HookedConnection;
use crate::macro_support::atomic_options::*;
use crate::options::builder::{BeginStatement, TransactionBuilder};
use diesel::result::{Error, QueryResult};
use diesel::sqlite::SqliteConnection;

/// SQLite's locking mode for `BEGIN`: the options of
/// `HookedConnection<SqliteConnection>::build_transaction()`.
///
/// ```
/// use diesel::prelude::*;
/// use diesel_on_commit::{HookedConnection, SqliteTransactionMode};
///
/// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
/// let mode = SqliteTransactionMode::Immediate; // e.g. from configuration
/// let builder = conn.build_transaction();
/// let builder = match mode {
///     SqliteTransactionMode::Deferred => builder,
///     SqliteTransactionMode::Immediate => builder.immediate(),
///     SqliteTransactionMode::Exclusive => builder.exclusive(),
/// };
/// builder.run(|_conn| Ok::<_, diesel::result::Error>(()))?;
/// assert_eq!(SqliteTransactionMode::default(), SqliteTransactionMode::Deferred);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SqliteTransactionMode {
    /// `BEGIN` (deferred: locks on first read or write)
    #[default]
    Deferred,
    /// `BEGIN IMMEDIATE` (takes the write lock now)
    Immediate,
    /// `BEGIN EXCLUSIVE`
    Exclusive,
}

impl BeginStatement<SqliteConnection> for SqliteTransactionMode {
    fn begin_sql(&self, _conn: &mut SqliteConnection) -> QueryResult<String> {
        Ok(self.sql().to_owned())
    }
}

impl SqliteTransactionMode {
    fn sql(self) -> &'static str {
        match self {
            SqliteTransactionMode::Deferred => "BEGIN",
            SqliteTransactionMode::Immediate => "BEGIN IMMEDIATE",
            SqliteTransactionMode::Exclusive => "BEGIN EXCLUSIVE",
        }
    }
}

impl HookedConnection<SqliteConnection> {
    /// A transaction with a SQLite locking mode (and optionally a retry
    /// policy for `SQLITE_BUSY`).
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use diesel_on_commit::{HookedConnection, RetryPolicy};
    ///
    /// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
    /// conn.build_transaction()
    ///     .immediate()
    ///     .retry(RetryPolicy::attempts(5))
    ///     .run(|conn| {
    ///         diesel::sql_query("CREATE TABLE orders (id INTEGER PRIMARY KEY)").execute(conn)?;
    ///         conn.on_commit(|| println!("schema ready"));
    ///         Ok::<_, diesel::result::Error>(())
    ///     })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn build_transaction(
        &mut self,
    ) -> TransactionBuilder<'_, SqliteConnection, SqliteTransactionMode> {
        TransactionBuilder::new(self, SqliteTransactionMode::Deferred)
    }

    /// Diesel's `SqliteConnection::immediate_transaction` through the
    /// wrapper: `BEGIN IMMEDIATE`, with every hook rule.
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use diesel_on_commit::HookedConnection;
    ///
    /// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
    /// let n = conn.immediate_transaction(|conn| {
    ///     conn.on_commit(|| println!("committed"));
    ///     diesel::sql_query("CREATE TABLE orders (id INTEGER PRIMARY KEY)").execute(conn)
    /// })?;
    /// assert_eq!(n, 0);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn immediate_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Self) -> Result<T, E>,
        E: From<Error>,
    {
        self.build_transaction().immediate().run(f)
    }

    /// Diesel's `SqliteConnection::exclusive_transaction` through the
    /// wrapper: `BEGIN EXCLUSIVE`, with every hook rule.
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use diesel_on_commit::HookedConnection;
    ///
    /// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
    /// conn.exclusive_transaction::<_, diesel::result::Error, _>(|conn| {
    ///     conn.on_commit(|| println!("committed"));
    ///     Ok(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn exclusive_transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Self) -> Result<T, E>,
        E: From<Error>,
    {
        self.build_transaction().exclusive().run(f)
    }
}

impl<R> TransactionBuilder<'_, SqliteConnection, SqliteTransactionMode, R> {
    /// `BEGIN IMMEDIATE`
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use diesel_on_commit::HookedConnection;
    ///
    /// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
    /// conn.build_transaction()
    ///     .immediate()
    ///     .run(|_conn| Ok::<_, diesel::result::Error>(()))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn immediate(mut self) -> Self {
        self.options = SqliteTransactionMode::Immediate;
        self
    }
    /// `BEGIN EXCLUSIVE`
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use diesel_on_commit::HookedConnection;
    ///
    /// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
    /// conn.build_transaction()
    ///     .exclusive()
    ///     .run(|_conn| Ok::<_, diesel::result::Error>(()))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn exclusive(mut self) -> Self {
        self.options = SqliteTransactionMode::Exclusive;
        self
    }
}

// What `#[atomic(..)]` options on this backend call.

/// `conn.build_transaction().immediate()` of `builder.rs`.
#[doc(hidden)]
#[derive(Debug)]
pub struct SqliteBegin;

impl BeginWith<SqliteConnection> for SqliteBegin {
    fn run<T, E, F>(
        conn: &mut HookedConnection<SqliteConnection>,
        options: &Resolved,
        f: F,
    ) -> Result<T, E>
    where
        F: FnOnce(&mut HookedConnection<SqliteConnection>) -> Result<T, E>,
        E: From<Error>,
    {
        let builder = conn.build_transaction();
        if options.immediate {
            builder.immediate().run(f)
        } else {
            builder.run(f)
        }
    }
}

#[diagnostic::do_not_recommend]
impl ImmediateFor<SqliteConnection> for Immediate {
    type Begin = SqliteBegin;
    fn __on(&self) -> bool {
        true
    }
}

// The async wrapper (diesel-async's `SyncConnectionWrapper<SqliteConnection>`).

#[cfg(feature = "async")]
mod async_sqlite {
    use diesel::connection::AnsiTransactionManager;
    use diesel::result::{Error, QueryResult};
    use diesel::sqlite::SqliteConnection;
    use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;

    use super::SqliteTransactionMode;
    use crate::async_hooked::connection::AsyncHookedConnection;
    use crate::macro_support::async_atomic_options::{AsyncBeginWith, AsyncImmediateFor};
    use crate::macro_support::atomic_options::{Immediate, Resolved};
    use crate::options::async_builder::{AsyncBeginSql, AsyncTransactionBuilder};
    use crate::options::builder::BeginStatement;
    use crate::transaction_hooks::AsyncHookFn;

    type Conn = SyncConnectionWrapper<SqliteConnection>;

    impl BeginStatement<Conn> for SqliteTransactionMode {
        fn begin_sql(&self, _conn: &mut Conn) -> QueryResult<String> {
            Ok(self.sql().to_owned())
        }
    }

    impl AsyncBeginSql for Conn {
        async fn __begin_transaction_sql(&mut self, sql: &str) -> QueryResult<()> {
            let sql = sql.to_owned();
            self.spawn_blocking(move |inner| {
                AnsiTransactionManager::begin_transaction_sql(inner, &sql)
            })
            .await
        }
    }

    impl AsyncHookedConnection<Conn> {
        /// A transaction with a SQLite locking mode (and, feature `tokio`,
        /// a retry policy for `SQLITE_BUSY`), with every hook rule and the
        /// panic and cancellation guards of
        /// [`transaction`](Self::transaction):
        ///
        /// ```
        /// # use diesel::prelude::*;
        /// # use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
        /// # use diesel_async::AsyncConnection;
        /// use diesel_on_commit::{AsyncHookedConnection, RetryPolicy};
        ///
        /// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
        /// let mut conn: AsyncHookedConnection<SyncConnectionWrapper<SqliteConnection>> =
        ///     AsyncHookedConnection::establish(":memory:").await?;
        /// conn.build_transaction()
        ///     .immediate()
        ///     .retry(RetryPolicy::attempts(5)) // SQLITE_BUSY; feature `tokio`
        ///     .run(async move |conn| {
        ///         conn.on_commit(|| println!("committed, once"));
        ///         diesel::result::QueryResult::Ok(())
        ///     })
        ///     .await?;
        /// # Ok::<(), Box<dyn std::error::Error>>(())
        /// # })?;
        /// # Ok::<(), Box<dyn std::error::Error>>(())
        /// ```
        pub fn build_transaction(
            &mut self,
        ) -> AsyncTransactionBuilder<'_, Conn, SqliteTransactionMode> {
            AsyncTransactionBuilder::new(self, SqliteTransactionMode::Deferred)
        }

        /// diesel-async's `SyncConnectionWrapper::immediate_transaction`
        /// through the wrapper: `BEGIN IMMEDIATE`, with every hook rule and
        /// the panic and cancellation guards (which diesel-async's own
        /// lacks).
        pub async fn immediate_transaction<T, E, F>(&mut self, body: F) -> Result<T, E>
        where
            F: for<'r> AsyncHookFn<&'r mut Self, Result<T, E>>,
            E: From<Error>,
        {
            self.build_transaction().immediate().run(body).await
        }

        /// diesel-async's `SyncConnectionWrapper::exclusive_transaction`
        /// through the wrapper: `BEGIN EXCLUSIVE`, with every hook rule and
        /// the panic and cancellation guards.
        pub async fn exclusive_transaction<T, E, F>(&mut self, body: F) -> Result<T, E>
        where
            F: for<'r> AsyncHookFn<&'r mut Self, Result<T, E>>,
            E: From<Error>,
        {
            self.build_transaction().exclusive().run(body).await
        }
    }

    impl<R> AsyncTransactionBuilder<'_, Conn, SqliteTransactionMode, R> {
        /// `BEGIN IMMEDIATE`
        pub fn immediate(mut self) -> Self {
            self.options = SqliteTransactionMode::Immediate;
            self
        }
        /// `BEGIN EXCLUSIVE`
        pub fn exclusive(mut self) -> Self {
            self.options = SqliteTransactionMode::Exclusive;
            self
        }
    }

    // What `#[atomic(immediate)] async fn` calls.

    /// `conn.build_transaction().immediate()` of the async wrapper, for
    /// `#[atomic]`.
    #[doc(hidden)]
    #[derive(Debug)]
    pub struct AsyncSqliteBegin;

    impl AsyncBeginWith<Conn> for AsyncSqliteBegin {
        fn __sql(conn: &mut Conn, options: &Resolved) -> QueryResult<String> {
            let mode = if options.immediate {
                SqliteTransactionMode::Immediate
            } else {
                SqliteTransactionMode::Deferred
            };
            mode.begin_sql(conn)
        }
        fn __begin(
            conn: &mut Conn,
            sql: &str,
        ) -> impl std::future::Future<Output = QueryResult<()>> + Send {
            conn.__begin_transaction_sql(sql)
        }
    }

    #[diagnostic::do_not_recommend]
    impl AsyncImmediateFor<Conn> for Immediate {
        type Begin = AsyncSqliteBegin;
        fn __on(&self) -> bool {
            true
        }
    }
}
