//! Async connections for the async wrapper's tests (feature `async`).

use diesel::SqliteConnection;
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::AsyncConnection;
use diesel_on_commit::AsyncHookedConnection;

/// diesel-async's SQLite connection.
pub type AsyncSqlite = SyncConnectionWrapper<SqliteConnection>;

/// A fresh in-memory SQLite database behind diesel-async's
/// `SyncConnectionWrapper`, wrapped.
pub async fn async_sqlite() -> AsyncHookedConnection<AsyncSqlite> {
    AsyncHookedConnection::<AsyncSqlite>::establish(":memory:")
        .await
        .expect("in-memory SQLite")
}

/// A wrapped `AsyncPgConnection`.
#[cfg(feature = "postgres")]
pub async fn async_pg() -> AsyncHookedConnection<diesel_async::AsyncPgConnection> {
    let url = super::pg_url();
    AsyncHookedConnection::<diesel_async::AsyncPgConnection>::establish(&url)
        .await
        .unwrap_or_else(|e| {
            panic!("cannot connect to PostgreSQL at {url}: {e}. Is it running? `bash .ci/run` starts it.")
        })
}

/// A wrapped `AsyncMysqlConnection`.
#[cfg(feature = "mysql")]
pub async fn async_mysql() -> AsyncHookedConnection<diesel_async::AsyncMysqlConnection> {
    let url = super::mysql_url();
    AsyncHookedConnection::<diesel_async::AsyncMysqlConnection>::establish(&url)
        .await
        .unwrap_or_else(|e| {
            panic!("cannot connect to MySQL at {url}: {e}. Is it running? `bash .ci/run` starts it.")
        })
}
