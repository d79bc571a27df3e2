//! Transaction options through the wrapper, and retries that keep
//! hook semantics (only the attempt that commits fires).

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use common::{sqlite, Log};
#[cfg(any(feature = "postgres", feature = "mysql"))]
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error};
use diesel_on_commit::prelude::*;
use diesel_on_commit::{is_retryable, RetryPolicy};

type R = Result<(), Error>;

fn serialization_failure() -> Error {
    Error::DatabaseError(
        DatabaseErrorKind::SerializationFailure,
        Box::new(String::from("could not serialize access (simulated)")),
    )
}

fn fast(attempts: u32) -> RetryPolicy {
    RetryPolicy::attempts(attempts).backoff(
        std::time::Duration::from_millis(1),
        std::time::Duration::from_millis(5),
    )
}

#[test]
fn retry_drops_the_hooks_of_failed_attempts_and_fires_only_the_committed_one() {
    let mut conn = sqlite();
    let log = Log::new();
    let mut attempt = 0;
    let value = conn
        .transaction_with_retry(&fast(5), |conn| {
            attempt += 1;
            let l = log.clone();
            let n = attempt;
            conn.on_commit(move || l.push(format!("commit {n}")));
            let l = log.clone();
            conn.on_rollback(move || l.push(format!("rollback {n}")));
            if attempt < 3 {
                Err(serialization_failure())
            } else {
                Ok(attempt)
            }
        })
        .unwrap();
    assert_eq!(value, 3);
    assert_eq!(log.get(), ["rollback 1", "rollback 2", "commit 3"]);
}

#[test]
fn retry_gives_up_after_the_policys_attempts() {
    let mut conn = sqlite();
    let mut attempts = 0;
    let r: Result<(), Error> = conn.transaction_with_retry(&fast(3), |_| {
        attempts += 1;
        Err(serialization_failure())
    });
    assert!(matches!(
        r,
        Err(Error::DatabaseError(
            DatabaseErrorKind::SerializationFailure,
            _
        ))
    ));
    assert_eq!(attempts, 3);
}

#[test]
fn retry_does_not_retry_other_errors() {
    let mut conn = sqlite();
    let mut attempts = 0;
    let r: Result<(), Error> = conn.transaction_with_retry(&fast(5), |_| {
        attempts += 1;
        Err(Error::NotFound)
    });
    assert!(matches!(r, Err(Error::NotFound)));
    assert_eq!(attempts, 1);
    assert!(!is_retryable(&Error::NotFound));
    assert!(is_retryable(&serialization_failure()));
}

#[test]
fn retry_inside_an_open_transaction_runs_once_and_returns_the_error_unchanged() {
    let mut conn = sqlite();
    let log = Log::new();
    conn.transaction(|conn| -> R {
        let mut attempts = 0;
        let r: R = conn.transaction_with_retry(&fast(5), |conn| {
            attempts += 1;
            conn.on_commit(log.hook("inner"));
            Err(serialization_failure())
        });
        assert!(matches!(
            r,
            Err(Error::DatabaseError(
                DatabaseErrorKind::SerializationFailure,
                _
            ))
        ));
        assert_eq!(attempts, 1, "a savepoint is not retried");
        Ok(())
    })
    .unwrap();
    assert!(log.get().is_empty());
}

#[test]
fn retry_respects_the_deadline() {
    let mut conn = sqlite();
    let mut attempts = 0;
    let policy = RetryPolicy::attempts(1000)
        .backoff(
            std::time::Duration::from_millis(5),
            std::time::Duration::from_millis(5),
        )
        .deadline(std::time::Duration::from_millis(50));
    let r: R = conn.transaction_with_retry(&policy, |_| {
        attempts += 1;
        Err(serialization_failure())
    });
    assert!(r.is_err());
    assert!(
        attempts < 1000,
        "stopped by the deadline after {attempts} attempts"
    );
}

#[test]
fn an_app_error_type_can_be_retried() {
    #[derive(Debug)]
    enum AppError {
        Db(Error),
    }
    impl From<Error> for AppError {
        fn from(e: Error) -> Self {
            AppError::Db(e)
        }
    }
    impl std::fmt::Display for AppError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let AppError::Db(e) = self;
            write!(f, "db: {e}")
        }
    }
    impl diesel_on_commit::Retryable for AppError {
        fn diesel_error(&self) -> Option<&Error> {
            let AppError::Db(e) = self;
            Some(e)
        }
    }
    let mut conn = sqlite();
    let mut attempts = 0;
    let r: Result<u32, AppError> = conn.transaction_with_retry(&fast(3), |_| {
        attempts += 1;
        if attempts == 1 {
            Err(AppError::Db(serialization_failure()))
        } else {
            Ok(attempts)
        }
    });
    assert_eq!(r.unwrap(), 2);
}

#[test]
fn a_boxed_error_is_retried_when_it_holds_a_diesel_error() {
    type BoxError = Box<dyn std::error::Error + Send + Sync>;
    let mut conn = sqlite();
    let mut attempts = 0;
    let r: Result<u32, BoxError> = conn.transaction_with_retry(&fast(3), |_| {
        attempts += 1;
        if attempts == 1 {
            Err(serialization_failure().into())
        } else {
            Ok(attempts)
        }
    });
    assert_eq!(r.unwrap(), 2);
    let mut attempts = 0;
    let r: Result<u32, BoxError> = conn.transaction_with_retry(&fast(3), |_| {
        attempts += 1;
        Err("not a database error".into())
    });
    assert!(r.is_err());
    assert_eq!(
        attempts, 1,
        "an error without a Diesel error inside is not retried"
    );
}

#[test]
fn sqlite_immediate_and_exclusive_transactions_fire_hooks() {
    let mut conn = sqlite();
    let log = Log::new();
    conn.immediate_transaction(|conn| -> R {
        conn.on_commit(log.hook("immediate"));
        Ok(())
    })
    .unwrap();
    conn.exclusive_transaction(|conn| -> R {
        conn.on_commit(log.hook("exclusive"));
        Ok(())
    })
    .unwrap();
    let r = conn.immediate_transaction(|conn| -> R {
        conn.on_commit(log.hook("never"));
        conn.on_rollback(log.hook("immediate rolled back"));
        Err(Error::RollbackTransaction)
    });
    assert!(r.is_err());
    assert_eq!(
        log.get(),
        ["immediate", "exclusive", "immediate rolled back"]
    );
}

#[test]
fn options_need_the_outermost_transaction() {
    let mut conn = sqlite();
    conn.transaction(|conn| -> R {
        let r = conn.immediate_transaction(|_| -> R { Ok(()) });
        assert!(matches!(r, Err(Error::AlreadyInTransaction)), "{r:?}");
        assert!(conn.in_transaction(), "the open transaction is untouched");
        Ok(())
    })
    .unwrap();
}

#[test]
fn sqlite_busy_is_retried_on_two_connections_to_one_file() {
    let dir = std::env::temp_dir().join(common::unique("busy"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("db.sqlite");
    let url = path.to_str().unwrap().to_owned();
    let mut a = HookedConnection::<SqliteConnection>::establish(&url).unwrap();
    // A's COMMIT waits out B's brief SHARED lock while B tries to begin; only
    // B, the side under test, must fail at once.
    diesel::sql_query("PRAGMA busy_timeout = 10000")
        .execute(&mut a)
        .unwrap();
    diesel::sql_query("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        .execute(&mut a)
        .unwrap();
    let log = Log::new();
    let attempts = Arc::new(AtomicU32::new(0));
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        a.immediate_transaction(|conn| -> R {
            diesel::sql_query("INSERT INTO t VALUES (1)").execute(conn)?;
            locked_tx.send(()).unwrap();
            release_rx.recv().unwrap(); // hold the write lock
            Ok(())
        })
        .unwrap();
    });
    locked_rx.recv().unwrap();
    let mut b = HookedConnection::<SqliteConnection>::establish(&url).unwrap();
    diesel::sql_query("PRAGMA busy_timeout = 0")
        .execute(&mut b)
        .unwrap();
    let counter = attempts.clone();
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        release_tx.send(()).unwrap();
    });
    // Bounded by time, not by count: the holder may be slow to release on a
    // loaded machine.
    let policy = RetryPolicy::attempts(u32::MAX)
        .backoff(
            std::time::Duration::from_millis(2),
            std::time::Duration::from_millis(10),
        )
        .deadline(std::time::Duration::from_secs(30));
    b.build_transaction()
        .immediate()
        .retry(policy)
        .run(|conn| -> R {
            counter.fetch_add(1, Ordering::SeqCst);
            diesel::sql_query("INSERT INTO t VALUES (2)").execute(conn)?;
            conn.on_commit(log.hook("b committed"));
            Ok(())
        })
        .unwrap();
    holder.join().unwrap();
    release.join().unwrap();
    assert_eq!(log.get(), ["b committed"], "fired once");
    let n: i64 = diesel::dsl::sql::<diesel::sql_types::BigInt>("SELECT COUNT(*) FROM t")
        .get_result(&mut b)
        .unwrap();
    assert_eq!(n, 2);
    println!(
        "SQLite busy: B's body ran {} time(s); BEGIN IMMEDIATE was retried until A released the lock",
        attempts.load(Ordering::SeqCst)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two threads update rows 1 and 2 of `table` in opposite orders (`bump`
/// renders the UPDATE of one row), both through `transaction_with_retry`,
/// with a barrier between their first and second UPDATE on the first
/// attempt: the database breaks the deadlock, the victim retries, and each
/// side's hook fires once. Returns the attempts for the two commits.
#[cfg(any(feature = "postgres", feature = "mysql"))]
fn deadlock_pair<C>(
    connect: fn() -> HookedConnection<C>,
    table: &str,
    bump: fn(&str, i32) -> String,
) -> u32
where
    C: diesel::connection::Connection + 'static,
{
    use std::sync::Barrier;
    let barrier = Arc::new(Barrier::new(2));
    let log = Log::new();
    let total = Arc::new(AtomicU32::new(0));
    let handles: Vec<_> = [(1, 2), (2, 1)]
        .into_iter()
        .map(|(first, second)| {
            let (table, barrier, log, total) = (
                table.to_owned(),
                barrier.clone(),
                log.clone(),
                total.clone(),
            );
            std::thread::spawn(move || {
                let mut conn = connect();
                let mut n = 0;
                conn.transaction_with_retry(&fast(10), |conn| -> R {
                    n += 1;
                    total.fetch_add(1, Ordering::SeqCst);
                    conn.batch_execute(&bump(&table, first))?;
                    if n == 1 {
                        barrier.wait();
                    }
                    conn.batch_execute(&bump(&table, second))?;
                    let l = log.clone();
                    conn.on_commit(move || l.push(format!("{first}->{second} committed")));
                    Ok(())
                })
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap().unwrap();
    }
    let mut fired = log.get();
    fired.sort();
    assert_eq!(fired, ["1->2 committed", "2->1 committed"]);
    let attempts = total.load(Ordering::SeqCst);
    assert!(
        attempts >= 3,
        "the database broke the deadlock, one side retried: {attempts}"
    );
    attempts
}

/// The write-skew pair: two doctors on call, both try to go off call under
/// SERIALIZABLE, each only if someone else stays on call.
#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use common::pg;
    use std::sync::Barrier;

    fn doctors_table() -> String {
        let table = common::unique("doctors");
        let mut conn = pg();
        conn.batch_execute(&format!(
            "CREATE TABLE {table} (id INTEGER PRIMARY KEY, on_call BOOLEAN NOT NULL);
             INSERT INTO {table} VALUES (1, TRUE), (2, TRUE);"
        ))
        .unwrap();
        table
    }

    fn drop_table(table: &str) {
        pg().batch_execute(&format!("DROP TABLE IF EXISTS {table}"))
            .unwrap();
    }

    /// One doctor's transaction; the barrier makes both read before either
    /// writes (first attempt only).
    fn go_off_call(
        conn: &mut HookedConnection<PgConnection>,
        table: &str,
        id: i32,
        barrier: &Barrier,
        attempt: &AtomicU32,
        log: &Log,
    ) -> Result<bool, Error> {
        let n = attempt.fetch_add(1, Ordering::SeqCst) + 1;
        // Registered first: the conflict may surface at the UPDATE or at COMMIT.
        let l = log.clone();
        conn.on_rollback(move || l.push(format!("doctor {id} rolled back (attempt {n})")));
        let on_call: i64 = diesel::dsl::sql::<diesel::sql_types::BigInt>(&format!(
            "SELECT COUNT(*) FROM {table} WHERE on_call"
        ))
        .get_result(conn)?;
        if n == 1 {
            barrier.wait();
        }
        if on_call < 2 {
            return Ok(false);
        }
        diesel::sql_query(format!(
            "UPDATE {table} SET on_call = FALSE WHERE id = {id}"
        ))
        .execute(conn)?;
        let l = log.clone();
        conn.on_commit(move || l.push(format!("doctor {id} off call (attempt {n})")));
        Ok(true)
    }

    /// Each side's result, the hook log, doctors still on call, attempts per side.
    type PairOutcome = (Vec<Result<bool, Error>>, Vec<String>, i64, [u32; 2]);

    fn run_pair(retry: bool) -> PairOutcome {
        let table = doctors_table();
        let barrier = Arc::new(Barrier::new(2));
        let log = Log::new();
        let attempts = [Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0))];
        let handles: Vec<_> = (1..=2)
            .map(|id| {
                let (table, barrier, log) = (table.clone(), barrier.clone(), log.clone());
                let attempt = attempts[id as usize - 1].clone();
                std::thread::spawn(move || {
                    let mut conn = pg();
                    let builder = conn.build_transaction().serializable();
                    if retry {
                        builder
                            .retry(fast(10))
                            .run(|conn| go_off_call(conn, &table, id, &barrier, &attempt, &log))
                    } else {
                        builder.run(|conn| go_off_call(conn, &table, id, &barrier, &attempt, &log))
                    }
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let on_call: i64 = diesel::dsl::sql::<diesel::sql_types::BigInt>(&format!(
            "SELECT COUNT(*) FROM {table} WHERE on_call"
        ))
        .get_result(&mut pg())
        .unwrap();
        drop_table(&table);
        let a = [
            attempts[0].load(Ordering::SeqCst),
            attempts[1].load(Ordering::SeqCst),
        ];
        (results, log.get(), on_call, a)
    }

    #[test]
    fn write_skew_without_retry_fails_one_side_and_its_hooks_never_fire() {
        let (results, log, on_call, attempts) = run_pair(false);
        let failures: Vec<_> = results.iter().filter(|r| r.is_err()).collect();
        assert_eq!(failures.len(), 1, "{results:?}");
        assert!(
            matches!(
                failures[0],
                Err(Error::DatabaseError(
                    DatabaseErrorKind::SerializationFailure,
                    _
                ))
            ),
            "{results:?}"
        );
        assert_eq!(on_call, 1, "the invariant holds");
        let fired: Vec<_> = log.iter().filter(|l| l.contains("off call")).collect();
        assert_eq!(fired.len(), 1, "only the committed side fired: {log:?}");
        assert_eq!(
            log.iter().filter(|l| l.contains("rolled back")).count(),
            1,
            "{log:?}"
        );
        assert_eq!(attempts, [1, 1]);
    }

    #[test]
    fn write_skew_with_retry_keeps_the_invariant_and_fires_once_per_commit() {
        let (results, log, on_call, attempts) = run_pair(true);
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
        let went_off: Vec<_> = results.iter().filter(|r| matches!(r, Ok(true))).collect();
        assert_eq!(went_off.len(), 1, "one doctor went off call: {results:?}");
        assert_eq!(on_call, 1, "the invariant holds");
        let fired: Vec<_> = log.iter().filter(|l| l.contains("off call")).collect();
        assert_eq!(
            fired.len(),
            1,
            "hooks fired once per committed change: {log:?}"
        );
        // One side retried; how often depends on when the other committed.
        assert!(
            attempts.iter().sum::<u32>() >= 3,
            "one side retried: {attempts:?}"
        );
        let rolled_back = log.iter().filter(|l| l.contains("rolled back")).count() as u32;
        assert_eq!(
            rolled_back,
            attempts.iter().sum::<u32>() - 2,
            "every failed attempt ran its on_rollback: {log:?}"
        );
        println!("write skew with retry: attempts per doctor {attempts:?}, log {log:?}");
    }

    #[test]
    fn read_only_transactions_reject_writes() {
        let table = doctors_table();
        let mut conn = pg();
        let log = Log::new();
        let r = conn.build_transaction().read_only().run(|conn| -> R {
            conn.on_rollback(log.hook("rolled back"));
            diesel::sql_query(format!("UPDATE {table} SET on_call = FALSE")).execute(conn)?;
            conn.on_commit(log.hook("never"));
            Ok(())
        });
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
        // Reads work, and options combine.
        let n: i64 = conn
            .build_transaction()
            .serializable()
            .read_only()
            .deferrable()
            .run(|conn| {
                diesel::dsl::sql::<diesel::sql_types::BigInt>(&format!(
                    "SELECT COUNT(*) FROM {table}"
                ))
                .get_result(conn)
            })
            .unwrap();
        assert_eq!(n, 2);
        drop_table(&table);
    }

    #[test]
    fn a_deadlock_from_two_threads_is_retried() {
        let table = doctors_table();
        let attempts = deadlock_pair(pg, &table, |table, id| {
            format!("UPDATE {table} SET on_call = NOT on_call WHERE id = {id}")
        });
        println!("deadlock: {attempts} attempts for 2 commits");
        drop_table(&table);
    }
}

#[cfg(feature = "mysql")]
mod mysql {
    use super::*;
    use common::mysql;

    #[test]
    fn a_deadlock_from_two_threads_is_retried() {
        let table = common::unique("accounts");
        mysql()
            .batch_execute(&format!(
                "CREATE TABLE {table} (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL) ENGINE=InnoDB;
                 INSERT INTO {table} VALUES (1, 100), (2, 100);"
            ))
            .unwrap();
        // Alternating signs keep the balances unchanged whatever commits.
        let attempts = deadlock_pair(mysql, &table, |table, id| {
            let delta = if id == 1 { "- 1" } else { "+ 1" };
            format!("UPDATE {table} SET balance = balance {delta} WHERE id = {id}")
        });
        println!("MySQL deadlock: {attempts} attempts for 2 commits");
        mysql()
            .batch_execute(&format!("DROP TABLE {table}"))
            .unwrap();
    }

    #[test]
    fn mysql_options_render_and_run() {
        let mut conn = mysql();
        let log = Log::new();
        conn.build_transaction()
            .serializable()
            .read_only()
            .with_consistent_snapshot()
            .run(|conn| -> R {
                diesel::sql_query("SELECT 1").execute(conn)?;
                conn.on_commit(log.hook("mysql read-only committed"));
                Ok(())
            })
            .unwrap();
        assert_eq!(log.get(), ["mysql read-only committed"]);
        let table = common::unique("ro");
        conn.batch_execute(&format!("CREATE TABLE {table} (id INTEGER PRIMARY KEY)"))
            .unwrap();
        let r = conn.build_transaction().read_only().run(|conn| -> R {
            diesel::sql_query(format!("INSERT INTO {table} VALUES (1)")).execute(conn)?;
            Ok(())
        });
        assert!(r.is_err(), "read-only rejects writes");
        conn.batch_execute(&format!("DROP TABLE {table}")).unwrap();
    }
}
