//! MySQL and MariaDB: `build_transaction()` on the wrapper (isolation level,
//! read mode, consistent snapshot) and the `#[atomic]` options it accepts
//! (`isolation`, `read_only`).

use diesel::mysql::MysqlConnection;
use diesel::result::{Error, QueryResult};

use crate::hooked::connection::HookedConnection;
use crate::macro_support::atomic_options::*;
use crate::options::builder::{
    BeginStatement, IsolationAndReadMode, IsolationLevel, TransactionBuilder,
};

/// MySQL's transaction options. Diesel has no builder for MySQL; the
/// isolation level is set for the next transaction only
/// (`SET TRANSACTION ISOLATION LEVEL ..`) right before
/// `START TRANSACTION`. Set through
/// `HookedConnection<MysqlConnection>::build_transaction()`:
///
/// ```no_run
/// use diesel::prelude::*;
/// use diesel_on_commit::{HookedConnection, MysqlTransactionOptions, TransactionBuilder};
///
/// let mut conn = HookedConnection::new(MysqlConnection::establish("mysql://localhost/shop")?);
/// let builder: TransactionBuilder<'_, MysqlConnection, MysqlTransactionOptions> =
///     conn.build_transaction().read_committed().read_write();
/// builder.run(|conn| {
///     conn.on_commit(|| println!("committed under READ COMMITTED"));
///     Ok::<_, diesel::result::Error>(())
/// })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct MysqlTransactionOptions {
    isolation: Option<IsolationLevel>,
    read_only: Option<bool>,
    consistent_snapshot: bool,
}

impl BeginStatement<MysqlConnection> for MysqlTransactionOptions {
    fn begin_sql(&self, _conn: &mut MysqlConnection) -> QueryResult<String> {
        Ok(self.sql())
    }
}

impl MysqlTransactionOptions {
    /// The statements, the same for the sync and the async connection.
    fn sql(&self) -> String {
        let mut sql = String::new();
        if let Some(level) = self.isolation {
            sql.push_str(match level {
                IsolationLevel::ReadCommitted => "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; ",
                IsolationLevel::RepeatableRead => {
                    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; "
                }
                IsolationLevel::Serializable => "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; ",
            });
        }
        sql.push_str("START TRANSACTION");
        let mut sep = " ";
        if self.consistent_snapshot {
            sql.push_str(" WITH CONSISTENT SNAPSHOT");
            sep = ", ";
        }
        match self.read_only {
            Some(true) => {
                sql.push_str(sep);
                sql.push_str("READ ONLY");
            }
            Some(false) => {
                sql.push_str(sep);
                sql.push_str("READ WRITE");
            }
            None => {}
        }
        sql
    }
}

impl HookedConnection<MysqlConnection> {
    /// A transaction with MySQL options through the wrapper.
    ///
    /// ```no_run
    /// # use diesel::prelude::*;
    /// # use diesel_on_commit::{HookedConnection, RetryPolicy};
    /// # fn f(conn: &mut HookedConnection<MysqlConnection>) -> QueryResult<()> {
    /// conn.build_transaction()
    ///     .serializable()
    ///     .retry(RetryPolicy::attempts(5)) // InnoDB deadlocks and lock wait timeouts
    ///     .run(|conn| {
    ///         conn.on_commit(|| println!("committed, once"));
    ///         Ok(())
    ///     })
    /// # }
    /// ```
    pub fn build_transaction(
        &mut self,
    ) -> TransactionBuilder<'_, MysqlConnection, MysqlTransactionOptions> {
        TransactionBuilder::new(self, MysqlTransactionOptions::default())
    }
}

impl IsolationAndReadMode for MysqlTransactionOptions {
    fn __isolation(&mut self) -> &mut Option<IsolationLevel> {
        &mut self.isolation
    }
    fn __read_only(&mut self) -> &mut Option<bool> {
        &mut self.read_only
    }
}

impl<R> TransactionBuilder<'_, MysqlConnection, MysqlTransactionOptions, R> {
    /// `WITH CONSISTENT SNAPSHOT`
    ///
    /// ```no_run
    /// # use diesel::prelude::*;
    /// # use diesel_on_commit::HookedConnection;
    /// # fn f(conn: &mut HookedConnection<MysqlConnection>) -> QueryResult<()> {
    /// // START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY
    /// conn.build_transaction()
    ///     .with_consistent_snapshot()
    ///     .read_only()
    ///     .run(|_conn| Ok(()))
    /// # }
    /// ```
    pub fn with_consistent_snapshot(mut self) -> Self {
        self.options.consistent_snapshot = true;
        self
    }
}

// What `#[atomic(..)]` options on this backend call.

/// `conn.build_transaction()` of `builder.rs`.
#[doc(hidden)]
#[derive(Debug)]
pub struct MysqlBegin;

impl BeginWith<MysqlConnection> for MysqlBegin {
    fn run<T, E, F>(
        conn: &mut HookedConnection<MysqlConnection>,
        options: &Resolved,
        f: F,
    ) -> Result<T, E>
    where
        F: FnOnce(&mut HookedConnection<MysqlConnection>) -> Result<T, E>,
        E: From<Error>,
    {
        let mut builder = conn.build_transaction();
        if let Some(level) = options.isolation {
            builder = builder.isolation(level);
        }
        if options.read_only {
            builder = builder.read_only();
        }
        builder.run(f)
    }
}

#[diagnostic::do_not_recommend]
impl IsolationFor<MysqlConnection> for Isolation {
    type Begin = MysqlBegin;
    fn __level(&self) -> Option<IsolationLevel> {
        Some(self.0)
    }
}

#[diagnostic::do_not_recommend]
impl ReadOnlyFor<MysqlConnection> for ReadOnly {
    type Begin = MysqlBegin;
    fn __on(&self) -> bool {
        true
    }
}

// The async wrapper (diesel-async's `AsyncMysqlConnection`).

#[cfg(feature = "async")]
mod async_mysql {
    use diesel::result::QueryResult;
    use diesel_async::AsyncMysqlConnection;

    use super::MysqlTransactionOptions;
    use crate::async_hooked::connection::AsyncHookedConnection;
    use crate::macro_support::async_atomic_options::{
        AsyncBeginWith, AsyncIsolationFor, AsyncReadOnlyFor,
    };
    use crate::macro_support::atomic_options::{Isolation, ReadOnly, Resolved};
    use crate::options::async_builder::{AsyncBeginSql, AsyncTransactionBuilder};
    use crate::options::builder::BeginStatement;
    use crate::options::builder::IsolationLevel;

    impl BeginStatement<AsyncMysqlConnection> for MysqlTransactionOptions {
        fn begin_sql(&self, _conn: &mut AsyncMysqlConnection) -> QueryResult<String> {
            Ok(self.sql())
        }
    }

    impl AsyncBeginSql for AsyncMysqlConnection {
        async fn __begin_transaction_sql(&mut self, sql: &str) -> QueryResult<()> {
            diesel_async::AnsiTransactionManager::begin_transaction_sql(self, sql).await
        }
    }

    impl AsyncHookedConnection<AsyncMysqlConnection> {
        /// A transaction with MySQL options through the wrapper (isolation
        /// level, read mode, consistent snapshot), with every hook rule and
        /// the panic and cancellation guards of
        /// [`transaction`](Self::transaction):
        ///
        /// ```no_run
        /// # use diesel::prelude::*;
        /// # use diesel_async::AsyncMysqlConnection;
        /// # use diesel_on_commit::{AsyncHookedConnection, RetryPolicy};
        /// # async fn f(conn: &mut AsyncHookedConnection<AsyncMysqlConnection>) -> QueryResult<()> {
        /// conn.build_transaction()
        ///     .repeatable_read()
        ///     .with_consistent_snapshot()
        ///     .read_only()
        ///     .run(async |conn| Ok(()))
        ///     .await
        /// # }
        /// ```
        pub fn build_transaction(
            &mut self,
        ) -> AsyncTransactionBuilder<'_, AsyncMysqlConnection, MysqlTransactionOptions> {
            AsyncTransactionBuilder::new(self, MysqlTransactionOptions::default())
        }
    }

    impl<R> AsyncTransactionBuilder<'_, AsyncMysqlConnection, MysqlTransactionOptions, R> {
        /// `WITH CONSISTENT SNAPSHOT`
        pub fn with_consistent_snapshot(mut self) -> Self {
            self.options.consistent_snapshot = true;
            self
        }
    }

    // What `#[atomic(..)] async fn` options on this backend call.

    /// `conn.build_transaction()` of the async wrapper, for `#[atomic]`.
    #[doc(hidden)]
    #[derive(Debug)]
    pub struct AsyncMysqlBegin;

    impl AsyncBeginWith<AsyncMysqlConnection> for AsyncMysqlBegin {
        fn __sql(_: &mut AsyncMysqlConnection, options: &Resolved) -> QueryResult<String> {
            Ok(MysqlTransactionOptions {
                isolation: options.isolation,
                read_only: options.read_only.then_some(true),
                consistent_snapshot: false,
            }
            .sql())
        }
        fn __begin(
            conn: &mut AsyncMysqlConnection,
            sql: &str,
        ) -> impl std::future::Future<Output = QueryResult<()>> + Send {
            conn.__begin_transaction_sql(sql)
        }
    }

    #[diagnostic::do_not_recommend]
    impl AsyncIsolationFor<AsyncMysqlConnection> for Isolation {
        type Begin = AsyncMysqlBegin;
        fn __level(&self) -> Option<IsolationLevel> {
            Some(self.0)
        }
    }

    #[diagnostic::do_not_recommend]
    impl AsyncReadOnlyFor<AsyncMysqlConnection> for ReadOnly {
        type Begin = AsyncMysqlBegin;
        fn __on(&self) -> bool {
            true
        }
    }
}
