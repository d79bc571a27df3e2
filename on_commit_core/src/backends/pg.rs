//! PostgreSQL: `build_transaction()` on the wrapper (isolation level, read-only,
//! deferrable, rendered by Diesel's own builder), `COPY FROM` through the
//! wrapper, and the `#[atomic]` options it accepts (`isolation`,
//! `read_only`, `deferrable`).

use diesel::connection::Connection;
use diesel::pg::{CopyFromQuery, Pg, PgConnection, PgQueryBuilder};
use diesel::prelude::ExecuteCopyFromDsl;
use diesel::query_builder::{QueryBuilder, QueryFragment};
use diesel::result::{DatabaseErrorKind, Error, QueryResult};

use crate::hooked::connection::HookedConnection;
use crate::macro_support::atomic_options::*;
use crate::options::builder::{
    BeginStatement, IsolationAndReadMode, IsolationLevel, TransactionBuilder,
};

/// PostgreSQL's transaction options; rendered by Diesel's own
/// `TransactionBuilder`. Set through
/// `HookedConnection<PgConnection>::build_transaction()`:
///
/// ```no_run
/// use diesel::prelude::*;
/// use diesel_on_commit::{HookedConnection, PgTransactionOptions, TransactionBuilder};
///
/// let mut conn = HookedConnection::new(PgConnection::establish("postgres://localhost/shop")?);
/// let builder: TransactionBuilder<'_, PgConnection, PgTransactionOptions> =
///     conn.build_transaction().repeatable_read().read_write().not_deferrable();
/// builder.run(|conn| {
///     conn.on_commit(|| println!("committed under REPEATABLE READ"));
///     Ok::<_, diesel::result::Error>(())
/// })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct PgTransactionOptions {
    isolation: Option<IsolationLevel>,
    read_only: Option<bool>,
    deferrable: Option<bool>,
}

impl BeginStatement<PgConnection> for PgTransactionOptions {
    fn begin_sql(&self, conn: &mut PgConnection) -> QueryResult<String> {
        let mut builder = conn.build_transaction();
        builder = match self.isolation {
            Some(IsolationLevel::ReadCommitted) => builder.read_committed(),
            Some(IsolationLevel::RepeatableRead) => builder.repeatable_read(),
            Some(IsolationLevel::Serializable) => builder.serializable(),
            None => builder,
        };
        builder = match self.read_only {
            Some(true) => builder.read_only(),
            Some(false) => builder.read_write(),
            None => builder,
        };
        builder = match self.deferrable {
            Some(true) => builder.deferrable(),
            Some(false) => builder.not_deferrable(),
            None => builder,
        };
        let mut sql = PgQueryBuilder::default();
        builder.to_sql(&mut sql, &Pg)?;
        Ok(sql.finish())
    }
}

impl HookedConnection<PgConnection> {
    /// A transaction with PostgreSQL options, Diesel's
    /// `PgConnection::build_transaction` through the wrapper:
    ///
    /// ```no_run
    /// # use diesel::prelude::*;
    /// # use diesel_on_commit::{HookedConnection, RetryPolicy};
    /// # fn f(conn: &mut HookedConnection<PgConnection>) -> QueryResult<()> {
    /// conn.build_transaction()
    ///     .serializable()
    ///     .retry(RetryPolicy::attempts(5))
    ///     .run(|conn| {
    ///         conn.on_commit(|| println!("committed, once"));
    ///         Ok(())
    ///     })
    /// # }
    /// ```
    pub fn build_transaction(
        &mut self,
    ) -> TransactionBuilder<'_, PgConnection, PgTransactionOptions> {
        TransactionBuilder::new(self, PgTransactionOptions::default())
    }
}

/// `COPY FROM` (`diesel::copy_from(table)...execute(conn)`) on the wrapper:
/// Diesel implements [`ExecuteCopyFromDsl`] per connection type (as for
/// r2d2's `PooledConnection`); this one forwards to the inner connection's
/// and shows the statement's outcome to the hook state, as every other
/// statement through the wrapper does (rules 5.3 and 9). A failed COPY
/// aborts the transaction (or savepoint) on the server, but Diesel's
/// `copy_from` does not update the inner connection's transaction status,
/// so the wrapper marks the level aborted itself: a body that swallows the
/// error gets it back from `transaction()`, and nothing is committed.
///
/// `COPY TO` cannot be forwarded: Diesel's `ExecuteCopyToConnection` is not
/// public (README, Known limits).
impl<T, A, C> ExecuteCopyFromDsl<HookedConnection<C>> for CopyFromQuery<T, A>
where
    C: Connection<Backend = Pg>,
    Self: ExecuteCopyFromDsl<C>,
    <Self as ExecuteCopyFromDsl<C>>::Error: 'static,
{
    type Error = <Self as ExecuteCopyFromDsl<C>>::Error;

    fn execute(self, conn: &mut HookedConnection<C>) -> Result<usize, Self::Error> {
        conn.state.touched();
        let result = ExecuteCopyFromDsl::<C>::execute(self, &mut conn.inner);
        if let Err(error) = &result {
            match diesel_error_in(error) {
                Some(diesel_error) => conn.state.observe_aborting_error(diesel_error),
                None => conn.state.observe_aborting_error(&Error::DatabaseError(
                    DatabaseErrorKind::Unknown,
                    Box::new(error.to_string()),
                )),
            }
        } else {
            conn.state.observe(None);
        }
        result
    }
}

/// The Diesel error behind a failed `COPY FROM`, whose error type is the
/// data callback's (any `From<diesel::result::Error>`): the first
/// `diesel::result::Error` in its source chain. Without one, the caller
/// records a `DatabaseError(Unknown, message)`, as Diesel's own
/// instrumentation reports a failed COPY (it aborted the transaction
/// either way).
fn diesel_error_in<'e>(error: &'e (dyn std::error::Error + 'static)) -> Option<&'e Error> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(diesel_error) = e.downcast_ref::<Error>() {
            return Some(diesel_error);
        }
        cause = e.source();
    }
    None
}

impl IsolationAndReadMode for PgTransactionOptions {
    fn __isolation(&mut self) -> &mut Option<IsolationLevel> {
        &mut self.isolation
    }
    fn __read_only(&mut self) -> &mut Option<bool> {
        &mut self.read_only
    }
}

impl<R> TransactionBuilder<'_, PgConnection, PgTransactionOptions, R> {
    /// `DEFERRABLE` (with `SERIALIZABLE READ ONLY`: waits for a safe snapshot)
    ///
    /// ```no_run
    /// # use diesel::prelude::*;
    /// # use diesel_on_commit::HookedConnection;
    /// # fn f(conn: &mut HookedConnection<PgConnection>) -> QueryResult<()> {
    /// // A long report that never fails with a serialization error.
    /// conn.build_transaction()
    ///     .serializable()
    ///     .read_only()
    ///     .deferrable()
    ///     .run(|_conn| Ok(()))
    /// # }
    /// ```
    pub fn deferrable(mut self) -> Self {
        self.options.deferrable = Some(true);
        self
    }
    /// `NOT DEFERRABLE`
    ///
    /// ```no_run
    /// # use diesel::prelude::*;
    /// # use diesel_on_commit::HookedConnection;
    /// # fn f(conn: &mut HookedConnection<PgConnection>) -> QueryResult<()> {
    /// conn.build_transaction()
    ///     .serializable()
    ///     .read_only()
    ///     .not_deferrable()
    ///     .run(|_conn| Ok(()))
    /// # }
    /// ```
    pub fn not_deferrable(mut self) -> Self {
        self.options.deferrable = Some(false);
        self
    }
}

// What `#[atomic(..)]` options on this backend call.

/// `conn.build_transaction()` of `builder.rs`.
#[doc(hidden)]
#[derive(Debug)]
pub struct PgBegin;

impl BeginWith<PgConnection> for PgBegin {
    fn run<T, E, F>(
        conn: &mut HookedConnection<PgConnection>,
        options: &Resolved,
        f: F,
    ) -> Result<T, E>
    where
        F: FnOnce(&mut HookedConnection<PgConnection>) -> Result<T, E>,
        E: From<Error>,
    {
        let mut builder = conn.build_transaction();
        if let Some(level) = options.isolation {
            builder = builder.isolation(level);
        }
        if options.read_only {
            builder = builder.read_only();
        }
        if options.deferrable {
            builder = builder.deferrable();
        }
        builder.run(f)
    }
}

#[diagnostic::do_not_recommend]
impl IsolationFor<PgConnection> for Isolation {
    type Begin = PgBegin;
    fn __level(&self) -> Option<IsolationLevel> {
        Some(self.0)
    }
}

#[diagnostic::do_not_recommend]
impl ReadOnlyFor<PgConnection> for ReadOnly {
    type Begin = PgBegin;
    fn __on(&self) -> bool {
        true
    }
}

#[diagnostic::do_not_recommend]
impl DeferrableFor<PgConnection> for Deferrable {
    type Begin = PgBegin;
    fn __on(&self) -> bool {
        true
    }
}

// The async wrapper (diesel-async's `AsyncPgConnection`).

#[cfg(feature = "async")]
mod async_pg {
    use diesel::pg::{Pg, PgQueryBuilder};
    use diesel::query_builder::{QueryBuilder, QueryFragment};
    use diesel::result::QueryResult;
    use diesel_async::AsyncPgConnection;

    use super::PgTransactionOptions;
    use crate::async_hooked::connection::AsyncHookedConnection;
    use crate::macro_support::async_atomic_options::{
        AsyncBeginWith, AsyncDeferrableFor, AsyncIsolationFor, AsyncReadOnlyFor,
    };
    use crate::macro_support::atomic_options::{Deferrable, Isolation, ReadOnly, Resolved};
    use crate::options::async_builder::{AsyncBeginSql, AsyncTransactionBuilder};
    use crate::options::builder::{BeginStatement, IsolationLevel};

    /// Rendered by diesel-async's own `TransactionBuilder`.
    impl BeginStatement<AsyncPgConnection> for PgTransactionOptions {
        fn begin_sql(&self, conn: &mut AsyncPgConnection) -> QueryResult<String> {
            let mut builder = conn.build_transaction();
            builder = match self.isolation {
                Some(IsolationLevel::ReadCommitted) => builder.read_committed(),
                Some(IsolationLevel::RepeatableRead) => builder.repeatable_read(),
                Some(IsolationLevel::Serializable) => builder.serializable(),
                None => builder,
            };
            builder = match self.read_only {
                Some(true) => builder.read_only(),
                Some(false) => builder.read_write(),
                None => builder,
            };
            builder = match self.deferrable {
                Some(true) => builder.deferrable(),
                Some(false) => builder.not_deferrable(),
                None => builder,
            };
            let mut sql = PgQueryBuilder::default();
            builder.to_sql(&mut sql, &Pg)?;
            Ok(sql.finish())
        }
    }

    impl AsyncBeginSql for AsyncPgConnection {
        async fn __begin_transaction_sql(&mut self, sql: &str) -> QueryResult<()> {
            diesel_async::AnsiTransactionManager::begin_transaction_sql(self, sql).await
        }
    }

    impl AsyncHookedConnection<AsyncPgConnection> {
        /// A transaction with PostgreSQL options, diesel-async's
        /// `AsyncPgConnection::build_transaction` (which renders the SQL)
        /// through the wrapper, with every hook rule and the panic and
        /// cancellation guards of [`transaction`](Self::transaction):
        ///
        /// ```no_run
        /// # use diesel::prelude::*;
        /// # use diesel_async::AsyncPgConnection;
        /// # use diesel_on_commit::{AsyncHookedConnection, RetryPolicy};
        /// # async fn f(conn: &mut AsyncHookedConnection<AsyncPgConnection>) -> QueryResult<()> {
        /// conn.build_transaction()
        ///     .serializable()
        ///     .read_write()
        ///     .retry(RetryPolicy::attempts(5)) // feature `tokio`
        ///     .run(async |conn| {
        ///         conn.on_commit(|| println!("committed, once"));
        ///         Ok(())
        ///     })
        ///     .await
        /// # }
        /// ```
        pub fn build_transaction(
            &mut self,
        ) -> AsyncTransactionBuilder<'_, AsyncPgConnection, PgTransactionOptions> {
            AsyncTransactionBuilder::new(self, PgTransactionOptions::default())
        }
    }

    impl<R> AsyncTransactionBuilder<'_, AsyncPgConnection, PgTransactionOptions, R> {
        /// `DEFERRABLE` (with `SERIALIZABLE READ ONLY`: waits for a safe snapshot)
        pub fn deferrable(mut self) -> Self {
            self.options.deferrable = Some(true);
            self
        }
        /// `NOT DEFERRABLE`
        pub fn not_deferrable(mut self) -> Self {
            self.options.deferrable = Some(false);
            self
        }
    }

    // What `#[atomic(..)] async fn` options on this backend call.

    /// `conn.build_transaction()` of the async wrapper, for `#[atomic]`.
    #[doc(hidden)]
    #[derive(Debug)]
    pub struct AsyncPgBegin;

    impl AsyncBeginWith<AsyncPgConnection> for AsyncPgBegin {
        fn __sql(conn: &mut AsyncPgConnection, options: &Resolved) -> QueryResult<String> {
            PgTransactionOptions {
                isolation: options.isolation,
                read_only: options.read_only.then_some(true),
                deferrable: options.deferrable.then_some(true),
            }
            .begin_sql(conn)
        }
        fn __begin(
            conn: &mut AsyncPgConnection,
            sql: &str,
        ) -> impl std::future::Future<Output = QueryResult<()>> + Send {
            conn.__begin_transaction_sql(sql)
        }
    }

    #[diagnostic::do_not_recommend]
    impl AsyncIsolationFor<AsyncPgConnection> for Isolation {
        type Begin = AsyncPgBegin;
        fn __level(&self) -> Option<IsolationLevel> {
            Some(self.0)
        }
    }

    #[diagnostic::do_not_recommend]
    impl AsyncReadOnlyFor<AsyncPgConnection> for ReadOnly {
        type Begin = AsyncPgBegin;
        fn __on(&self) -> bool {
            true
        }
    }

    #[diagnostic::do_not_recommend]
    impl AsyncDeferrableFor<AsyncPgConnection> for Deferrable {
        type Begin = AsyncPgBegin;
        fn __on(&self) -> bool {
            true
        }
    }
}
