//! Transaction options and retries on the async wrapper: the twin of
//! tests/transaction_control.rs. SQLite (`SyncConnectionWrapper`) always;
//! PostgreSQL and MySQL with their features (write skew under SERIALIZABLE,
//! deadlocks, options reaching the server, a retrying transaction dropped
//! during its backoff).
#![cfg(all(feature = "async", feature = "tokio", feature = "sqlite"))]

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::async_conn::{async_sqlite, AsyncSqlite};
use common::Log;
use diesel::result::{DatabaseErrorKind, Error};
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_on_commit::{AsyncHookedConnection, RetryPolicy, Retryable};

type R = Result<(), Error>;
type Conn = AsyncHookedConnection<AsyncSqlite>;

fn serialization_failure() -> Error {
    Error::DatabaseError(
        DatabaseErrorKind::SerializationFailure,
        Box::new(String::from("could not serialize access (simulated)")),
    )
}

fn fast(attempts: u32) -> RetryPolicy {
    RetryPolicy::attempts(attempts).backoff(Duration::from_millis(1), Duration::from_millis(5))
}

#[tokio::test]
async fn retry_drops_the_hooks_of_failed_attempts_and_fires_only_the_committed_one() {
    let mut conn = async_sqlite().await;
    let log = Log::new();
    let mut attempt = 0;
    let value = conn
        .transaction_with_retry(&fast(5), async |conn| {
            attempt += 1;
            let (l, n) = (log.clone(), attempt);
            conn.on_commit(move || l.push(format!("commit {n}")));
            let l = log.clone();
            conn.on_rollback_async(async move { l.push(format!("rollback {n}")) });
            if attempt < 3 {
                Err(serialization_failure())
            } else {
                Ok(attempt)
            }
        })
        .await
        .unwrap();
    assert_eq!(value, 3);
    assert_eq!(log.get(), ["rollback 1", "rollback 2", "commit 3"]);
}

#[tokio::test]
async fn retry_gives_up_after_the_policys_attempts() {
    let mut conn = async_sqlite().await;
    let mut attempts = 0;
    let r: R = conn
        .transaction_with_retry(&fast(3), async |_| {
            attempts += 1;
            Err(serialization_failure())
        })
        .await;
    assert!(
        matches!(
            r,
            Err(Error::DatabaseError(
                DatabaseErrorKind::SerializationFailure,
                _
            ))
        ),
        "{r:?}"
    );
    assert_eq!(attempts, 3);
}

#[tokio::test]
async fn retry_does_not_retry_other_errors() {
    let mut conn = async_sqlite().await;
    let mut attempts = 0;
    let r: R = conn
        .transaction_with_retry(&fast(5), async |_| {
            attempts += 1;
            Err(Error::NotFound)
        })
        .await;
    assert!(matches!(r, Err(Error::NotFound)));
    assert_eq!(attempts, 1);
}

#[tokio::test]
async fn retry_inside_an_open_transaction_runs_once_and_returns_the_error_unchanged() {
    let mut conn = async_sqlite().await;
    let log = Log::new();
    conn.transaction(async |conn| -> R {
        let mut attempts = 0;
        let r: R = conn
            .transaction_with_retry(&fast(5), async |conn| {
                attempts += 1;
                conn.on_rollback(log.hook("savepoint rolled back"));
                Err(serialization_failure())
            })
            .await;
        assert!(r.is_err());
        assert_eq!(attempts, 1, "a savepoint is never retried");
        assert!(conn.in_transaction(), "the outer transaction is still open");
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(log.get(), ["savepoint rolled back"]);
}

#[tokio::test]
async fn retry_respects_the_deadline() {
    let mut conn = async_sqlite().await;
    let mut attempts = 0;
    let policy = RetryPolicy::attempts(1000)
        .backoff(Duration::from_millis(5), Duration::from_millis(5))
        .deadline(Duration::from_millis(50));
    let started = std::time::Instant::now();
    let r: R = conn
        .transaction_with_retry(&policy, async |_| {
            attempts += 1;
            Err(serialization_failure())
        })
        .await;
    assert!(r.is_err());
    assert!(attempts < 1000, "{attempts}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// An application error type takes part through `Retryable`.
#[derive(Debug)]
enum AppError {
    Db(Error),
    Invalid,
}

impl From<Error> for AppError {
    fn from(e: Error) -> Self {
        AppError::Db(e)
    }
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Db(e) => write!(f, "database: {e}"),
            AppError::Invalid => f.write_str("invalid"),
        }
    }
}

impl Retryable for AppError {
    fn diesel_error(&self) -> Option<&Error> {
        match self {
            AppError::Db(e) => Some(e),
            AppError::Invalid => None,
        }
    }
}

#[tokio::test]
async fn an_app_error_type_can_be_retried() {
    let mut conn = async_sqlite().await;
    let mut attempts = 0;
    let value = conn
        .transaction_with_retry(&fast(5), async |_| {
            attempts += 1;
            if attempts < 2 {
                Err(AppError::Db(serialization_failure()))
            } else {
                Ok::<_, AppError>(attempts)
            }
        })
        .await
        .unwrap();
    assert_eq!(value, 2);
    let mut attempts = 0;
    let r: Result<(), AppError> = conn
        .transaction_with_retry(&fast(5), async |_| {
            attempts += 1;
            Err(AppError::Invalid)
        })
        .await;
    assert!(matches!(r, Err(AppError::Invalid)));
    assert_eq!(attempts, 1);
}

#[tokio::test]
async fn sqlite_immediate_and_exclusive_transactions_fire_hooks() {
    let mut conn = async_sqlite().await;
    let log = Log::new();
    conn.immediate_transaction(async |conn| -> R {
        conn.on_commit(log.hook("immediate"));
        Ok(())
    })
    .await
    .unwrap();
    conn.exclusive_transaction(async |conn| -> R {
        conn.on_commit_async(common::async_conn::later(&log, "exclusive"));
        Ok(())
    })
    .await
    .unwrap();
    conn.build_transaction()
        .immediate()
        .run(async |conn| -> R {
            conn.on_commit(log.hook("built"));
            Ok(())
        })
        .await
        .unwrap();
    let r = conn
        .immediate_transaction(async |conn| -> R {
            conn.on_commit(log.hook("never"));
            conn.on_rollback(log.hook("immediate rolled back"));
            Err(Error::RollbackTransaction)
        })
        .await;
    assert!(r.is_err());
    assert_eq!(
        log.get(),
        ["immediate", "exclusive", "built", "immediate rolled back"]
    );
    assert!(!conn.in_transaction());
}

#[tokio::test]
async fn a_panic_in_an_immediate_transaction_rolls_back_and_the_connection_stays_usable() {
    let mut conn = async_sqlite().await;
    conn.batch_execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        .await
        .unwrap();
    let log = Log::new();
    let caught = tokio::spawn(async move {
        let r = futures_catch(async {
            conn.immediate_transaction(async |conn| -> R {
                diesel::sql_query("INSERT INTO t VALUES (1)")
                    .execute(conn)
                    .await?;
                conn.on_rollback(log.hook("rolled back"));
                panic!("boom");
            })
            .await
        })
        .await;
        (r.is_err(), conn, log)
    })
    .await
    .unwrap();
    let (panicked, mut conn, log) = caught;
    assert!(panicked);
    assert_eq!(log.get(), ["rolled back"]);
    assert!(!conn.in_transaction());
    // The next one is a real outermost transaction, and BEGIN IMMEDIATE works.
    conn.immediate_transaction(async |conn| -> R {
        diesel::sql_query("INSERT INTO t VALUES (2)")
            .execute(conn)
            .await?;
        Ok(())
    })
    .await
    .unwrap();
}

/// Catches a panic of `fut` (the wrapper resumes the body's panic).
async fn futures_catch<T>(fut: impl std::future::Future<Output = T>) -> std::thread::Result<T> {
    use std::panic::AssertUnwindSafe;
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(move |cx| {
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Err(payload) => std::task::Poll::Ready(Err(payload)),
        }
    })
    .await
}

#[tokio::test]
async fn options_need_the_outermost_transaction() {
    let mut conn = async_sqlite().await;
    conn.transaction(async |conn| -> R {
        let r = conn.immediate_transaction(async |_| -> R { Ok(()) }).await;
        assert!(matches!(r, Err(Error::AlreadyInTransaction)), "{r:?}");
        assert!(conn.in_transaction(), "the open transaction is untouched");
        Ok(())
    })
    .await
    .unwrap();
    assert!(!conn.in_transaction());
}

#[tokio::test]
async fn the_builders_and_retry_futures_are_send() {
    fn is_send<T: Send>(t: T) -> T {
        t
    }
    let mut conn = async_sqlite().await;
    let value = tokio::spawn(async move {
        let a = is_send(conn.build_transaction().immediate().run(
            async |conn| -> Result<i32, Error> {
                conn.on_commit(|| ());
                Ok(1)
            },
        ))
        .await?;
        let b = is_send(
            conn.build_transaction()
                .exclusive()
                .retry(fast(2))
                .run(async |_| -> Result<i32, Error> { Ok(2) }),
        )
        .await?;
        let c = is_send(
            conn.transaction_with_retry(&fast(2), async |_| -> Result<i32, Error> { Ok(3) }),
        )
        .await?;
        Ok::<_, Error>(a + b + c)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(value, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_busy_is_retried_on_two_connections_to_one_file() {
    let dir = std::env::temp_dir().join(common::unique("async-busy"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = dir.join("db.sqlite").to_str().unwrap().to_owned();
    let mut a = Conn::establish(&url).await.unwrap();
    // A's COMMIT waits out B's brief SHARED lock while B tries to begin;
    // only B, the side under test, must fail at once.
    a.batch_execute("PRAGMA busy_timeout = 10000; CREATE TABLE t (id INTEGER PRIMARY KEY)")
        .await
        .unwrap();
    let log = Log::new();
    let attempts = Arc::new(AtomicU32::new(0));
    let (locked_tx, locked_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let holder = tokio::spawn(async move {
        a.immediate_transaction(async |conn| -> R {
            diesel::sql_query("INSERT INTO t VALUES (1)")
                .execute(conn)
                .await?;
            locked_tx.send(()).unwrap();
            release_rx.await.unwrap(); // hold the write lock
            Ok(())
        })
        .await
        .unwrap();
    });
    locked_rx.await.unwrap();
    let mut b = Conn::establish(&url).await.unwrap();
    b.batch_execute("PRAGMA busy_timeout = 0").await.unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        release_tx.send(()).unwrap();
    });
    let policy = RetryPolicy::attempts(u32::MAX)
        .backoff(Duration::from_millis(2), Duration::from_millis(10))
        .deadline(Duration::from_secs(30));
    let counter = attempts.clone();
    b.build_transaction()
        .immediate()
        .retry(policy)
        .run(async |conn| -> R {
            counter.fetch_add(1, Ordering::SeqCst);
            diesel::sql_query("INSERT INTO t VALUES (2)")
                .execute(conn)
                .await?;
            conn.on_commit(log.hook("b committed"));
            Ok(())
        })
        .await
        .unwrap();
    holder.await.unwrap();
    release.await.unwrap();
    assert_eq!(log.get(), ["b committed"], "fired once");
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let n = RunQueryDsl::get_result::<N>(diesel::sql_query("SELECT COUNT(*) AS n FROM t"), &mut b)
        .await
        .unwrap()
        .n;
    assert_eq!(n, 2);
    println!(
        "async SQLite busy: B's body ran {} time(s); BEGIN IMMEDIATE was retried until A released the lock",
        AtomicU32::load(&attempts, Ordering::SeqCst)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
