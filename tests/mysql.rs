//! MySQL / MariaDB: the rules that only MySQL shows, on a real server; the
//! rules that read the same on PostgreSQL are written once in
//! tests/backend_rules/ and stamped out here.
//!
//! Needs `MYSQL_DATABASE_URL` (see `tests/common/mod.rs`); `bash .ci/run`
//! starts the server and sets it. Each test works in a database of its own
//! (`MysqlDb`), so the tests can run in parallel on one server. MySQL has no
//! deferred constraints and no `RETURNING`, and a failed statement does not
//! abort the transaction (unlike PostgreSQL); a deadlock does, and Diesel
//! reports it as `SerializationFailure`.
#![cfg(feature = "mysql")]

mod backend_rules;
mod common;
#[cfg(feature = "outbox")]
mod outbox_rules;

use std::sync::Barrier;
use std::time::{Duration, Instant};

use backend_rules::{items, kind_and_message, Item, TestDb};
use common::{Log, MysqlDb};
use diesel::connection::{DefaultLoadingMode, LoadConnection, SimpleConnection};
use diesel::mysql::Mysql;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error};
use diesel_on_commit::HookedConnection;

type DbConn = HookedConnection<MysqlConnection>;

const CREATE_ITEMS: &str =
    "CREATE TABLE items (id INTEGER PRIMARY KEY, name VARCHAR(255) NOT NULL) ENGINE=InnoDB";

fn insert<C: Connection<Backend = Mysql>>(conn: &mut C, id: i32) -> QueryResult<usize> {
    diesel::insert_into(items::table)
        .values(Item::new(id))
        .execute(conn)
}

fn ids<C: Connection<Backend = Mysql> + LoadConnection>(conn: &mut C) -> Vec<i32> {
    items::table
        .select(items::id)
        .order(items::id)
        .load(conn)
        .expect("SELECT id FROM items")
}

fn connection_id<C: Connection<Backend = Mysql> + LoadConnection>(conn: &mut C) -> u64 {
    diesel::select(diesel::dsl::sql::<
        diesel::sql_types::Unsigned<diesel::sql_types::BigInt>,
    >("CONNECTION_ID()"))
    .get_result(conn)
    .expect("SELECT CONNECTION_ID()")
}

/// Kills connection `id` from another connection and waits until the server
/// no longer lists it.
fn kill(killer: &mut MysqlConnection, id: u64) {
    killer.batch_execute(&format!("KILL {id}")).expect("KILL");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let listed: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(&format!(
            "(SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {id})"
        )))
        .get_result(killer)
        .expect("PROCESSLIST");
        if listed == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "connection {id} still listed 20s after KILL"
        );
        std::thread::sleep(Duration::from_millis(20)); // polling the server's state
    }
}

impl TestDb for MysqlConnection {
    type Db = MysqlDb;
    const CREATE_ITEMS: &'static str = CREATE_ITEMS;
    const KILLED: &'static str = "killed connection";

    fn db() -> MysqlDb {
        MysqlDb::new()
    }
    fn conn(db: &MysqlDb) -> DbConn {
        db.conn()
    }
    fn plain(db: &MysqlDb) -> Self {
        db.plain()
    }
    fn session_id(conn: &mut DbConn) -> u64 {
        connection_id(conn)
    }
    fn kill(killer: &mut Self, id: u64) {
        kill(killer, id)
    }
    fn insert<C: Connection<Backend = Mysql>>(conn: &mut C, id: i32) -> QueryResult<usize> {
        insert(conn, id)
    }
    fn ids<C: Connection<Backend = Mysql> + LoadConnection>(conn: &mut C) -> Vec<i32> {
        ids(conn)
    }
}

// The rules that read the same on PostgreSQL (tests/backend_rules/).
backend_rules::rule_tests!(MysqlConnection);

// Outbox hooks (tests/outbox_rules/), in this test's database.
#[cfg(feature = "outbox")]
mod outbox_mysql {
    use super::*;
    use diesel_on_commit::outbox::Outbox;

    #[derive(QueryableByName)]
    struct Ms {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        ms: i64,
    }

    impl crate::outbox_rules::OutboxDb for MysqlConnection {
        type Guard = MysqlDb;
        const MAX_ROWS: usize = 65_535 / 5;
        const BREAK_FLUSH: &'static str = "
            CREATE TABLE guard (x INT PRIMARY KEY);
            INSERT INTO guard VALUES (1);
            CREATE TRIGGER break_flush BEFORE INSERT ON diesel_on_commit_outbox
                FOR EACH ROW BEGIN
                    IF NEW.kind = 'test.bad' THEN INSERT INTO guard VALUES (1); END IF;
                END;";

        fn fresh() -> (MysqlDb, DbConn) {
            let db = MysqlDb::new();
            let mut conn = db.conn();
            Outbox::run_migrations(&mut conn).unwrap();
            conn.batch_execute("CREATE TABLE items (id INT PRIMARY KEY)")
                .unwrap();
            (db, conn)
        }
        fn connect(db: &MysqlDb) -> DbConn {
            db.conn()
        }
        fn due_in_ms(conn: &mut DbConn) -> Vec<i64> {
            diesel::sql_query(
                "SELECT CAST(TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), run_at) DIV 1000 AS SIGNED) \
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
            diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>("DATABASE()"))
                .get_result(conn)
                .unwrap()
        }
    }

    crate::outbox_rules::outbox_tests!(MysqlConnection);
}

// ---------------------------------------------------------------------------
// Rule 5.3 on MySQL: a statement error does not abort the transaction; a
// deadlock does.
// ---------------------------------------------------------------------------

#[test]
fn swallowed_statement_error_does_not_abort_a_mysql_transaction() {
    // Unlike PostgreSQL, MySQL only undoes the failed statement: the
    // transaction commits and its hooks fire.
    let db = MysqlDb::new();
    let mut conn = db.conn();
    conn.batch_execute(CREATE_ITEMS).unwrap();
    insert(&mut conn, 1).unwrap();
    let log = Log::new();
    conn.transaction(|c| {
        c.on_commit(log.hook("committed"));
        c.on_rollback(log.hook("rolled back"));
        insert(c, 2)?;
        let swallowed = insert(c, 1).expect_err("duplicate key");
        assert_eq!(
            kind_and_message(&swallowed).0,
            DatabaseErrorKind::UniqueViolation
        );
        insert(c, 3)?;
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(log.take(), ["committed"]);
    assert_eq!(ids(&mut db.plain()), [1, 2, 3]);
}

struct Transfer {
    second_update: QueryResult<usize>,
    result: QueryResult<()>,
    hooks: Vec<String>,
}

/// Where the second, deadlocking update runs.
#[derive(Clone, Copy)]
enum Second {
    /// In the transaction itself; its error is swallowed.
    Swallowed,
    /// In a savepoint that propagates the error with `?`; the enclosing
    /// transaction swallows the savepoint's error and goes on.
    InSavepoint,
}

/// Updates row `first`, waits for the other thread to have updated its
/// first row, then updates row `second` (see [`Second`]).
fn transfer(db: &MysqlDb, barrier: &Barrier, first: i32, second: i32, how: Second) -> Transfer {
    let mut conn = db.conn();
    let log = Log::new();
    let mut second_update = None;
    let bump = |c: &mut DbConn, id: i32| {
        diesel::sql_query("UPDATE accounts SET balance = balance + 1 WHERE id = ?")
            .bind::<diesel::sql_types::Integer, _>(id)
            .execute(c)
    };
    let result = conn.transaction(|c| {
        c.on_commit(log.hook("committed"));
        c.on_rollback(log.hook("rolled back"));
        bump(c, first)?;
        barrier.wait();
        second_update = Some(match how {
            Second::Swallowed => bump(c, second),
            Second::InSavepoint => c.transaction(|c| {
                c.on_commit(log.hook("savepoint committed"));
                c.on_rollback(log.hook("savepoint rolled back"));
                bump(c, second)
            }),
        });
        Ok::<_, Error>(())
    });
    Transfer {
        second_update: second_update.expect("the body ran to its end"),
        result,
        hooks: log.take(),
    }
}

/// Two transactions lock two rows in opposite orders: InnoDB detects the
/// deadlock at once and rolls one of them back entirely. Returns the victim
/// and the winner, after checking the database kept only the winner's work.
fn deadlock(how: Second) -> (Transfer, Transfer) {
    let db = MysqlDb::new();
    db.plain()
        .batch_execute(
            "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL) ENGINE=InnoDB;
             INSERT INTO accounts VALUES (1, 0), (2, 0);",
        )
        .unwrap();
    let barrier = Barrier::new(2);
    let [a, b] = std::thread::scope(|s| {
        let a = s.spawn(|| transfer(&db, &barrier, 1, 2, how));
        let b = s.spawn(|| transfer(&db, &barrier, 2, 1, how));
        [a.join().unwrap(), b.join().unwrap()]
    });
    let (victim, winner) = match (&a.second_update, &b.second_update) {
        (Err(_), Ok(_)) => (a, b),
        (Ok(_), Err(_)) => (b, a),
        other => panic!("expected exactly one deadlock victim, got {other:?}"),
    };
    let balances: Vec<(i32, i32)> =
        diesel::sql_query("SELECT id AS n, balance AS m FROM accounts ORDER BY id")
            .load::<Pair>(&mut db.plain())
            .unwrap()
            .into_iter()
            .map(|p| (p.n, p.m))
            .collect();
    assert_eq!(
        balances,
        [(1, 1), (2, 1)],
        "only the winner's two updates committed"
    );
    (victim, winner)
}

#[test]
fn swallowed_deadlock_fails_the_commit_as_serialization_failure() {
    // The victim's body swallows the deadlock; the wrapper must not report
    // Ok, and must say SerializationFailure so that callers retry.
    let (victim, winner) = deadlock(Second::Swallowed);
    let deadlock = kind_and_message(victim.second_update.as_ref().unwrap_err());
    assert_eq!(
        deadlock.0,
        DatabaseErrorKind::SerializationFailure,
        "{deadlock:?}"
    );
    let error = victim
        .result
        .expect_err("transaction() returned Ok for a transaction InnoDB rolled back");
    assert_eq!(kind_and_message(&error), deadlock);
    assert_eq!(victim.hooks, ["rolled back"]);
    assert!(winner.result.is_ok(), "{:?}", winner.result);
    assert_eq!(winner.hooks, ["committed"]);
}

#[test]
fn deadlock_in_a_savepoint_fails_the_outermost_commit_even_when_swallowed() {
    // InnoDB rolls back the whole transaction, not just the savepoint: the
    // enclosing transaction that swallows the savepoint's error must not
    // commit (rule 5.3), and no on_commit hook of either level runs.
    let (victim, winner) = deadlock(Second::InSavepoint);
    let deadlock = kind_and_message(victim.second_update.as_ref().unwrap_err());
    assert_eq!(
        deadlock.0,
        DatabaseErrorKind::SerializationFailure,
        "{deadlock:?}"
    );
    assert!(
        victim.result.is_err(),
        "transaction() returned Ok for a transaction InnoDB rolled back"
    );
    assert_eq!(victim.hooks, ["savepoint rolled back", "rolled back"]);
    assert!(winner.result.is_ok(), "{:?}", winner.result);
    assert_eq!(winner.hooks, ["committed", "savepoint committed"]);
}

#[test]
fn deadlock_in_a_savepoint_is_reported_as_serialization_failure_when_swallowed() {
    // Rule 5.3: the error that aborted the transaction passed through the
    // wrapper, so the outermost commit must return its kind and message
    // (a swallowed serialization failure can still be retried).
    let (victim, _winner) = deadlock(Second::InSavepoint);
    let deadlock = kind_and_message(victim.second_update.as_ref().unwrap_err());
    let error = victim
        .result
        .expect_err("the victim's transaction must fail");
    assert_eq!(kind_and_message(&error), deadlock);
}

#[derive(QueryableByName)]
struct Pair {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    n: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    m: i32,
}

// ---------------------------------------------------------------------------
// Ordinary Diesel through the wrapper (no RETURNING on MySQL).
// ---------------------------------------------------------------------------

#[test]
fn insert_batch_insert_load_load_iter_save_changes_and_sql_query_run_through_the_wrapper() {
    let db = MysqlDb::new();
    let mut conn = db.conn();
    conn.batch_execute(CREATE_ITEMS).unwrap();
    let log = Log::new();
    conn.transaction(|c| {
        assert_eq!(insert(c, 1)?, 1);
        let batch = vec![Item::new(2), Item::new(3), Item::new(4)];
        assert_eq!(
            diesel::insert_into(items::table)
                .values(&batch)
                .execute(c)?,
            3
        );
        let all: Vec<Item> = items::table
            .order(items::id)
            .select(Item::as_select())
            .load(c)?;
        assert_eq!(
            all,
            [Item::new(1), Item::new(2), Item::new(3), Item::new(4)]
        );
        let first: Item = items::table.order(items::id).first(c)?;
        assert_eq!(first, Item::new(1));
        let iterated: Vec<Item> = items::table
            .order(items::id)
            .load_iter::<Item, DefaultLoadingMode>(c)?
            .collect::<QueryResult<_>>()?;
        assert_eq!(iterated, all);
        let changed = Item {
            id: 2,
            name: "renamed".into(),
        };
        let saved: Item = changed.save_changes(c)?;
        assert_eq!(saved, changed);
        let by_sql: Vec<Item> =
            diesel::sql_query("SELECT id, name FROM items WHERE id > ? ORDER BY id")
                .bind::<diesel::sql_types::Integer, _>(2)
                .load(c)?;
        assert_eq!(by_sql, [Item::new(3), Item::new(4)]);
        assert_eq!(
            diesel::sql_query("DELETE FROM items WHERE id = 4").execute(c)?,
            1
        );
        c.on_commit(log.hook("committed"));
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(log.take(), ["committed"]);
    assert_eq!(ids(&mut db.plain()), [1, 2, 3]);
}

mod migrations {
    use super::*;
    use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

    pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("tests/migrations_mysql");

    diesel::table! {
        widgets (id) {
            id -> Integer,
            name -> Text,
            colour -> Varchar,
        }
    }

    #[test]
    fn migration_harness_runs_through_the_wrapper() {
        // MySQL commits DDL implicitly, so the migrations run at d == 0 (not
        // inside a user transaction as on PostgreSQL).
        let db = MysqlDb::new();
        let mut conn = db.conn();
        let log = Log::new();
        assert!(conn.has_pending_migration(MIGRATIONS).unwrap());
        let applied = conn.run_pending_migrations(MIGRATIONS).unwrap();
        assert_eq!(applied.len(), 2);
        assert!(!conn.in_transaction());
        assert!(!conn.has_pending_migration(MIGRATIONS).unwrap());
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
        assert_eq!(conn.revert_all_migrations(MIGRATIONS).unwrap().len(), 2);
        assert!(conn.has_pending_migration(MIGRATIONS).unwrap());
    }
}

// ---------------------------------------------------------------------------
// Pools.
// ---------------------------------------------------------------------------

#[cfg(feature = "r2d2")]
#[test]
fn r2d2_pool_of_hooked_mysql_connections_fires_hooks_and_carries_none_to_the_next_checkout() {
    use diesel::connection::TransactionManager;
    use diesel::r2d2::{ConnectionManager, Pool, PooledConnection};
    type Pooled = PooledConnection<ConnectionManager<DbConn>>;

    let db = MysqlDb::new();
    db.plain().batch_execute(CREATE_ITEMS).unwrap();
    let pool = Pool::builder()
        .max_size(1)
        .connection_timeout(Duration::from_secs(30))
        .build(ConnectionManager::<DbConn>::new(db.url()))
        .unwrap();
    let log = Log::new();

    let mut pooled = pool.get().unwrap();
    let first_id = connection_id(&mut pooled);
    let conn: &mut DbConn = &mut pooled;
    conn.transaction(|c| {
        insert(c, 1)?;
        c.on_commit(log.hook("committed"));
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(log.take(), ["committed"]);

    // Given back with a level open and hooks queued.
    <Pooled as Connection>::TransactionManager::begin_transaction(&mut pooled).unwrap();
    insert(&mut pooled, 2).unwrap();
    let conn: &mut DbConn = &mut pooled;
    conn.on_commit(log.hook("never"));
    conn.on_rollback(log.hook("rolled back"));
    drop(pooled);
    assert_eq!(log.take(), ["rolled back"]);

    let mut pooled = pool.get().unwrap();
    assert_ne!(
        connection_id(&mut pooled),
        first_id,
        "a connection given back mid-transaction was reused"
    );
    let conn: &mut DbConn = &mut pooled;
    assert!(!conn.in_transaction());
    conn.transaction(|c| {
        c.on_commit(log.hook("next checkout"));
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(log.take(), ["next checkout"]);
    drop(pooled);
    assert_eq!(ids(&mut db.plain()), [1]);
}
