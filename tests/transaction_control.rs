//! Issue 4: transaction options through the wrapper, and retries that keep
//! hook semantics (only the attempt that commits fires).

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use common::{sqlite, Log};
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
        Err(Error::DatabaseError(DatabaseErrorKind::SerializationFailure, _))
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
            Err(Error::DatabaseError(DatabaseErrorKind::SerializationFailure, _))
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
    assert!(attempts < 1000, "stopped by the deadline after {attempts} attempts");
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
    assert_eq!(log.get(), ["immediate", "exclusive", "immediate rolled back"]);
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
    diesel::sql_query("CREATE TABLE t (id INTEGER PRIMARY KEY)").execute(&mut a).unwrap();
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
    diesel::sql_query("PRAGMA busy_timeout = 0").execute(&mut b).unwrap();
    let counter = attempts.clone();
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        release_tx.send(()).unwrap();
    });
    let policy = RetryPolicy::attempts(200).backoff(
        std::time::Duration::from_millis(2),
        std::time::Duration::from_millis(10),
    );
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
