//! PostgreSQL: the rules that only PostgreSQL shows (deferred constraints,
//! serialization failures, an aborted transaction, `RETURNING`, custom
//! types, pools), on a real server; the rules that read the same on MySQL
//! are written once in tests/backend_rules/ and stamped out here.
//!
//! Needs `POSTGRES_DATABASE_URL` (see `tests/common/mod.rs`); `bash .ci/run`
//! starts the server and sets it. Each test works in a schema of its own
//! (`PgSchema`), so the tests can run in parallel on one shared database.
#![cfg(feature = "postgres")]

mod backend_rules;
mod common;
#[cfg(feature = "outbox")]
mod outbox_rules;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::time::Duration;

use backend_rules::{items, kind_and_message, Item, TestDb};
use common::{capture_logs, signal, Log, PgSchema};
use diesel::connection::{
    DefaultLoadingMode, LoadConnection, SimpleConnection, TransactionManager,
};
use diesel::pg::{Pg, PgRowByRowLoadingMode};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error};
use diesel_on_commit::HookedConnection;

type DbConn = HookedConnection<PgConnection>;

const CREATE_ITEMS: &str = "CREATE TABLE items (id INT4 PRIMARY KEY, name TEXT NOT NULL)";

fn insert<C: Connection<Backend = Pg>>(conn: &mut C, id: i32) -> QueryResult<usize> {
    diesel::insert_into(items::table)
        .values(Item::new(id))
        .execute(conn)
}

fn ids<C: Connection<Backend = Pg> + LoadConnection>(conn: &mut C) -> Vec<i32> {
    items::table
        .select(items::id)
        .order(items::id)
        .load(conn)
        .expect("SELECT id FROM items")
}

fn backend_pid<C: Connection<Backend = Pg> + LoadConnection>(conn: &mut C) -> i32 {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
        "pg_backend_pid()",
    ))
    .get_result(conn)
    .expect("SELECT pg_backend_pid()")
}

/// Terminates backend `pid` from another connection and waits until it is gone.
fn terminate(killer: &mut PgConnection, pid: i32) {
    let gone: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
        "pg_terminate_backend({pid}, 20000)"
    )))
    .get_result(killer)
    .expect("pg_terminate_backend");
    assert!(gone, "backend {pid} did not terminate within 20s");
}

impl TestDb for PgConnection {
    type Db = PgSchema;
    const CREATE_ITEMS: &'static str = CREATE_ITEMS;
    const KILLED: &'static str = "dead backend";

    fn db() -> PgSchema {
        PgSchema::new()
    }
    fn conn(db: &PgSchema) -> DbConn {
        db.conn()
    }
    fn plain(db: &PgSchema) -> Self {
        db.plain()
    }
    fn session_id(conn: &mut DbConn) -> u64 {
        backend_pid(conn) as u64
    }
    fn kill(killer: &mut Self, id: u64) {
        terminate(killer, id as i32)
    }
    fn insert<C: Connection<Backend = Pg>>(conn: &mut C, id: i32) -> QueryResult<usize> {
        insert(conn, id)
    }
    fn ids<C: Connection<Backend = Pg> + LoadConnection>(conn: &mut C) -> Vec<i32> {
        ids(conn)
    }
}

// The rules that read the same on MySQL (tests/backend_rules/).
backend_rules::rule_tests!(PgConnection);

// Outbox hooks (tests/outbox_rules/), in this test's schema.
#[cfg(feature = "outbox")]
mod outbox_pg {
    use super::*;
    use diesel_on_commit::outbox::Outbox;

    #[derive(QueryableByName)]
    struct Ms {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        ms: i64,
    }

    impl crate::outbox_rules::OutboxDb for PgConnection {
        type Guard = PgSchema;
        const MAX_ROWS: usize = 65_535 / 5;
        const BREAK_FLUSH: &'static str = "
            CREATE TABLE guard (x INT4 PRIMARY KEY);
            INSERT INTO guard VALUES (1);
            CREATE FUNCTION break_flush() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.kind = 'test.bad' THEN INSERT INTO guard VALUES (1); END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER break_flush BEFORE INSERT ON diesel_on_commit_outbox
                FOR EACH ROW EXECUTE FUNCTION break_flush();";

        fn fresh() -> (PgSchema, DbConn) {
            let db = PgSchema::new();
            let mut conn = db.conn();
            Outbox::run_migrations(&mut conn).unwrap();
            conn.batch_execute("CREATE TABLE items (id INT4 PRIMARY KEY)")
                .unwrap();
            (db, conn)
        }
        fn connect(db: &PgSchema) -> DbConn {
            db.conn()
        }
        fn due_in_ms(conn: &mut DbConn) -> Vec<i64> {
            diesel::sql_query(
                "SELECT CAST(EXTRACT(EPOCH FROM (run_at - clock_timestamp())) * 1000 AS BIGINT) \
                 AS ms FROM diesel_on_commit_outbox ORDER BY id",
            )
            .load::<Ms>(conn)
            .unwrap()
            .into_iter()
            .map(|m| m.ms)
            .collect()
        }
        fn items(conn: &mut DbConn) -> i64 {
            diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
                "(SELECT COUNT(*) FROM items)",
            ))
            .get_result(conn)
            .unwrap()
        }
        fn own_schema(conn: &mut DbConn) -> String {
            diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
                "current_schema()",
            ))
            .get_result(conn)
            .unwrap()
        }
    }

    crate::outbox_rules::outbox_tests!(PgConnection);
}

// ---------------------------------------------------------------------------
// Rule 5.3: a COMMIT that fails.
// ---------------------------------------------------------------------------

#[test]
fn failed_commit_of_a_deferred_foreign_key_runs_on_rollback_and_returns_the_error() {
    let db = PgSchema::new();
    let mut conn = db.conn();
    conn.batch_execute(
        "CREATE TABLE parents (id INT4 PRIMARY KEY);
         CREATE TABLE children (
             id INT4 PRIMARY KEY,
             parent_id INT4 NOT NULL REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED
         );",
    )
    .unwrap();
    let log = Log::new();
    let result = conn.transaction(|c| {
        c.on_commit(log.hook("outer committed"));
        c.on_rollback(log.hook("outer rolled back"));
        c.transaction(|c| {
            c.on_commit(log.hook("savepoint committed"));
            c.on_rollback(log.hook("savepoint rolled back"));
            // No parent 42: only COMMIT checks the deferred constraint.
            c.batch_execute("INSERT INTO children VALUES (1, 42)")
        })?;
        assert!(log.get().is_empty());
        Ok::<_, Error>(())
    });
    let error = result.expect_err("COMMIT must fail on the deferred foreign key");
    assert_eq!(
        kind_and_message(&error).0,
        DatabaseErrorKind::ForeignKeyViolation,
        "{error}"
    );
    assert_eq!(log.take(), ["outer rolled back", "savepoint rolled back"]);
    assert!(!conn.in_transaction());
    let children = diesel::sql_query("SELECT count(*) AS n FROM children")
        .get_result::<Count>(&mut db.plain())
        .unwrap();
    assert_eq!(children.n, 0, "the child row was committed");
    // The connection is usable, and its next transaction fires normally.
    conn.transaction(|c| {
        c.on_commit(log.hook("next"));
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(log.take(), ["next"]);
}

#[test]
fn before_commit_error_from_a_deferred_constraint_rolls_back_and_is_returned() {
    // Rule 5.2 on a real server: a before_commit hook checks the deferred
    // constraints early; its error aborts the commit.
    let db = PgSchema::new();
    let mut conn = db.conn();
    conn.batch_execute(
        "CREATE TABLE parents (id INT4 PRIMARY KEY);
         CREATE TABLE children (
             id INT4 PRIMARY KEY,
             parent_id INT4 NOT NULL REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED
         );",
    )
    .unwrap();
    let log = Log::new();
    let result = conn.transaction(|c| {
        c.on_commit(log.hook("committed"));
        c.on_rollback(log.hook("rolled back"));
        c.batch_execute("INSERT INTO children VALUES (1, 42)")?;
        c.before_commit(|c: &mut DbConn| c.batch_execute("SET CONSTRAINTS ALL IMMEDIATE"));
        c.before_commit({
            let log = log.clone();
            move |_: &mut DbConn| {
                log.push("second before_commit");
                Ok(())
            }
        });
        Ok::<_, Error>(())
    });
    let error = result.expect_err("the before_commit hook's error must abort the commit");
    assert_eq!(
        kind_and_message(&error).0,
        DatabaseErrorKind::ForeignKeyViolation
    );
    assert_eq!(log.take(), ["rolled back"]);
    assert!(!conn.in_transaction());
    let children = diesel::sql_query("SELECT count(*) AS n FROM children")
        .get_result::<Count>(&mut db.plain())
        .unwrap();
    assert_eq!(children.n, 0);
}

#[test]
fn swallowed_statement_error_in_before_commit_fails_the_commit() {
    let db = PgSchema::new();
    let mut conn = db.conn();
    conn.batch_execute(CREATE_ITEMS).unwrap();
    insert(&mut conn, 1).unwrap();
    let log = Log::new();
    let result = conn.transaction(|c| {
        c.on_commit(log.hook("committed"));
        c.on_rollback(log.hook("rolled back"));
        insert(c, 2)?;
        c.before_commit(|c: &mut DbConn| {
            let _ = insert(c, 1); // duplicate key, swallowed
            Ok(())
        });
        Ok::<_, Error>(())
    });
    let error = result.expect_err("transaction() returned Ok for work that was not committed");
    assert_eq!(
        kind_and_message(&error).0,
        DatabaseErrorKind::UniqueViolation
    );
    assert_eq!(log.take(), ["rolled back"]);
    assert_eq!(ids(&mut db.plain()), [1]);
}

#[test]
fn swallowed_statement_error_inside_a_test_transaction_fails_the_user_commit() {
    // Rules 11 and 5.3: the outermost user commit is a RELEASE SAVEPOINT
    // there; it fails like a COMMIT, and the test transaction goes on.
    let db = PgSchema::new();
    let mut conn = db.conn();
    conn.batch_execute(CREATE_ITEMS).unwrap();
    insert(&mut conn, 1).unwrap();
    let log = Log::new();
    conn.test_transaction(|c| {
        let mut swallowed = None;
        let result = c.transaction(|c| {
            c.on_commit(log.hook("committed"));
            c.on_rollback(log.hook("rolled back"));
            insert(c, 2)?;
            swallowed = Some(insert(c, 1).expect_err("duplicate key"));
            Ok::<_, Error>(())
        });
        let error = result.expect_err("a user commit of aborted work returned Ok");
        assert_eq!(
            kind_and_message(&error),
            kind_and_message(&swallowed.unwrap())
        );
        assert_eq!(log.take(), ["rolled back"]);
        assert!(!c.in_transaction());
        c.transaction(|c| {
            insert(c, 3)?;
            c.on_commit(log.hook("next"));
            Ok::<_, Error>(())
        })?;
        assert_eq!(log.take(), ["next"]);
        assert_eq!(ids(c), [1, 3]);
        Ok::<_, Error>(())
    });
    assert!(log.take().is_empty());
    assert_eq!(ids(&mut conn), [1]);
}

const CREATE_DOCTORS: &str = "CREATE TABLE doctors (id INT4 PRIMARY KEY, on_call BOOL NOT NULL);
     INSERT INTO doctors VALUES (1, true), (2, true);";

fn on_call<C: Connection<Backend = Pg> + LoadConnection>(conn: &mut C) -> QueryResult<i64> {
    diesel::sql_query("SELECT count(*) AS n FROM doctors WHERE on_call")
        .get_result::<Count>(conn)
        .map(|c| c.n)
}

fn go_off_call<C: Connection<Backend = Pg>>(conn: &mut C, id: i32) -> QueryResult<usize> {
    diesel::sql_query("UPDATE doctors SET on_call = false WHERE id = $1")
        .bind::<diesel::sql_types::Integer, _>(id)
        .execute(conn)
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[test]
fn serialization_failure_at_commit_fires_no_on_commit_and_keeps_its_kind() {
    // Write skew: A and B each check that two doctors are on call, then each
    // takes a different one off call. B commits first; A's COMMIT fails.
    let db = PgSchema::new();
    let mut a = db.conn();
    let mut b = db.conn();
    a.batch_execute(CREATE_DOCTORS).unwrap();
    let log = Log::new();
    let mut a_statements_succeeded = false;
    let result = a.transaction(|a| {
        a.batch_execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")?;
        a.on_commit(log.hook("a committed"));
        a.on_rollback(log.hook("a rolled back"));
        assert_eq!(on_call(a)?, 2);
        b.transaction(|b| {
            b.batch_execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")?;
            b.on_commit(log.hook("b committed"));
            b.on_rollback(log.hook("b rolled back"));
            assert_eq!(on_call(b)?, 2);
            go_off_call(b, 1)?;
            go_off_call(a, 2)?; // both wrote before either commits
            Ok::<_, Error>(())
        })?;
        a_statements_succeeded = true;
        Ok::<_, Error>(())
    });
    let error = result.expect_err("A's COMMIT must fail: write skew under SERIALIZABLE");
    assert_eq!(
        kind_and_message(&error).0,
        DatabaseErrorKind::SerializationFailure,
        "{error}"
    );
    assert!(
        a_statements_succeeded,
        "the serialization failure was expected at COMMIT, not at a statement"
    );
    assert_eq!(log.take(), ["b committed", "a rolled back"]);
    assert!(!a.in_transaction());
    assert_eq!(
        on_call(&mut db.plain()).unwrap(),
        1,
        "only B's update committed"
    );
}

#[test]
fn serialization_failure_at_a_statement_rolls_back_and_fires_no_on_commit() {
    // The same conflict as below, propagated with `?`: an ordinary rollback.
    let db = PgSchema::new();
    let mut a = db.conn();
    let mut other = db.plain();
    a.batch_execute(CREATE_DOCTORS).unwrap();
    let log = Log::new();
    let result = a.transaction(|a| {
        a.batch_execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")?;
        a.on_commit(log.hook("committed"));
        a.on_rollback(log.hook("rolled back"));
        assert_eq!(on_call(a)?, 2);
        go_off_call(&mut other, 1)?;
        go_off_call(a, 1)?;
        Ok::<_, Error>(())
    });
    let error = result.expect_err("a concurrent update under SERIALIZABLE");
    assert_eq!(
        kind_and_message(&error).0,
        DatabaseErrorKind::SerializationFailure
    );
    assert_eq!(log.take(), ["rolled back"]);
    assert!(!a.in_transaction());
}

#[test]
fn swallowed_serialization_failure_is_returned_as_serialization_failure() {
    // A statement fails with 40001 ("concurrent update"); the body swallows
    // it. The wrapper must still say SerializationFailure so callers retry.
    let db = PgSchema::new();
    let mut a = db.conn();
    let mut other = db.plain();
    a.batch_execute(CREATE_DOCTORS).unwrap();
    let log = Log::new();
    let mut swallowed = None;
    let result = a.transaction(|a| {
        a.batch_execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")?;
        a.on_commit(log.hook("committed"));
        a.on_rollback(log.hook("rolled back"));
        assert_eq!(on_call(a)?, 2); // the snapshot is taken
        go_off_call(&mut other, 1)?; // autocommits after A's snapshot
        swallowed = Some(go_off_call(a, 1).expect_err("a concurrent update under SERIALIZABLE"));
        Ok::<_, Error>(())
    });
    let swallowed = kind_and_message(&swallowed.unwrap());
    assert_eq!(swallowed.0, DatabaseErrorKind::SerializationFailure);
    let error = result.expect_err("transaction() returned Ok for an aborted transaction");
    assert_eq!(kind_and_message(&error), swallowed);
    assert_eq!(log.take(), ["rolled back"]);
    assert!(!a.in_transaction());
}

#[test]
fn swallowed_statement_error_fails_the_commit_with_the_same_kind_and_message() {
    let db = PgSchema::new();
    let mut conn = db.conn();
    conn.batch_execute(CREATE_ITEMS).unwrap();
    insert(&mut conn, 1).unwrap();

    // Plain Diesel: PostgreSQL answers COMMIT with ROLLBACK, Diesel says Ok.
    let mut plain = db.plain();
    let plain_result = plain.transaction(|p| {
        insert(p, 2)?;
        let _ = insert(p, 1);
        Ok::<_, Error>(())
    });
    assert!(
        plain_result.is_ok(),
        "plain Diesel's silent case: {plain_result:?}"
    );
    assert_eq!(ids(&mut plain), [1], "... and nothing was committed");

    let log = Log::new();
    let mut swallowed = None;
    let result = conn.transaction(|c| {
        c.on_commit(log.hook("committed"));
        c.on_rollback(log.hook("rolled back"));
        insert(c, 2)?;
        swallowed = Some(insert(c, 1).expect_err("duplicate key"));
        Ok::<_, Error>(())
    });
    let swallowed = swallowed.unwrap();
    let error = result.expect_err("transaction() returned Ok for work that was not committed");
    assert_eq!(
        kind_and_message(&error).0,
        DatabaseErrorKind::UniqueViolation
    );
    assert_eq!(kind_and_message(&error), kind_and_message(&swallowed));
    if let (Error::DatabaseError(_, got), Error::DatabaseError(_, want)) = (&error, &swallowed) {
        assert_eq!(got.constraint_name(), want.constraint_name());
        assert_eq!(got.table_name(), want.table_name());
        assert_eq!(got.details(), want.details());
    }
    assert_eq!(log.take(), ["rolled back"]);
    assert!(!conn.in_transaction());
    assert_eq!(ids(&mut plain), [1]);
    // The connection is usable afterwards.
    conn.transaction(|c| {
        insert(c, 3)?;
        c.on_commit(log.hook("next"));
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(log.take(), ["next"]);
    assert_eq!(ids(&mut plain), [1, 3]);
}

#[test]
fn swallowed_statement_error_in_a_savepoint_fails_its_release_with_the_same_kind_and_message() {
    let db = PgSchema::new();
    let mut conn = db.conn();
    conn.batch_execute(CREATE_ITEMS).unwrap();
    insert(&mut conn, 1).unwrap();
    let log = Log::new();
    conn.transaction(|c| {
        insert(c, 2)?;
        c.on_commit(log.hook("outer"));
        let mut swallowed = None;
        let inner = c.transaction(|c| {
            c.on_commit(log.hook("savepoint committed"));
            c.on_rollback(log.hook("savepoint rolled back"));
            insert(c, 3)?;
            swallowed = Some(insert(c, 1).expect_err("duplicate key"));
            Ok::<_, Error>(())
        });
        let error = inner.expect_err("a savepoint whose RELEASE fails returned Ok");
        assert_eq!(
            kind_and_message(&error).0,
            DatabaseErrorKind::UniqueViolation
        );
        assert_eq!(
            kind_and_message(&error),
            kind_and_message(&swallowed.unwrap())
        );
        assert_eq!(log.take(), ["savepoint rolled back"]);
        assert!(c.in_transaction());
        insert(c, 4)?; // the savepoint's rollback repaired the transaction
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(log.take(), ["outer"]);
    assert_eq!(ids(&mut db.plain()), [1, 2, 4]);
}

#[test]
fn swallowed_error_that_bypassed_the_wrapper_still_fails_the_commit() {
    // The failing statement ran on inner_mut(): the wrapper never saw the
    // error, but Diesel's requires-rollback flag still tells it.
    let db = PgSchema::new();
    let mut conn = db.conn();
    conn.batch_execute(CREATE_ITEMS).unwrap();
    insert(&mut conn, 1).unwrap();
    let log = Log::new();
    let result = conn.transaction(|c| {
        c.on_commit(log.hook("committed"));
        c.on_rollback(log.hook("rolled back"));
        insert(c, 2)?;
        let _ = insert(c.inner_mut(), 1);
        Ok::<_, Error>(())
    });
    let error = result.expect_err("transaction() returned Ok for work that was not committed");
    assert!(
        error.to_string().contains("aborted"),
        "the error should say the transaction had been aborted: {error}"
    );
    assert_eq!(log.take(), ["rolled back"]);
    assert_eq!(ids(&mut db.plain()), [1]);
}

// ---------------------------------------------------------------------------
// Rule 8: transactions the wrapper did not open.
// ---------------------------------------------------------------------------

#[test]
fn raw_commit_or_rollback_makes_levels_vanish_and_neither_kind_of_hook_runs() {
    for raw in ["COMMIT", "ROLLBACK"] {
        let db = PgSchema::new();
        let mut conn = db.conn();
        conn.batch_execute(CREATE_ITEMS).unwrap();
        let log = Log::new();
        let (result, logs) = capture_logs(|| {
            conn.transaction(|c| {
                insert(c, 1)?;
                c.on_commit(log.hook("committed"));
                c.on_rollback(log.hook("rolled back"));
                c.transaction(|c| {
                    c.on_commit(log.hook("savepoint committed"));
                    c.on_rollback(log.hook("savepoint rolled back"));
                    Ok::<_, Error>(())
                })?;
                c.batch_execute(raw)?;
                Ok::<_, Error>(())
            })
        });
        // As plain Diesel: the level is gone, so `transaction()` has nothing
        // to commit.
        assert!(
            matches!(result, Err(Error::NotInTransaction)),
            "after a raw {raw}: {result:?}"
        );
        assert_eq!(log.take(), Vec::<String>::new(), "after a raw {raw}");
        assert!(
            logs.contains("ERROR")
                && logs.contains("outcome is unknown")
                && logs.contains("hooks were discarded"),
            "the discarded levels are logged at ERROR: {logs}"
        );
        assert!(!conn.in_transaction());
        let expected: &[i32] = if raw == "COMMIT" { &[1] } else { &[] };
        assert_eq!(ids(&mut db.plain()), expected);
        // The wrapper is back in step: the next transaction fires normally.
        conn.transaction(|c| {
            c.on_commit(log.hook("next"));
            c.transaction(|c| {
                c.on_commit(log.hook("next savepoint"));
                Ok::<_, Error>(())
            })
        })
        .unwrap();
        assert_eq!(log.take(), ["next", "next savepoint"], "after a raw {raw}");
    }
}

// ---------------------------------------------------------------------------
// Ordinary Diesel through the wrapper.
// ---------------------------------------------------------------------------

#[test]
fn insert_returning_get_result_and_batch_insert_run_through_the_wrapper() {
    let db = PgSchema::new();
    let mut conn = db.conn();
    conn.batch_execute(CREATE_ITEMS).unwrap();
    let log = Log::new();
    conn.transaction(|c| {
        let returned: Item = diesel::insert_into(items::table)
            .values(Item::new(1))
            .returning(Item::as_returning())
            .get_result(c)?;
        assert_eq!(returned, Item::new(1));
        let id: i32 = diesel::insert_into(items::table)
            .values(Item::new(2))
            .returning(items::id)
            .get_result(c)?;
        assert_eq!(id, 2);
        let batch = vec![Item::new(3), Item::new(4), Item::new(5)];
        let n = diesel::insert_into(items::table)
            .values(&batch)
            .execute(c)?;
        assert_eq!(n, 3);
        let batch = vec![Item::new(6), Item::new(7)];
        let returned: Vec<i32> = diesel::insert_into(items::table)
            .values(&batch)
            .returning(items::id)
            .get_results(c)?;
        assert_eq!(returned, [6, 7]);
        c.on_commit(log.hook("committed"));
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(log.take(), ["committed"]);
    assert_eq!(ids(&mut db.plain()), [1, 2, 3, 4, 5, 6, 7]);
}

// COPY FROM: Diesel implements `ExecuteCopyFromDsl` per connection type; the
// wrapper forwards it and records the statement's outcome.

/// A row for `from_insertable`, which needs Diesel's
/// `treat_none_as_default_value = false`.
#[derive(Insertable)]
#[diesel(table_name = items, treat_none_as_default_value = false)]
struct CopiedItem {
    id: i32,
    name: String,
}

/// Two rows in CSV through `from_raw_data`.
fn copy_csv(conn: &mut DbConn, first: i32) -> QueryResult<usize> {
    diesel::copy_from(items::table)
        .from_raw_data(items::table, move |copy| {
            writeln!(copy, "{first},copied {first}").unwrap();
            writeln!(copy, "{},copied {}", first + 1, first + 1).unwrap();
            QueryResult::Ok(())
        })
        .with_format(diesel::pg::CopyFormat::Csv)
        .execute(conn)
}

#[test]
fn copy_from_runs_through_the_wrapper_and_fires_on_commit_after_commit() {
    let db = PgSchema::new();
    let mut conn = db.conn();
    conn.batch_execute(CREATE_ITEMS).unwrap();
    let log = Log::new();
    conn.transaction(|c| {
        let batch: Vec<_> = (1..=2)
            .map(|id| CopiedItem {
                id,
                name: format!("copied {id}"),
            })
            .collect();
        let n = diesel::copy_from(items::table)
            .from_insertable(&batch)
            .execute(c)?;
        assert_eq!(n, 2);
        assert_eq!(copy_csv(c, 3)?, 2);
        c.on_commit(log.hook("committed"));
        c.on_rollback(log.hook("never"));
        assert!(log.take().is_empty(), "nothing runs before COMMIT");
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(log.take(), ["committed"]);
    assert_eq!(ids(&mut db.plain()), [1, 2, 3, 4]);
}

#[test]
fn copy_from_rolled_back_leaves_no_rows_and_discards_on_commit() {
    let db = PgSchema::new();
    let mut conn = db.conn();
    conn.batch_execute(CREATE_ITEMS).unwrap();
    let log = Log::new();
    let r = conn.transaction(|c| {
        assert_eq!(copy_csv(c, 1)?, 2);
        c.on_commit(log.hook("never"));
        c.on_rollback(log.hook("rolled back"));
        Err::<(), _>(Error::RollbackTransaction)
    });
    assert!(matches!(r, Err(Error::RollbackTransaction)), "{r:?}");
    assert_eq!(log.take(), ["rolled back"]);
    assert_eq!(ids(&mut db.plain()), Vec::<i32>::new());
    // A COPY that fails (a duplicate key) aborts the transaction: a body
    // that swallows the error still gets the COPY's error from the commit
    // (rule 5.3), and only the on_rollback hook runs.
    conn.batch_execute("INSERT INTO items VALUES (7, 'seven')")
        .unwrap();
    let r = conn.transaction(|c| {
        c.on_commit(log.hook("never"));
        c.on_rollback(log.hook("rolled back after the failed COPY"));
        let copy = copy_csv(c, 6);
        assert!(copy.is_err(), "{copy:?}");
        Ok::<_, Error>(())
    });
    assert!(
        matches!(
            r,
            Err(Error::DatabaseError(DatabaseErrorKind::UniqueViolation, _))
        ),
        "{r:?}"
    );
    assert_eq!(log.take(), ["rolled back after the failed COPY"]);
    assert_eq!(ids(&mut db.plain()), [7]);
}

#[test]
fn load_load_iter_save_changes_and_sql_query_run_through_the_wrapper() {
    let db = PgSchema::new();
    let mut conn = db.conn();
    conn.batch_execute(CREATE_ITEMS).unwrap();
    let log = Log::new();
    conn.transaction(|c| {
        diesel::insert_into(items::table)
            .values(&vec![Item::new(1), Item::new(2), Item::new(3)])
            .execute(c)?;
        let all: Vec<Item> = items::table
            .order(items::id)
            .select(Item::as_select())
            .load(c)?;
        assert_eq!(all, [Item::new(1), Item::new(2), Item::new(3)]);
        let iterated: Vec<Item> = items::table
            .order(items::id)
            .load_iter::<Item, DefaultLoadingMode>(c)?
            .collect::<QueryResult<_>>()?;
        assert_eq!(iterated, all);
        let row_by_row: Vec<Item> = items::table
            .order(items::id)
            .load_iter::<Item, PgRowByRowLoadingMode>(c)?
            .collect::<QueryResult<_>>()?;
        assert_eq!(row_by_row, all);
        let changed = Item {
            id: 2,
            name: "renamed".into(),
        };
        let saved: Item = changed.save_changes(c)?;
        assert_eq!(saved, changed);
        let found: Item = items::table.find(2).first(c)?;
        assert_eq!(found.name, "renamed");
        let by_sql: Vec<Item> =
            diesel::sql_query("SELECT id, name FROM items WHERE id > $1 ORDER BY id")
                .bind::<diesel::sql_types::Integer, _>(1)
                .load(c)?;
        assert_eq!(by_sql, [changed.clone(), Item::new(3)]);
        let n = diesel::sql_query("DELETE FROM items WHERE id = 3").execute(c)?;
        assert_eq!(n, 1);
        c.on_commit(log.hook("committed"));
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(log.take(), ["committed"]);
    assert_eq!(ids(&mut db.plain()), [1, 2]);
}

mod migrations {
    use super::*;
    use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

    pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("tests/migrations_pg");

    diesel::table! {
        widgets (id) {
            id -> Int4,
            name -> Text,
            colour -> Text,
        }
    }

    #[test]
    fn migration_harness_runs_through_the_wrapper() {
        let db = PgSchema::new();
        let mut conn = db.conn();
        let log = Log::new();
        assert!(conn.has_pending_migration(MIGRATIONS).unwrap());
        // Inside a user transaction the migrations' own transactions are
        // savepoints; the hook fires once everything committed.
        let applied = conn
            .transaction(|c| {
                c.on_commit(log.hook("migrated"));
                let applied = c.run_pending_migrations(MIGRATIONS)?;
                assert!(log.get().is_empty());
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(applied.len())
            })
            .unwrap();
        assert_eq!(applied, 2);
        assert_eq!(log.take(), ["migrated"]);
        assert!(!conn.in_transaction());
        assert!(!conn.has_pending_migration(MIGRATIONS).unwrap());
        assert_eq!(conn.applied_migrations().unwrap().len(), 2);
        conn.transaction(|c| {
            diesel::insert_into(widgets::table)
                .values(widgets::name.eq("sprocket"))
                .execute(c)?;
            c.on_commit(log.hook("widget"));
            Ok::<_, Error>(())
        })
        .unwrap();
        assert_eq!(log.take(), ["widget"]);
        let colour: String = widgets::table
            .select(widgets::colour)
            .first(&mut conn)
            .unwrap();
        assert_eq!(colour, "grey");
        let reverted = conn.revert_all_migrations(MIGRATIONS).unwrap();
        assert_eq!(reverted.len(), 2);
        assert!(conn.has_pending_migration(MIGRATIONS).unwrap());
    }
}

mod custom_type {
    use super::*;
    use diesel::deserialize::{self, FromSql, FromSqlRow};
    use diesel::expression::AsExpression;
    use diesel::pg::PgValue;
    use diesel::serialize::{self, IsNull, Output, ToSql};
    use std::io::Write;

    #[derive(diesel::sql_types::SqlType, diesel::query_builder::QueryId)]
    #[diesel(postgres_type(name = "mood"))]
    pub struct MoodType;

    #[derive(Debug, Clone, Copy, PartialEq, AsExpression, FromSqlRow)]
    #[diesel(sql_type = MoodType)]
    pub enum Mood {
        Happy,
        Sad,
    }

    impl ToSql<MoodType, Pg> for Mood {
        fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
            out.write_all(match self {
                Mood::Happy => b"happy",
                Mood::Sad => b"sad",
            })?;
            Ok(IsNull::No)
        }
    }

    impl FromSql<MoodType, Pg> for Mood {
        fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
            match bytes.as_bytes() {
                b"happy" => Ok(Mood::Happy),
                b"sad" => Ok(Mood::Sad),
                other => Err(format!("unknown mood {:?}", String::from_utf8_lossy(other)).into()),
            }
        }
    }

    diesel::table! {
        use diesel::sql_types::*;
        use super::MoodType;

        people (id) {
            id -> Int4,
            mood -> MoodType,
        }
    }

    #[test]
    fn custom_enum_type_uses_the_metadata_cache_through_the_wrapper() {
        let db = PgSchema::new();
        let mut conn = db.conn();
        // The type lives in this test's schema: the lookup by name must
        // find it through the wrapper's connection (search_path).
        conn.batch_execute(
            "CREATE TYPE mood AS ENUM ('happy', 'sad');
             CREATE TABLE people (id INT4 PRIMARY KEY, mood mood NOT NULL);",
        )
        .unwrap();
        let log = Log::new();
        conn.transaction(|c| {
            let returned: Mood = diesel::insert_into(people::table)
                .values((people::id.eq(1), people::mood.eq(Mood::Happy)))
                .returning(people::mood)
                .get_result(c)?;
            assert_eq!(returned, Mood::Happy);
            // Second use: the type's OID now comes from the metadata cache.
            diesel::insert_into(people::table)
                .values(&vec![
                    (people::id.eq(2), people::mood.eq(Mood::Sad)),
                    (people::id.eq(3), people::mood.eq(Mood::Happy)),
                ])
                .execute(c)?;
            let happy: Vec<i32> = people::table
                .filter(people::mood.eq(Mood::Happy))
                .select(people::id)
                .order(people::id)
                .load(c)?;
            assert_eq!(happy, [1, 3]);
            c.on_commit(log.hook("committed"));
            Ok::<_, Error>(())
        })
        .unwrap();
        assert_eq!(log.take(), ["committed"]);
        let moods: Vec<Mood> = people::table
            .select(people::mood)
            .order(people::id)
            .load(&mut conn)
            .unwrap();
        assert_eq!(moods, [Mood::Happy, Mood::Sad, Mood::Happy]);
    }
}

// ---------------------------------------------------------------------------
// Pools (rule 7's pooled path).
// ---------------------------------------------------------------------------

#[cfg(feature = "r2d2")]
mod r2d2_pool {
    use super::*;
    use diesel::r2d2::{ConnectionManager, Pool, PooledConnection, TestCustomizer};

    type DbPool = Pool<ConnectionManager<DbConn>>;
    type Pooled = PooledConnection<ConnectionManager<DbConn>>;

    fn pool(db: &PgSchema) -> DbPool {
        Pool::builder()
            .max_size(1)
            .connection_timeout(Duration::from_secs(30))
            .build(ConnectionManager::new(db.url()))
            .expect("r2d2 pool")
    }

    /// The next checkout: what connection it is, and that no hook came
    /// along with it.
    fn next_checkout_is_clean(pool: &DbPool, log: &Log) -> i32 {
        let mut pooled = pool.get().expect("next checkout");
        let conn: &mut DbConn = &mut pooled;
        assert!(
            !conn.in_transaction(),
            "the next checkout is inside a transaction"
        );
        conn.transaction(|c| {
            c.on_commit(log.hook("next checkout committed"));
            Ok::<_, Error>(())
        })
        .unwrap();
        assert_eq!(
            log.take(),
            ["next checkout committed"],
            "a hook was carried into the next checkout"
        );
        backend_pid(conn)
    }

    #[test]
    fn r2d2_pool_of_hooked_connections_fires_hooks() {
        let db = PgSchema::new();
        let pool = pool(&db);
        let log = Log::new();
        let mut pooled = pool.get().unwrap();
        pooled.batch_execute(CREATE_ITEMS).unwrap();
        let conn: &mut DbConn = &mut pooled;
        conn.transaction(|c| {
            insert(c, 1)?;
            c.on_commit(log.hook("through the wrapper"));
            Ok::<_, Error>(())
        })
        .unwrap();
        assert_eq!(log.take(), ["through the wrapper"]);
        // Through the guard's own transaction manager: hooks still work.
        pooled
            .transaction(|p: &mut Pooled| {
                insert(p, 2)?;
                let c: &mut DbConn = p;
                c.on_commit(log.hook("through the guard"));
                c.transaction(|c| {
                    c.on_commit(log.hook("savepoint through the guard"));
                    Ok::<_, Error>(())
                })
            })
            .unwrap();
        assert_eq!(
            log.take(),
            ["through the guard", "savepoint through the guard"]
        );
        let rolled_back = pooled.transaction(|p: &mut Pooled| {
            insert(p, 3)?;
            let c: &mut DbConn = p;
            c.on_commit(log.hook("never"));
            c.on_rollback(log.hook("rolled back through the guard"));
            Err::<(), _>(Error::RollbackTransaction)
        });
        assert!(rolled_back.is_err());
        assert_eq!(log.take(), ["rolled back through the guard"]);
        // Rule 5.3 through the guard: a swallowed error fails the commit.
        let swallowed = pooled.transaction(|p: &mut Pooled| {
            insert(p, 4)?;
            let _ = insert(p, 1); // duplicate key, swallowed
            let c: &mut DbConn = p;
            c.on_commit(log.hook("never"));
            c.on_rollback(log.hook("aborted through the guard"));
            Ok::<_, Error>(())
        });
        assert_eq!(
            kind_and_message(&swallowed.unwrap_err()).0,
            DatabaseErrorKind::UniqueViolation
        );
        assert_eq!(log.take(), ["aborted through the guard"]);
        let conn: &mut DbConn = &mut pooled;
        assert!(!conn.in_transaction());
        drop(pooled);
        assert_eq!(ids(&mut db.plain()), [1, 2]);
    }

    #[test]
    fn r2d2_test_customizer_is_the_baseline() {
        let db = PgSchema::new();
        db.plain().batch_execute(CREATE_ITEMS).unwrap();
        let pool = Pool::builder()
            .max_size(1)
            .connection_timeout(Duration::from_secs(30))
            .connection_customizer(Box::new(TestCustomizer))
            .build(ConnectionManager::<DbConn>::new(db.url()))
            .unwrap();
        let log = Log::new();
        {
            let mut pooled = pool.get().unwrap();
            let conn: &mut DbConn = &mut pooled;
            assert!(
                !conn.in_transaction(),
                "TestCustomizer's transaction is the baseline"
            );
            conn.transaction(|c| {
                insert(c, 1)?;
                c.on_commit(log.hook("user commit"));
                Ok::<_, Error>(())
            })
            .unwrap();
            assert_eq!(log.take(), ["user commit"]);
            conn.on_commit(log.hook("at once"));
            assert_eq!(log.take(), ["at once"]);
            conn.on_rollback(log.hook("dropped at d == 0"));
        }
        {
            // Back from the pool: still the same test transaction.
            let mut pooled = pool.get().unwrap();
            let conn: &mut DbConn = &mut pooled;
            assert!(!conn.in_transaction());
            assert_eq!(ids(conn), [1]);
        }
        assert_eq!(
            ids(&mut db.plain()),
            Vec::<i32>::new(),
            "the test transaction is never committed"
        );
        drop(pool);
        assert_eq!(
            log.take(),
            Vec::<String>::new(),
            "nothing fires when the test transaction ends"
        );
        assert_eq!(ids(&mut db.plain()), Vec::<i32>::new());
    }

    #[test]
    fn r2d2_connection_given_back_mid_transaction_never_carries_a_hook() {
        let db = PgSchema::new();
        db.plain().batch_execute(CREATE_ITEMS).unwrap();
        let pool = pool(&db);
        let log = Log::new();
        let first_pid = next_checkout_is_clean(&pool, &log);

        // 1. A panic inside the wrapper's transaction on a pooled guard: the
        //    wrapper rolls back, the guard is given back clean and reused.
        let mut pooled = pool.get().unwrap();
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            let conn: &mut DbConn = &mut pooled;
            conn.transaction(|c| -> QueryResult<()> {
                insert(c, 1)?;
                c.on_commit(log.hook("never 1"));
                c.on_rollback(log.hook("rolled back 1"));
                panic!("boom 1")
            })
        }));
        assert!(panicked.is_err());
        assert_eq!(log.take(), ["rolled back 1"]);
        drop(pooled);
        assert_eq!(
            next_checkout_is_clean(&pool, &log),
            first_pid,
            "a clean connection is reused"
        );

        // 2. A panic inside the guard's own `transaction` (no panic guard):
        //    the guard is dropped while unwinding, r2d2 discards the
        //    connection, its on_rollback hooks run.
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            let mut pooled = pool.get().unwrap();
            pooled.transaction(|p: &mut Pooled| -> QueryResult<()> {
                insert(p, 2)?;
                let c: &mut DbConn = p;
                c.on_commit(log.hook("never 2"));
                c.on_rollback(log.hook("rolled back 2"));
                panic!("boom 2")
            })
        }));
        assert!(panicked.is_err());
        assert_eq!(log.take(), ["rolled back 2"]);
        let second_pid = next_checkout_is_clean(&pool, &log);
        assert_ne!(
            second_pid, first_pid,
            "a connection given back mid-transaction was reused"
        );

        // 3. The same panic caught while the guard is still alive, then the
        //    guard given back normally: the open level makes it broken.
        let mut pooled = pool.get().unwrap();
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            pooled.transaction(|p: &mut Pooled| -> QueryResult<()> {
                let c: &mut DbConn = p;
                c.on_commit(log.hook("never 3"));
                c.on_rollback(log.hook("rolled back 3"));
                panic!("boom 3")
            })
        }));
        assert!(panicked.is_err());
        assert!(
            log.get().is_empty(),
            "the level is still open until the guard is given back"
        );
        drop(pooled);
        assert_eq!(log.take(), ["rolled back 3"]);
        let third_pid = next_checkout_is_clean(&pool, &log);
        assert_ne!(third_pid, second_pid);

        // 4. A guard dropped with a transaction begun through the
        //    TransactionManager and hooks queued.
        let mut pooled = pool.get().unwrap();
        <Pooled as Connection>::TransactionManager::begin_transaction(&mut pooled).unwrap();
        insert(&mut pooled, 4).unwrap();
        let conn: &mut DbConn = &mut pooled;
        conn.on_commit(log.hook("never 4"));
        conn.on_rollback(log.hook("rolled back 4"));
        drop(pooled);
        assert_eq!(log.take(), ["rolled back 4"]);
        let fourth_pid = next_checkout_is_clean(&pool, &log);
        assert_ne!(fourth_pid, third_pid);

        assert_eq!(
            ids(&mut db.plain()),
            Vec::<i32>::new(),
            "no work given back mid-transaction committed"
        );
    }
}

mod deadpool_pool {
    use super::*;
    use deadpool_diesel::{Manager, Pool, Runtime};

    type DbPool = Pool<Manager<DbConn>>;

    fn pool(db: &PgSchema) -> DbPool {
        let manager = Manager::<DbConn>::new(db.url(), Runtime::Tokio1);
        Pool::builder(manager)
            .max_size(1)
            .build()
            .expect("deadpool pool")
    }

    /// The next checkout carries no hook; returns its backend pid.
    async fn next_checkout_is_clean(pool: &DbPool, log: &Log) -> i32 {
        let object = pool.get().await.expect("next checkout");
        let log = log.clone();
        object
            .interact(move |conn: &mut DbConn| {
                assert!(
                    !conn.in_transaction(),
                    "the next checkout is inside a transaction"
                );
                conn.transaction(|c| {
                    c.on_commit(log.hook("next checkout committed"));
                    Ok::<_, Error>(())
                })
                .unwrap();
                assert_eq!(
                    log.take(),
                    ["next checkout committed"],
                    "a hook was carried into the next checkout"
                );
                backend_pid(conn)
            })
            .await
            .expect("interact")
    }

    #[tokio::test]
    async fn deadpool_pool_of_hooked_connections_fires_hooks() {
        let db = PgSchema::new();
        let pool = pool(&db);
        let log = Log::new();
        let object = pool.get().await.unwrap();
        let hook_log = log.clone();
        object
            .interact(move |conn: &mut DbConn| {
                conn.batch_execute(CREATE_ITEMS)?;
                conn.transaction(|c| {
                    insert(c, 1)?;
                    c.on_commit(hook_log.hook("committed"));
                    c.transaction(|c| {
                        c.on_commit(hook_log.hook("savepoint"));
                        Ok::<_, Error>(())
                    })
                })
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(log.take(), ["committed", "savepoint"]);
        drop(object);
        assert_eq!(ids(&mut db.plain()), [1]);
    }

    #[tokio::test]
    async fn deadpool_connection_given_back_mid_transaction_never_carries_a_hook() {
        let db = PgSchema::new();
        db.plain().batch_execute(CREATE_ITEMS).unwrap();
        let pool = pool(&db);
        let log = Log::new();
        let (tx, rx) = mpsc::channel();
        let first_pid = next_checkout_is_clean(&pool, &log).await;

        // 1. A panic inside the wrapper's transaction: rolled back at once;
        //    deadpool then discards the connection (its mutex is poisoned).
        let object = pool.get().await.unwrap();
        let (hook_log, hook_tx) = (log.clone(), tx.clone());
        let panicked = object
            .interact(move |conn: &mut DbConn| {
                conn.transaction(|c| -> QueryResult<()> {
                    insert(c, 1)?;
                    c.on_commit(hook_log.hook("never 1"));
                    c.on_rollback(signal(&hook_tx, "rolled back 1"));
                    panic!("boom 1")
                })
            })
            .await;
        assert!(panicked.is_err());
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(30)),
            Ok("rolled back 1")
        );
        drop(object);
        let second_pid = next_checkout_is_clean(&pool, &log).await;
        assert_ne!(second_pid, first_pid);

        // 2. A panic inside a transaction begun through the
        //    TransactionManager: nothing rolls back until deadpool drops the
        //    poisoned connection; then its on_rollback hooks run.
        let object = pool.get().await.unwrap();
        let (hook_log, hook_tx) = (log.clone(), tx.clone());
        let panicked = object
            .interact(move |conn: &mut DbConn| {
                <DbConn as Connection>::TransactionManager::begin_transaction(conn).unwrap();
                insert(conn, 2).unwrap();
                conn.on_commit(hook_log.hook("never 2"));
                conn.on_rollback(signal(&hook_tx, "rolled back 2"));
                panic!("boom 2")
            })
            .await;
        assert!(panicked.is_err());
        drop(object);
        let third_pid = next_checkout_is_clean(&pool, &log).await;
        assert_ne!(third_pid, second_pid);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(30)),
            Ok("rolled back 2")
        );

        // 3. A guard given back (no panic) with a transaction begun through
        //    the TransactionManager: recycling finds it broken, replaces it.
        let object = pool.get().await.unwrap();
        let (hook_log, hook_tx) = (log.clone(), tx.clone());
        object
            .interact(move |conn: &mut DbConn| {
                <DbConn as Connection>::TransactionManager::begin_transaction(conn).unwrap();
                insert(conn, 3).unwrap();
                conn.on_commit(hook_log.hook("never 3"));
                conn.on_rollback(signal(&hook_tx, "rolled back 3"));
            })
            .await
            .unwrap();
        drop(object);
        let fourth_pid = next_checkout_is_clean(&pool, &log).await;
        assert_ne!(
            fourth_pid, third_pid,
            "a connection given back mid-transaction was reused"
        );
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(30)),
            Ok("rolled back 3")
        );

        assert!(rx.try_recv().is_err(), "an on_rollback hook ran twice");
        assert!(
            log.take().is_empty(),
            "an on_commit hook ran: {:?}",
            log.get()
        );
        assert_eq!(ids(&mut db.plain()), Vec::<i32>::new());
    }
}
