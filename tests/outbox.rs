//! Outbox hooks on SQLite (CONTRACT.md, O1, O2, O5, O6, O9, O11): the rules
//! written once in tests/outbox_rules/ (also stamped out in
//! tests/postgres.rs and tests/mysql.rs), on a file database of the test's
//! own, plus what only SQLite shows.
#![cfg(all(feature = "sqlite", feature = "outbox"))]

mod common;
mod outbox_rules;

use std::path::PathBuf;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sqlite::Sqlite;
use diesel_on_commit::outbox::{Outbox, OutboxAdmin, OutboxTable};
use diesel_on_commit::HookedConnection;
use outbox_rules::{Email, OutboxDb};

/// A SQLite file of one test's own, removed at the end.
pub struct TempDb(PathBuf);

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-journal", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

#[derive(QueryableByName)]
struct Ms {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    ms: i64,
}

impl OutboxDb for SqliteConnection {
    type Guard = TempDb;
    const MAX_ROWS: usize = 32_766 / 5;
    const BREAK_FLUSH: &'static str = "
        CREATE TABLE guard (x INTEGER PRIMARY KEY);
        INSERT INTO guard VALUES (1);
        CREATE TRIGGER break_flush BEFORE INSERT ON diesel_on_commit_outbox
        WHEN NEW.kind = 'test.bad'
        BEGIN INSERT INTO guard VALUES (1); END;";

    fn fresh() -> (TempDb, HookedConnection<Self>) {
        let path = std::env::temp_dir().join(format!("{}.sqlite", common::unique("outbox")));
        let db = TempDb(path);
        let mut conn = Self::connect(&db);
        Outbox::run_migrations(&mut conn).unwrap();
        conn.batch_execute("CREATE TABLE items (id INTEGER PRIMARY KEY)")
            .unwrap();
        (db, conn)
    }

    fn connect(db: &TempDb) -> HookedConnection<Self> {
        let mut conn = HookedConnection::<Self>::establish(db.0.to_str().unwrap()).unwrap();
        conn.batch_execute("PRAGMA busy_timeout = 5000").unwrap();
        conn
    }

    fn due_in_ms(conn: &mut HookedConnection<Self>) -> Vec<i64> {
        diesel::sql_query(
            "SELECT run_at - CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER) \
             AS ms FROM diesel_on_commit_outbox ORDER BY id",
        )
        .load::<Ms>(conn)
        .unwrap()
        .into_iter()
        .map(|m| m.ms)
        .collect()
    }

    fn items(conn: &mut HookedConnection<Self>) -> i64 {
        diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
            "(SELECT COUNT(*) FROM items)",
        ))
        .get_result(conn)
        .unwrap()
    }

    fn own_schema(_conn: &mut HookedConnection<Self>) -> String {
        "main".into()
    }
}

outbox_rules::outbox_tests!(SqliteConnection);

// ---------------------------------------------------------------------------
// SQLite only.
// ---------------------------------------------------------------------------

/// On SQLite the schema of `schema.name` is an attached database; its
/// indexes are named in that schema and built on the bare table name.
#[test]
fn an_attached_database_holds_a_custom_outbox() {
    let mut conn = common::sqlite();
    conn.batch_execute("ATTACH DATABASE ':memory:' AS jobs")
        .unwrap();
    let table = OutboxTable::new("jobs.outbox").unwrap();
    Outbox::run_migrations_in(&mut conn, &table).unwrap();
    assert_eq!(Outbox::schema_version(&mut conn, &table).unwrap(), Some(1));
    assert_eq!(
        Outbox::schema_version(&mut conn, &OutboxTable::default()).unwrap(),
        None
    );
    conn.on_commit_outbox_opts(
        Email { to: "x".into() },
        diesel_on_commit::outbox::OutboxOptions::new().table(table.clone()),
    )
    .unwrap();
    assert_eq!(OutboxAdmin::rows_in(&mut conn, &table).unwrap().len(), 1);
    let sql = Outbox::migration_sql::<Sqlite>(&table);
    assert!(
        sql.contains(r#"CREATE UNIQUE INDEX "jobs"."outbox_dedupe" ON "outbox""#),
        "{sql}"
    );
}

/// The SQL files users copy are the ones the embedded runner runs: with
/// the default name, the substituted text is the file itself.
#[test]
fn the_embedded_migration_is_the_shipped_file() {
    let file = include_str!(
        "../on_commit_core/migrations/outbox/sqlite/2026-12-01-000000_diesel_on_commit_outbox/up.sql"
    );
    assert_eq!(
        Outbox::migration_sql::<Sqlite>(&OutboxTable::default()),
        file
    );
    // And the down migration undoes it.
    let mut conn = common::sqlite();
    Outbox::run_migrations(&mut conn).unwrap();
    conn.batch_execute(include_str!(
        "../on_commit_core/migrations/outbox/sqlite/2026-12-01-000000_diesel_on_commit_outbox/down.sql"
    ))
    .unwrap();
    assert_eq!(
        Outbox::schema_version(&mut conn, &OutboxTable::default()).unwrap(),
        None
    );
}

/// A registration in a transaction the wrapper did not open panics (rule 8).
#[test]
fn registering_in_a_foreign_transaction_panics() {
    let mut conn = common::sqlite();
    Outbox::run_migrations(&mut conn).unwrap();
    use diesel::connection::TransactionManager;
    <SqliteConnection as Connection>::TransactionManager::begin_transaction(conn.inner_mut())
        .unwrap();
    let message = common::expect_panic(|| conn.on_commit_outbox(Email { to: "x".into() }));
    assert!(message.contains("did not open"), "{message}");
}
