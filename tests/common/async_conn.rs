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
            panic!(
                "cannot connect to MySQL at {url}: {e}. Is it running? `bash .ci/run` starts it."
            )
        })
}

/// A wrapped `AsyncPgConnection` whose `search_path` is `db`'s own schema
/// (tokio-postgres reads the `options` parameter of `PgSchema::url`).
#[cfg(feature = "postgres")]
pub async fn async_pg_in(
    db: &super::PgSchema,
) -> AsyncHookedConnection<diesel_async::AsyncPgConnection> {
    AsyncHookedConnection::<diesel_async::AsyncPgConnection>::establish(db.url())
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", db.url()))
}

/// A wrapped `AsyncMysqlConnection` to `db`'s own database.
#[cfg(feature = "mysql")]
pub async fn async_mysql_in(
    db: &super::MysqlDb,
) -> AsyncHookedConnection<diesel_async::AsyncMysqlConnection> {
    AsyncHookedConnection::<diesel_async::AsyncMysqlConnection>::establish(db.url())
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", db.url()))
}

/// A future hook that yields once before it logs, so it really is awaited.
pub fn later(
    log: &super::Log,
    s: impl Into<String>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let log = log.clone();
    let s = s.into();
    async move {
        tokio::task::yield_now().await;
        log.push(s);
    }
}

/// Waits (up to 10 s) until `log` holds `n` entries: for hooks that run on
/// a spawned task. Returns what it holds then.
pub async fn wait_for(log: &super::Log, n: usize) -> Vec<String> {
    for _ in 0..1000 {
        if log.get().len() >= n {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    log.get()
}
