//! The rules on the async wrapper, on SQLite (diesel-async's
//! `SyncConnectionWrapper<SqliteConnection>`): every rule, plus the async
//! hook kinds. The backend-specific rules run on PostgreSQL and MySQL in
//! tests/async_postgres.rs and tests/async_mysql.rs; cancellation in
//! tests/async_cancellation.rs.
#![cfg(feature = "async")]

mod common;

use std::time::Duration;

use common::async_conn::{async_sqlite, AsyncSqlite};
use common::{capture_logs, Log};
use diesel::result::Error;
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_on_commit::{
    on_commit, AsyncHookedConnection, Capture, HookPanics, OutsideTransaction, TransactionHooks,
};

type Conn = AsyncHookedConnection<AsyncSqlite>;

async fn with_table() -> Conn {
    let mut conn = async_sqlite().await;
    conn.batch_execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        .await
        .unwrap();
    conn
}

async fn insert(conn: &mut Conn, id: i32) -> Result<usize, Error> {
    diesel::sql_query(format!("INSERT INTO orders (id) VALUES ({id})"))
        .execute(conn)
        .await
}

async fn count(conn: &mut Conn) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query("SELECT COUNT(*) AS n FROM orders")
        .get_result::<N>(conn)
        .await
        .unwrap()
        .n
}

/// A future hook that yields once before it logs, so it really is awaited.
fn later(log: &Log, s: &'static str) -> impl std::future::Future<Output = ()> + Send + 'static {
    let log = log.clone();
    async move {
        tokio::task::yield_now().await;
        log.push(s);
    }
}

// Rules 1, 5.4, 13: after COMMIT, sync and async hooks in one registration order.
#[tokio::test]
async fn commit_awaits_sync_and_async_hooks_in_registration_order() {
    let mut conn = with_table().await;
    let log = Log::new();
    let l = log.clone();
    conn.transaction::<_, Error, _>(async |conn| {
        insert(conn, 1).await?;
        conn.on_commit(l.hook("sync 1"));
        conn.on_commit_async(later(&l, "async 2"));
        let l2 = l.clone();
        conn.on_commit_with(async move |conn: &mut Conn| {
            assert!(!conn.in_transaction(), "runs at d == 0");
            let n = count(conn).await;
            l2.push(format!("with 3 sees {n} row"));
        });
        conn.on_commit_robust(l.hook("robust 4"));
        assert!(l.get().is_empty(), "nothing runs before COMMIT");
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(
        log.take(),
        ["sync 1", "async 2", "with 3 sees 1 row", "robust 4"]
    );
}

// Rule 4: a rollback discards on_commit hooks and awaits on_rollback hooks in order.
#[tokio::test]
async fn rollback_discards_on_commit_and_awaits_on_rollback_hooks_in_order() {
    let mut conn = with_table().await;
    let log = Log::new();
    let l = log.clone();
    let result = conn
        .transaction::<(), Error, _>(async |conn| {
            insert(conn, 1).await?;
            conn.on_commit(l.hook("commit"));
            conn.on_rollback(l.hook("rollback sync 1"));
            conn.on_commit_async(later(&l, "commit async"));
            conn.on_rollback_async(later(&l, "rollback async 2"));
            conn.on_rollback(l.hook("rollback sync 3"));
            Err(Error::RollbackTransaction)
        })
        .await;
    assert!(matches!(result, Err(Error::RollbackTransaction)));
    assert_eq!(
        log.take(),
        ["rollback sync 1", "rollback async 2", "rollback sync 3"]
    );
    assert_eq!(count(&mut conn).await, 0);
}

// Rules 3, 4: a released savepoint's hooks join the enclosing level; a rolled
// back one's are discarded, its on_rollback hooks run.
#[tokio::test]
async fn savepoints_merge_on_release_and_discard_on_rollback() {
    let mut conn = with_table().await;
    let log = Log::new();
    let l = log.clone();
    conn.transaction::<_, Error, _>(async |conn| {
        conn.on_commit(l.hook("outer"));
        let l2 = l.clone();
        let inner = conn
            .transaction::<(), Error, _>(async move |conn| {
                conn.on_commit_async(later(&l2, "rolled back savepoint"));
                conn.on_rollback_async(later(&l2, "savepoint on_rollback"));
                Err(Error::RollbackTransaction)
            })
            .await;
        assert!(inner.is_err());
        assert_eq!(
            l.get(),
            ["savepoint on_rollback"],
            "ran when the savepoint rolled back"
        );
        let l3 = l.clone();
        conn.transaction::<_, Error, _>(async move |conn| {
            conn.on_commit_async(later(&l3, "released savepoint"));
            conn.on_rollback(l3.hook("never"));
            Ok(())
        })
        .await?;
        conn.on_commit(l.hook("outer again"));
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(
        log.take(),
        [
            "savepoint on_rollback",
            "outer",
            "released savepoint",
            "outer again"
        ]
    );
}

// Rule 2 on the async wrapper.
#[tokio::test]
async fn outside_a_transaction_sync_hooks_run_at_once_and_async_ones_on_a_task() {
    let mut conn = async_sqlite().await;
    let log = Log::new();
    conn.on_commit(log.hook("at once"));
    assert_eq!(log.get(), ["at once"]);
    conn.on_rollback(log.hook("dropped"));
    let (tx, rx) = tokio::sync::oneshot::channel();
    conn.on_commit_async(async move {
        let _ = tx.send("spawned");
    });
    let spawned = tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .expect("the async hook ran on a spawned task")
        .unwrap();
    assert_eq!(spawned, "spawned");
    assert_eq!(log.take(), ["at once"]);

    conn.set_outside_transaction(OutsideTransaction::Panic);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        conn.on_commit_async(async {});
    }));
    let message = common::panic_text(&*caught.unwrap_err());
    assert!(message.contains("outside a transaction"), "{message}");
}

// Rule 5.1-5.2: before_commit can await, runs inside the transaction, and can veto.
#[tokio::test]
async fn before_commit_awaits_inside_the_transaction_and_an_err_vetoes() {
    let mut conn = with_table().await;
    let log = Log::new();
    let l = log.clone();
    conn.transaction::<_, Error, _>(async |conn| {
        insert(conn, 1).await?;
        let l2 = l.clone();
        conn.before_commit(async move |conn: &mut Conn| {
            assert!(conn.in_transaction());
            insert(conn, 2).await?;
            l2.push("before_commit");
            Ok(())
        });
        conn.on_commit(l.hook("after"));
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(log.take(), ["before_commit", "after"]);
    assert_eq!(count(&mut conn).await, 2);

    let l = log.clone();
    let vetoed = conn
        .transaction::<_, Error, _>(async |conn| {
            insert(conn, 3).await?;
            conn.before_commit(async |_conn: &mut Conn| Err(Error::NotFound));
            conn.on_commit(l.hook("never"));
            conn.on_rollback(l.hook("rolled back"));
            Ok(())
        })
        .await;
    assert!(matches!(vetoed, Err(Error::NotFound)));
    assert_eq!(log.take(), ["rolled back"]);
    assert_eq!(count(&mut conn).await, 2);
}

// Rule 7: a panic in the body rolls back, is resumed, and the connection stays usable.
#[tokio::test]
async fn a_panic_in_the_body_rolls_back_and_the_connection_stays_usable() {
    let mut conn = with_table().await;
    let log = Log::new();
    let l = log.clone();
    let task = async {
        conn.transaction::<(), Error, _>(async |conn| {
            insert(conn, 1).await?;
            conn.on_commit(l.hook("never"));
            conn.on_rollback(l.hook("rolled back"));
            panic!("bug in the body");
        })
        .await
    };
    let caught = futures_catch(task).await;
    assert!(caught.is_err());
    assert_eq!(log.take(), ["rolled back"]);
    assert!(!conn.in_transaction());
    assert_eq!(count(&mut conn).await, 0);
    conn.transaction::<_, Error, _>(async |conn| insert(conn, 2).await)
        .await
        .unwrap();
    assert_eq!(count(&mut conn).await, 1);
}

/// Catches a panic out of a future (tokio's JoinHandle would need 'static).
async fn futures_catch<F: std::future::Future>(f: F) -> std::thread::Result<F::Output> {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::task::Poll;
    let mut f = std::pin::pin!(f);
    std::future::poll_fn(
        move |cx| match catch_unwind(AssertUnwindSafe(|| f.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(p) => Poll::Ready(Err(p)),
        },
    )
    .await
}

// Rule 6: a hook's panic does not stop the others; it is resumed after COMMIT
// under Resume, only logged under Log.
#[tokio::test]
async fn a_panicking_async_hook_does_not_stop_the_others() {
    let mut conn = with_table().await;
    let log = Log::new();
    let l = log.clone();
    let outcome = futures_catch(conn.transaction::<_, Error, _>(async |conn| {
        insert(conn, 1).await?;
        conn.on_commit_async(async {
            if true {
                panic!("hook bug")
            }
        });
        conn.on_commit_async(later(&l, "after the panic"));
        Ok(())
    }))
    .await;
    assert!(outcome.is_err(), "the hook's panic is resumed after COMMIT");
    assert_eq!(log.take(), ["after the panic"]);
    assert_eq!(count(&mut conn).await, 1, "committed all the same");

    conn.set_hook_panics(HookPanics::Log);
    let l = log.clone();
    conn.transaction::<_, Error, _>(async |conn| {
        conn.on_commit_async(async {
            if true {
                panic!("hook bug")
            }
        });
        conn.on_commit(l.hook("next"));
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(log.take(), ["next"]);
}

// Rule 11: the test transaction is the baseline.
#[tokio::test]
async fn test_transaction_is_the_baseline() {
    let mut conn = with_table().await;
    let log = Log::new();
    let l = log.clone();
    conn.test_transaction::<_, Error, _>(async |conn| {
        assert!(!conn.in_transaction());
        conn.transaction::<_, Error, _>(async |conn| {
            insert(conn, 1).await?;
            conn.on_commit_async(later(&l, "fired at the user commit"));
            Ok(())
        })
        .await?;
        assert_eq!(l.get(), ["fired at the user commit"]);
        assert_eq!(count(conn).await, 1);
        Ok(())
    })
    .await;
    assert_eq!(
        count(&mut conn).await,
        0,
        "the test transaction rolled back"
    );
}

// Rule 11: inside an open transaction, as Diesel's, `test_transaction` runs
// in a savepoint that is rolled back: its on_commit hooks are discarded,
// its on_rollback hooks run (rule 4).
#[tokio::test]
async fn test_transaction_inside_a_transaction_runs_in_a_rolled_back_savepoint() {
    let mut conn = with_table().await;
    let log = Log::new();
    let l = log.clone();
    conn.transaction::<_, Error, _>(async |conn| {
        insert(conn, 1).await?;
        conn.on_commit(l.hook("outer committed"));
        let l2 = l.clone();
        let n = conn
            .test_transaction::<_, Error, _>(async |conn| {
                assert!(conn.in_transaction(), "a savepoint of the user transaction");
                insert(conn, 2).await?;
                conn.on_commit(l2.hook("discarded"));
                conn.on_commit_async(later(&l2, "async discarded"));
                conn.on_rollback(l2.hook("savepoint rolled back"));
                conn.on_rollback_async(later(&l2, "async savepoint rolled back"));
                Ok(count(conn).await)
            })
            .await;
        assert_eq!(n, 2, "the body's Ok value is returned");
        assert_eq!(
            l.get(),
            ["savepoint rolled back", "async savepoint rolled back"]
        );
        assert_eq!(count(conn).await, 1, "the savepoint's insert is undone");
        assert!(conn.in_transaction(), "the user transaction goes on");
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(
        log.get(),
        [
            "savepoint rolled back",
            "async savepoint rolled back",
            "outer committed"
        ]
    );
    assert_eq!(count(&mut conn).await, 1);
}

#[tokio::test]
async fn test_transaction_inside_a_transaction_panics_on_err_like_diesel() {
    let mut conn = with_table().await;
    let log = Log::new();
    let l = log.clone();
    conn.transaction::<_, Error, _>(async |conn| {
        let l2 = l.clone();
        let outcome = futures_catch(conn.test_transaction::<(), Error, _>(async |conn| {
            insert(conn, 1).await?;
            conn.on_commit(l2.hook("discarded"));
            conn.on_rollback(l2.hook("savepoint rolled back"));
            Err(Error::NotFound)
        }))
        .await;
        let message = common::panic_text(&*outcome.unwrap_err());
        assert!(message.contains("Transaction did not succeed"), "{message}");
        assert!(conn.in_transaction());
        assert_eq!(count(conn).await, 0);
        conn.on_commit(l.hook("outer committed"));
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(log.get(), ["savepoint rolled back", "outer committed"]);
}

// Rule 12: capture, Collect then run; Execute.
#[tokio::test]
async fn capture_collects_async_hooks_and_runs_them_later() {
    let mut conn = with_table().await;
    let log = Log::new();
    let l = log.clone();
    let ((), hooks) = conn
        .capture_on_commit(Capture::Collect, async |conn: &mut Conn| {
            conn.transaction::<_, Error, _>(async |conn| {
                conn.on_commit(l.hook("sync"));
                conn.on_commit_async(later(&l, "async"));
                Ok(())
            })
            .await
            .unwrap();
        })
        .await;
    assert_eq!(hooks.len(), 2);
    assert!(log.get().is_empty());
    assert!(hooks.labels()[1].to_string().contains("async_sqlite.rs"));
    hooks.run(&mut conn).await;
    assert_eq!(log.take(), ["sync", "async"]);

    let l = log.clone();
    let ((), hooks) = conn
        .capture_on_commit(Capture::Execute, async |conn: &mut Conn| {
            conn.transaction::<_, Error, _>(async |conn| {
                conn.on_commit_async(later(&l, "executed"));
                Ok(())
            })
            .await
            .unwrap();
        })
        .await;
    assert_eq!(log.take(), ["executed"]);
    assert_eq!(hooks.len(), 1);
}

// Rule 10 and "no user hook runs inside Drop": dropping the wrapper
// mid-transaction hands its on_rollback hooks to a task.
#[tokio::test]
async fn dropping_the_wrapper_mid_transaction_runs_on_rollback_hooks_on_a_task() {
    let mut conn = with_table().await;
    let log = Log::new();
    AsyncHookedConnection::<AsyncSqlite>::begin_transaction_for_test(&mut conn).await;
    conn.on_commit(log.hook("never"));
    conn.on_rollback(log.hook("rollback"));
    drop(conn);
    assert!(log.get().is_empty(), "nothing ran inside Drop");
    for _ in 0..100 {
        if !log.get().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(log.take(), ["rollback"]);
}

trait BeginForTest {
    async fn begin_transaction_for_test(conn: &mut Self);
}

impl BeginForTest for AsyncHookedConnection<AsyncSqlite> {
    async fn begin_transaction_for_test(conn: &mut Self) {
        <Self as AsyncConnection>::TransactionManager::begin_transaction(conn)
            .await
            .unwrap();
    }
}

use diesel_async::TransactionManager as _;

// TransactionHooks and on_commit! work on the async wrapper.
#[tokio::test]
async fn transaction_hooks_and_on_commit_macro_work_on_the_async_wrapper() {
    fn schedule<C: TransactionHooks>(conn: &mut C, log: &Log) {
        conn.on_commit(log.hook("generic"));
    }
    let mut conn = with_table().await;
    let log = Log::new();
    let l = log.clone();
    conn.transaction::<_, Error, _>(async |conn| {
        schedule(conn, &l);
        let l2 = l.clone();
        on_commit!(conn, l2.push("macro"));
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(log.take(), ["generic", "macro"]);
}

// Generic code that calls diesel-async's `AsyncConnection::transaction` gets
// the same rules.
#[tokio::test]
async fn diesel_async_transaction_goes_through_the_hook_rules() {
    async fn generic<C: AsyncConnection + TransactionHooks>(conn: &mut C, log: Log) {
        let _ = conn
            .transaction::<(), Error, _>(async move |conn| {
                conn.on_commit(log.hook("never"));
                conn.on_rollback(log.hook("rolled back"));
                Err(Error::RollbackTransaction)
            })
            .await;
    }
    let mut conn = with_table().await;
    let log = Log::new();
    generic(&mut conn, log.clone()).await;
    assert_eq!(log.take(), ["rolled back"]);
}

// Rule 6: a hook's Err is logged with its label.
#[test]
fn a_hook_error_is_logged_with_its_label() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ((), logs) = capture_logs(|| {
        rt.block_on(async {
            let mut conn = with_table().await;
            conn.transaction::<_, Error, _>(async |conn| {
                conn.on_commit_async(async { Err::<(), _>("broker unreachable") });
                Ok(())
            })
            .await
            .unwrap();
        })
    });
    assert!(
        logs.contains("ERROR") && logs.contains("broker unreachable"),
        "{logs}"
    );
    assert!(
        logs.contains("async_sqlite.rs"),
        "the label names the call site: {logs}"
    );
}

// Rule 5.4: hooks registered by a running hook run right after it (depth
// first); a hook that opens a transaction gets a fresh one with its own hooks.
#[tokio::test]
async fn hooks_registered_by_hooks_run_depth_first_and_a_hook_can_open_a_transaction() {
    let mut conn = with_table().await;
    let log = Log::new();
    let l = log.clone();
    conn.transaction::<_, Error, _>(async |conn| {
        let l1 = l.clone();
        conn.on_commit_with(async move |conn: &mut Conn| {
            l1.push("first");
            conn.on_commit_async(later(&l1, "registered by first (async)"));
            conn.on_commit(l1.hook("registered by first (sync, at once)"));
            let l2 = l1.clone();
            conn.transaction::<_, Error, _>(async move |conn| {
                insert(conn, 7).await?;
                conn.on_commit(l2.hook("fresh transaction's hook"));
                Ok(())
            })
            .await
            .unwrap();
        });
        conn.on_commit(l.hook("second"));
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(
        log.take(),
        [
            "first",
            "registered by first (sync, at once)",
            "fresh transaction's hook",
            "registered by first (async)",
            "second"
        ]
    );
    assert_eq!(count(&mut conn).await, 1);
}

// Rule 2: on_rollback outside a transaction is dropped; before_commit panics.
#[tokio::test]
async fn outside_a_transaction_on_rollback_is_dropped_and_before_commit_panics() {
    let mut conn = async_sqlite().await;
    let log = Log::new();
    conn.on_rollback(log.hook("never"));
    conn.on_rollback_async(later(&log, "never either"));
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        conn.before_commit(async |_conn: &mut Conn| Ok(()));
    }));
    let message = common::panic_text(&*caught.unwrap_err());
    assert!(message.contains("nothing to veto"), "{message}");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(log.get().is_empty());
}

// Rule 6: a robust hook's panic is caught and never resumed.
#[tokio::test]
async fn a_robust_hooks_panic_is_caught() {
    let mut conn = with_table().await;
    let log = Log::new();
    let l = log.clone();
    conn.transaction::<_, Error, _>(async |conn| {
        conn.on_commit_robust(|| -> () { panic!("robust bug") });
        conn.on_commit(l.hook("after"));
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(log.take(), ["after"]);
}

// Rule 8: a transaction the wrapper did not open.
#[tokio::test]
async fn registering_in_a_transaction_the_wrapper_did_not_open_panics() {
    let mut conn = async_sqlite().await;
    <AsyncSqlite as AsyncConnection>::TransactionManager::begin_transaction(conn.inner_mut())
        .await
        .unwrap();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        conn.on_commit_async(async {});
    }));
    let message = common::panic_text(&*caught.unwrap_err());
    assert!(message.contains("did not open"), "{message}");
}

// Rule 10: into_inner with an open transaction discards every hook.
#[tokio::test]
async fn into_inner_mid_transaction_discards_every_hook() {
    let mut conn = with_table().await;
    let log = Log::new();
    <Conn as AsyncConnection>::TransactionManager::begin_transaction(&mut conn)
        .await
        .unwrap();
    conn.on_commit(log.hook("never"));
    conn.on_rollback_async(later(&log, "never either"));
    let inner = conn.into_inner();
    drop(inner);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(log.get().is_empty());
}

// Rule 12: capture is called at d == 0 and not nested.
#[tokio::test]
async fn capture_inside_a_transaction_panics() {
    let mut conn = async_sqlite().await;
    let outcome = futures_catch(conn.transaction::<_, Error, _>(async |conn| {
        let _ = conn
            .capture_on_commit(Capture::Collect, async |_conn: &mut Conn| ())
            .await;
        Ok(())
    }))
    .await;
    let message = common::panic_text(&*outcome.unwrap_err());
    assert!(message.contains("outside a transaction"), "{message}");
    assert!(
        !conn.in_transaction(),
        "the panic rolled the transaction back"
    );
}

// Rule 5.1: hooks registered by a before_commit hook land in the same level;
// before_commit hooks it registers run too.
#[tokio::test]
async fn before_commit_hooks_can_register_more_hooks() {
    let mut conn = with_table().await;
    let log = Log::new();
    let l = log.clone();
    conn.transaction::<_, Error, _>(async |conn| {
        let l1 = l.clone();
        conn.before_commit(async move |conn: &mut Conn| {
            l1.push("before 1");
            conn.on_commit_async(later(&l1, "registered by before 1"));
            let l2 = l1.clone();
            conn.before_commit(async move |_conn: &mut Conn| {
                l2.push("before 2");
                Ok(())
            });
            Ok(())
        });
        conn.on_commit(l.hook("registered in the body"));
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(
        log.take(),
        [
            "before 1",
            "before 2",
            "registered in the body",
            "registered by before 1"
        ]
    );
}

// Rule C1 inside a live transaction: a savepoint's future is
// dropped (a timeout in the body). Nothing commits; the on_rollback hooks of
// every level run in registration order before the outer `transaction()`
// returns its error; the connection is then refused.
#[tokio::test]
async fn a_savepoint_future_dropped_inside_a_live_transaction_fails_the_transaction() {
    let mut conn = with_table().await;
    let log = Log::new();
    let l = log.clone();
    let outcome = conn
        .transaction::<_, Error, _>(async |conn| {
            insert(conn, 1).await?;
            conn.on_rollback(l.hook("r1 outer"));
            conn.on_commit(l.hook("never"));
            let l2 = l.clone();
            let inner = conn.transaction::<(), Error, _>(async move |conn| {
                conn.on_rollback_async(later(&l2, "r2 savepoint"));
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(())
            });
            assert!(tokio::time::timeout(Duration::from_millis(10), inner)
                .await
                .is_err());
            conn.on_rollback(l.hook("r3 outer, after the drop"));
            Ok(())
        })
        .await;
    assert!(outcome.is_err(), "{outcome:?}");
    assert_eq!(
        log.take(),
        ["r1 outer", "r2 savepoint", "r3 outer, after the drop"],
        "awaited in order before transaction() returned"
    );
    let next = conn
        .transaction::<_, Error, _>(async |conn| insert(conn, 2).await)
        .await;
    assert!(
        next.is_err(),
        "a connection abandoned mid-transaction is refused"
    );
}

// Rule 2 on the async wrapper: an async hook registered by a sync hook that
// runs at once outside any transaction goes to a task, not into limbo.
#[tokio::test]
async fn an_async_hook_registered_by_an_at_once_hook_is_not_lost() {
    let mut owned = async_sqlite().await;
    let conn = &mut owned;
    let (tx, rx) = tokio::sync::oneshot::channel();
    on_commit!(conn, move |c: &mut Conn| c.on_commit_async(async move {
        let _ = tx.send("ran");
    }));
    let ran = tokio::time::timeout(Duration::from_secs(5), rx).await;
    assert_eq!(ran.expect("it ran").unwrap(), "ran");
}

// Rule 6 and cancellation: a hook's panic caught before the future was
// dropped is still logged.
#[test]
fn a_hook_panic_caught_before_the_future_was_dropped_is_logged() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ((), logs) = capture_logs(|| {
        rt.block_on(async {
            let mut conn = with_table().await;
            let (started, hook_started) = tokio::sync::oneshot::channel::<()>();
            let request = conn.transaction::<_, Error, _>(async move |conn| {
                conn.on_commit(|| -> () { panic!("first hook bug") });
                conn.on_commit_async(async move {
                    let _ = started.send(());
                    tokio::time::sleep(Duration::from_secs(60)).await;
                });
                Ok(())
            });
            tokio::select! {
                _ = request => unreachable!("the second hook sleeps"),
                _ = hook_started => {}
            }
        })
    });
    assert!(logs.contains("first hook bug"), "{logs}");
}

// on_commit! registers async hooks on the async wrapper: an expression that
// awaits, an async block, async closures with and without the connection.
#[tokio::test]
async fn on_commit_macro_registers_async_hooks() {
    let mut conn = with_table().await;
    let log = Log::new();
    let l = log.clone();
    conn.transaction::<_, Error, _>(async |conn| {
        let (a, b, c, d) = (l.clone(), l.clone(), l.clone(), l.clone());
        on_commit!(conn, later(&a, "awaits").await);
        on_commit!(conn, async move { b.push("async block") });
        on_commit!(conn, async move |conn: &mut Conn| c
            .push(format!("with sees {} row", count(conn).await)));
        on_commit!(conn, async move || d.push("async closure"));
        insert(conn, 1).await?;
        assert!(l.get().is_empty());
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(
        log.take(),
        ["awaits", "async block", "with sees 1 row", "async closure"]
    );
}
