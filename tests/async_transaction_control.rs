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

/// The forms of a retried body whose future is `Send` (README, Known
/// limits): an `async move` closure that owns what it captures (clones,
/// `Arc`s, counters), also inside an `async fn` that takes references and
/// clones them before the closure, with the policy borrowed. A closure that
/// captures a reference (a non-`move` `async |conn| ..` using any local, or
/// an `async move` one holding a `&T`, even a `&'static str`) makes rustc
/// reject the spawned future: "implementation of `Send` is not general
/// enough" (checked by hand; a compiler limitation, not a trybuild case).
#[tokio::test]
async fn retried_bodies_that_own_their_captures_are_send() {
    async fn with_references(conn: &mut Conn, policy: &RetryPolicy, log: &Log) -> R {
        let log = log.clone();
        conn.transaction_with_retry(policy, async move |conn| {
            conn.on_commit(log.hook("cloned before the closure"));
            Ok(())
        })
        .await
    }
    let log = Log::new();
    let spawned = log.clone();
    tokio::spawn(async move {
        let mut conn = async_sqlite().await;
        let log = spawned;
        let mut n = 0;
        let shared = Arc::new(AtomicU32::new(0));
        let owned = log.clone();
        let counted = shared.clone();
        let attempts = conn
            .transaction_with_retry(&fast(2), async move |conn| -> Result<u32, Error> {
                n += 1;
                counted.fetch_add(1, Ordering::SeqCst);
                conn.on_commit(owned.hook("owned"));
                Ok(n)
            })
            .await?;
        let owned = log.clone();
        conn.build_transaction()
            .immediate()
            .retry(fast(2))
            .run(async move |conn| -> R {
                conn.on_commit(owned.hook("builder"));
                Ok(())
            })
            .await?;
        with_references(&mut conn, &fast(2), &log).await?;
        assert_eq!(
            (attempts, AtomicU32::load(&shared, Ordering::SeqCst)),
            (1, 1)
        );
        Ok::<_, Error>(())
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(log.get(), ["owned", "builder", "cloned before the closure"]);
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

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use common::async_conn::async_pg_in;
    use common::PgSchema;
    use diesel_async::AsyncPgConnection;
    use diesel_on_commit::atomic;
    use tokio::sync::Barrier;

    type Pg = AsyncHookedConnection<AsyncPgConnection>;

    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }

    #[derive(diesel::QueryableByName)]
    struct S {
        #[diesel(sql_type = diesel::sql_types::Text)]
        s: String,
    }

    async fn count(conn: &mut Pg, sql: &str) -> Result<i64, Error> {
        Ok(diesel::sql_query(sql).get_result::<N>(conn).await?.n)
    }

    async fn show(conn: &mut Pg, setting: &str) -> Result<String, Error> {
        Ok(
            diesel::sql_query(format!("SELECT current_setting('{setting}') AS s"))
                .get_result::<S>(conn)
                .await?
                .s,
        )
    }

    async fn doctors(db: &PgSchema) {
        async_pg_in(db)
            .await
            .batch_execute(
                "CREATE TABLE doctors (id INTEGER PRIMARY KEY, on_call BOOLEAN NOT NULL);
                 INSERT INTO doctors VALUES (1, TRUE), (2, TRUE);",
            )
            .await
            .unwrap();
    }

    /// One doctor's attempt; the barrier makes both read before either
    /// writes (first attempt only).
    async fn go_off_call(
        conn: &mut Pg,
        id: i32,
        barrier: &Barrier,
        attempt: &AtomicU32,
        log: &Log,
    ) -> Result<bool, Error> {
        let n = attempt.fetch_add(1, Ordering::SeqCst) + 1;
        let l = log.clone();
        conn.on_rollback(move || l.push(format!("doctor {id} rolled back (attempt {n})")));
        let on_call = count(conn, "SELECT COUNT(*) AS n FROM doctors WHERE on_call").await?;
        if n == 1 {
            barrier.wait().await;
        }
        if on_call < 2 {
            return Ok(false);
        }
        diesel::sql_query(format!(
            "UPDATE doctors SET on_call = FALSE WHERE id = {id}"
        ))
        .execute(conn)
        .await?;
        let l = log.clone();
        conn.on_commit_async(async move { l.push(format!("doctor {id} off call (attempt {n})")) });
        Ok(true)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn write_skew_with_retry_keeps_the_invariant_and_fires_once_per_commit() {
        let db = Arc::new(PgSchema::new());
        doctors(&db).await;
        let barrier = Arc::new(Barrier::new(2));
        let log = Log::new();
        let attempts = [Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0))];
        let handles: Vec<_> = (1..=2)
            .map(|id| {
                let (db, barrier, log) = (db.clone(), barrier.clone(), log.clone());
                let attempt = attempts[id as usize - 1].clone();
                tokio::spawn(async move {
                    let mut conn = async_pg_in(&db).await;
                    conn.build_transaction()
                        .serializable()
                        .retry(fast(10))
                        .run(async move |conn| {
                            go_off_call(conn, id, &barrier, &attempt, &log).await
                        })
                        .await
                })
            })
            .collect();
        let mut results = Vec::new();
        for h in handles {
            results.push(h.await.unwrap());
        }
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
        let went_off = results.iter().filter(|r| matches!(r, Ok(true))).count();
        assert_eq!(went_off, 1, "exactly one doctor went off call: {results:?}");
        let mut conn = async_pg_in(&db).await;
        let on_call = count(&mut conn, "SELECT COUNT(*) AS n FROM doctors WHERE on_call")
            .await
            .unwrap();
        assert_eq!(on_call, 1, "the invariant holds");
        let log = log.get();
        let fired = log.iter().filter(|l| l.contains("off call")).count();
        assert_eq!(fired, 1, "hooks of failed attempts never fire: {log:?}");
        let total: u32 = attempts
            .iter()
            .map(|a| AtomicU32::load(a, Ordering::SeqCst))
            .sum();
        assert!(total >= 3, "one side retried: {total}");
        let rolled_back = log.iter().filter(|l| l.contains("rolled back")).count() as u32;
        assert_eq!(
            rolled_back,
            total - 2,
            "every failed attempt ran its on_rollback: {log:?}"
        );
        println!("async write skew with retry: {total} attempts, log {log:?}");
    }

    #[atomic(isolation = serializable, retry = RetryPolicy::attempts(10).backoff(Duration::from_millis(1), Duration::from_millis(5)))]
    async fn go_off_call_atomic(
        conn: &mut Pg,
        id: i32,
        barrier: Arc<Barrier>,
        attempt: Arc<AtomicU32>,
        log: Log,
    ) -> Result<bool, Error> {
        go_off_call(conn, id, &barrier, &attempt, &log).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn write_skew_with_atomic_isolation_and_retry() {
        let db = Arc::new(PgSchema::new());
        doctors(&db).await;
        let barrier = Arc::new(Barrier::new(2));
        let log = Log::new();
        let attempts = Arc::new(AtomicU32::new(0));
        let handles: Vec<_> = (1..=2)
            .map(|id| {
                let (db, barrier, log, attempts) =
                    (db.clone(), barrier.clone(), log.clone(), attempts.clone());
                tokio::spawn(async move {
                    let mut conn = async_pg_in(&db).await;
                    let mine = Arc::new(AtomicU32::new(0));
                    let r = go_off_call_atomic(&mut conn, id, barrier, mine.clone(), log).await;
                    attempts.fetch_add(AtomicU32::load(&mine, Ordering::SeqCst), Ordering::SeqCst);
                    r
                })
            })
            .collect();
        let mut went_off = 0;
        for h in handles {
            if h.await.unwrap().unwrap() {
                went_off += 1;
            }
        }
        assert_eq!(went_off, 1);
        let log = log.get();
        assert_eq!(
            log.iter().filter(|l| l.contains("off call")).count(),
            1,
            "{log:?}"
        );
        let total = AtomicU32::load(&attempts, Ordering::SeqCst);
        assert_eq!(
            log.iter().filter(|l| l.contains("rolled back")).count() as u32,
            total - 2,
            "{log:?}"
        );
    }

    #[tokio::test]
    async fn isolation_read_only_and_deferrable_reach_the_server() {
        let db = PgSchema::new();
        let mut conn = async_pg_in(&db).await;
        let (iso, ro, def) = conn
            .build_transaction()
            .serializable()
            .read_only()
            .deferrable()
            .run(async |conn| -> Result<_, Error> {
                Ok((
                    show(conn, "transaction_isolation").await?,
                    show(conn, "transaction_read_only").await?,
                    show(conn, "transaction_deferrable").await?,
                ))
            })
            .await
            .unwrap();
        assert_eq!(
            (iso.as_str(), ro.as_str(), def.as_str()),
            ("serializable", "on", "on")
        );
        let iso = conn
            .build_transaction()
            .repeatable_read()
            .read_write()
            .run(async |conn| show(conn, "transaction_isolation").await)
            .await
            .unwrap();
        assert_eq!(iso, "repeatable read");
        // A read-only transaction rejects writes; its on_rollback hooks run.
        let log = Log::new();
        let r = conn
            .build_transaction()
            .read_only()
            .run(async |conn| -> R {
                conn.on_rollback(log.hook("rolled back"));
                conn.batch_execute("CREATE TABLE nope (id INT)").await?;
                conn.on_commit(log.hook("never"));
                Ok(())
            })
            .await;
        assert!(
            matches!(
                r,
                Err(Error::DatabaseError(
                    DatabaseErrorKind::ReadOnlyTransaction,
                    _
                ))
            ),
            "{r:?}"
        );
        assert_eq!(log.get(), ["rolled back"]);
    }

    #[atomic(isolation = repeatable_read, read_only)]
    async fn snapshot_report(conn: &mut Pg) -> Result<(String, String), Error> {
        Ok((
            show(conn, "transaction_isolation").await?,
            show(conn, "transaction_read_only").await?,
        ))
    }

    #[atomic(isolation = serializable, read_only, deferrable)]
    async fn deferrable_report(conn: &mut Pg) -> Result<String, Error> {
        show(conn, "transaction_deferrable").await
    }

    #[tokio::test]
    async fn atomic_options_reach_the_server() {
        let db = PgSchema::new();
        let mut conn = async_pg_in(&db).await;
        let (iso, ro) = snapshot_report(&mut conn).await.unwrap();
        assert_eq!((iso.as_str(), ro.as_str()), ("repeatable read", "on"));
        assert_eq!(deferrable_report(&mut conn).await.unwrap(), "on");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deadlock_between_two_tasks_is_retried() {
        let db = Arc::new(PgSchema::new());
        doctors(&db).await;
        let barrier = Arc::new(Barrier::new(2));
        let log = Log::new();
        let total = Arc::new(AtomicU32::new(0));
        let handles: Vec<_> = [(1, 2), (2, 1)]
            .into_iter()
            .map(|(first, second)| {
                let (db, barrier, log, total) =
                    (db.clone(), barrier.clone(), log.clone(), total.clone());
                tokio::spawn(async move {
                    let mut conn = async_pg_in(&db).await;
                    let mut n = 0;
                    conn.transaction_with_retry(&fast(10), async move |conn| -> R {
                        n += 1;
                        total.fetch_add(1, Ordering::SeqCst);
                        let bump = |id| {
                            format!("UPDATE doctors SET on_call = NOT on_call WHERE id = {id}")
                        };
                        conn.batch_execute(&bump(first)).await?;
                        if n == 1 {
                            barrier.wait().await;
                        }
                        conn.batch_execute(&bump(second)).await?;
                        let l = log.clone();
                        conn.on_commit(move || l.push(format!("{first}->{second} committed")));
                        Ok(())
                    })
                    .await
                })
            })
            .collect();
        for h in handles {
            h.await.unwrap().unwrap();
        }
        let mut fired = log.get();
        fired.sort();
        assert_eq!(fired, ["1->2 committed", "2->1 committed"]);
        assert!(
            AtomicU32::load(&total, Ordering::SeqCst) >= 3,
            "one side retried"
        );
    }

    /// A retrying transaction dropped during its backoff sleep: nothing is
    /// committed, no hook of any attempt runs as committed, and the
    /// on_rollback hooks of the attempts that ran each ran once.
    #[tokio::test]
    async fn a_retrying_transaction_dropped_during_the_backoff_commits_nothing() {
        let db = PgSchema::new();
        let mut conn = async_pg_in(&db).await;
        conn.batch_execute("CREATE TABLE t (id INT PRIMARY KEY)")
            .await
            .unwrap();
        let log = Log::new();
        let attempts = AtomicU32::new(0);
        let policy =
            RetryPolicy::attempts(10).backoff(Duration::from_secs(5), Duration::from_secs(5));
        let fut = conn
            .build_transaction()
            .serializable()
            .retry(policy)
            .run(async |conn| -> R {
                let n = attempts.fetch_add(1, Ordering::SeqCst) + 1;
                conn.batch_execute(&format!("INSERT INTO t VALUES ({n})"))
                    .await?;
                let l = log.clone();
                conn.on_commit(move || l.push(format!("commit {n}")));
                let l = log.clone();
                conn.on_rollback(move || l.push(format!("rollback {n}")));
                Err(serialization_failure())
            });
        // The first attempt fails at once; the backoff (up to 5 s, with
        // full jitter) is where the timeout drops it, unless the jitter
        // made it short: then later attempts ran, each rolled back.
        let r = tokio::time::timeout(Duration::from_millis(300), fut).await;
        let ran = AtomicU32::load(&attempts, Ordering::SeqCst);
        if r.is_ok() {
            // Every one of the 10 attempts drew a wait under 300 ms in all:
            // possible, not likely; the rules still hold.
            assert_eq!(ran, 10);
        }
        assert!(ran >= 1);
        let log = log.get();
        assert!(log.iter().all(|l| l.starts_with("rollback")), "{log:?}");
        let expected: Vec<String> = (1..=ran).map(|n| format!("rollback {n}")).collect();
        assert_eq!(log, expected, "each attempt's on_rollback ran once");
        assert!(!conn.in_transaction());
        assert_eq!(
            count(&mut conn, "SELECT COUNT(*) AS n FROM t")
                .await
                .unwrap(),
            0
        );
        // Dropped between attempts, nothing was open: the connection is fine.
        conn.transaction(async |conn| -> R {
            conn.batch_execute("INSERT INTO t VALUES (100)").await
        })
        .await
        .unwrap();
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    use super::*;
    use common::async_conn::async_mysql_in;
    use common::MysqlDb;
    use diesel_async::AsyncMysqlConnection;
    use diesel_on_commit::atomic;
    use tokio::sync::Barrier;

    type My = AsyncHookedConnection<AsyncMysqlConnection>;

    #[derive(diesel::QueryableByName)]
    struct S {
        #[diesel(sql_type = diesel::sql_types::Text)]
        s: String,
    }

    /// The running transaction's isolation level, as InnoDB reports it.
    /// `@@tx_isolation` shows the session's level, not the one `SET
    /// TRANSACTION` chose for this transaction, so read
    /// `information_schema.innodb_trx`. Two catches: it lists a transaction
    /// only once it touched InnoDB (the callers write or lock a row first),
    /// and it is served from a cache InnoDB refreshes at most every 100 ms
    /// (`TRX_I_S_CACHE_MIN_REFRESH_TIME`), so a read within 100 ms of
    /// another session's read (a test running in parallel) can miss a
    /// transaction that began since. After the 150 ms sleep, the last
    /// refresh either came after this transaction touched InnoDB or is stale
    /// and is redone by this read.
    async fn isolation(conn: &mut My) -> Result<String, Error> {
        conn.batch_execute("DO SLEEP(0.15)").await?;
        Ok(diesel::sql_query(
            "SELECT CAST(COALESCE(
                 (SELECT trx_isolation_level FROM information_schema.innodb_trx
                  WHERE trx_mysql_thread_id = CONNECTION_ID()),
                 'none') AS CHAR) AS s",
        )
        .get_result::<S>(conn)
        .await?
        .s)
    }

    #[tokio::test]
    async fn isolation_and_read_mode_reach_the_server() {
        let db = MysqlDb::new();
        let mut conn = async_mysql_in(&db).await;
        conn.batch_execute("CREATE TABLE t (id INTEGER PRIMARY KEY) ENGINE=InnoDB")
            .await
            .unwrap();
        // What the sync test (transaction_control.rs, mysql_options_render_and_run)
        // checks: every option together renders and runs, and the
        // transaction commits with its hooks.
        let log = Log::new();
        conn.build_transaction()
            .serializable()
            .read_only()
            .with_consistent_snapshot()
            .run(async |conn| -> R {
                diesel::sql_query("SELECT 1").execute(conn).await?;
                conn.on_commit(log.hook("mysql read-only committed"));
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(log.take(), ["mysql read-only committed"]);
        // Read-only rejects writes: rolled back, no on_commit.
        let r = conn
            .build_transaction()
            .read_only()
            .run(async |conn| -> R {
                conn.on_rollback(log.hook("rolled back"));
                conn.batch_execute("INSERT INTO t VALUES (1)").await?;
                conn.on_commit(log.hook("never"));
                Ok(())
            })
            .await;
        assert!(r.is_err(), "read-only rejects writes");
        assert_eq!(log.get(), ["rolled back"]);
        assert!(!conn.in_transaction());
        // Beyond the sync test: the level reaches InnoDB.
        let level = conn
            .build_transaction()
            .serializable()
            .with_consistent_snapshot()
            .run(async |conn| {
                // innodb_trx lists the transaction once it wrote.
                conn.batch_execute("INSERT INTO t VALUES (0)").await?;
                isolation(conn).await
            })
            .await
            .unwrap();
        assert_eq!(level, "SERIALIZABLE");
    }

    #[atomic(isolation = read_committed)]
    async fn read_committed_level(conn: &mut My) -> Result<String, Error> {
        diesel::sql_query("SELECT COUNT(*) FROM t FOR UPDATE")
            .execute(conn)
            .await?;
        isolation(conn).await
    }

    #[tokio::test]
    async fn atomic_isolation_reaches_the_server() {
        let db = MysqlDb::new();
        let mut conn = async_mysql_in(&db).await;
        conn.batch_execute("CREATE TABLE t (id INTEGER PRIMARY KEY) ENGINE=InnoDB")
            .await
            .unwrap();
        assert_eq!(
            read_committed_level(&mut conn).await.unwrap(),
            "READ COMMITTED"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deadlock_between_two_tasks_is_retried() {
        let db = Arc::new(MysqlDb::new());
        async_mysql_in(&db)
            .await
            .batch_execute(
                "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL) ENGINE=InnoDB;
                 INSERT INTO accounts VALUES (1, 100), (2, 100);",
            )
            .await
            .unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let log = Log::new();
        let total = Arc::new(AtomicU32::new(0));
        let handles: Vec<_> = [(1, 2), (2, 1)]
            .into_iter()
            .map(|(first, second)| {
                let (db, barrier, log, total) =
                    (db.clone(), barrier.clone(), log.clone(), total.clone());
                tokio::spawn(async move {
                    let mut conn = async_mysql_in(&db).await;
                    let mut n = 0;
                    conn.transaction_with_retry(&fast(10), async move |conn| -> R {
                        n += 1;
                        total.fetch_add(1, Ordering::SeqCst);
                        let bump = |id: i32| {
                            let delta = if id == 1 { "- 1" } else { "+ 1" };
                            format!("UPDATE accounts SET balance = balance {delta} WHERE id = {id}")
                        };
                        conn.batch_execute(&bump(first)).await?;
                        if n == 1 {
                            barrier.wait().await;
                        }
                        conn.batch_execute(&bump(second)).await?;
                        let l = log.clone();
                        conn.on_commit(move || l.push(format!("{first}->{second} committed")));
                        Ok(())
                    })
                    .await
                })
            })
            .collect();
        for h in handles {
            h.await.unwrap().unwrap();
        }
        let mut fired = log.get();
        fired.sort();
        assert_eq!(fired, ["1->2 committed", "2->1 committed"]);
        let attempts = AtomicU32::load(&total, Ordering::SeqCst);
        assert!(
            attempts >= 3,
            "MariaDB broke the deadlock, one side retried: {attempts}"
        );
        println!("async MySQL deadlock: {attempts} attempts for 2 commits");
    }
}
