//! `#[atomic]`'s transaction options: `immediate` and `retry = N`
//! on SQLite; `isolation`, `read_only` and `deferrable` on PostgreSQL and
//! MySQL (features `postgres`, `mysql`). The options a backend lacks are
//! compile errors: `tests/ui/atomic_option_*.rs`, `tests/ui/backends/`.
#![cfg(feature = "sqlite")]

mod common;

use std::cell::Cell;
use std::time::Duration;

use common::{capture_logs, expect_panic, sqlite, unique, Log};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error, QueryResult};
use diesel_on_commit::prelude::*;
use diesel_on_commit::Retryable;

type DbConn = HookedConnection<SqliteConnection>;

fn serialization_failure() -> Error {
    Error::DatabaseError(
        DatabaseErrorKind::SerializationFailure,
        Box::new(String::from("could not serialize access (simulated)")),
    )
}

fn db() -> DbConn {
    let mut conn = sqlite();
    conn.batch_execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        .unwrap();
    conn
}

fn order_ids<C>(conn: &mut C) -> Vec<i32>
where
    C: Connection<Backend = diesel::sqlite::Sqlite> + diesel::connection::LoadConnection,
{
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        id: i32,
    }
    diesel::sql_query("SELECT id FROM orders ORDER BY id")
        .load::<Row>(conn)
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect()
}

fn insert(conn: &mut DbConn, id: u32) -> QueryResult<usize> {
    diesel::sql_query(format!("INSERT INTO orders (id) VALUES ({id})")).execute(conn)
}

/// A SQLite database file of its own, removed at the end.
struct DbFile(std::path::PathBuf);

impl DbFile {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("{}.sqlite", unique("macros_options")));
        let file = Self(path);
        let mut conn = file.plain();
        conn.batch_execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
            .unwrap();
        file
    }

    fn url(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }

    /// A plain connection that fails at once on a locked database.
    fn plain(&self) -> SqliteConnection {
        let mut conn = SqliteConnection::establish(&self.url()).unwrap();
        conn.batch_execute("PRAGMA busy_timeout = 0").unwrap();
        conn
    }

    fn conn(&self) -> DbConn {
        HookedConnection::new(self.plain())
    }
}

impl Drop for DbFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// ---------------------------------------------------------------------------
// immediate (SQLite)

/// Whether another connection could take the write lock right now.
fn other_can_write(other: &mut SqliteConnection) -> bool {
    match other.batch_execute("BEGIN IMMEDIATE") {
        Ok(()) => {
            other.batch_execute("ROLLBACK").unwrap();
            true
        }
        Err(e) => {
            assert!(e.to_string().contains("database is locked"), "{e}");
            false
        }
    }
}

#[atomic(immediate)]
fn immediate_order(
    conn: &mut DbConn,
    other: &mut SqliteConnection,
    log: &Log,
    id: u32,
) -> QueryResult<bool> {
    // Before any statement of this transaction: the write lock is held.
    let other_could_write = other_can_write(other);
    insert(conn, id)?;
    conn.on_commit(log.hook("committed"));
    Ok(other_could_write)
}

#[atomic]
fn deferred_order(
    conn: &mut DbConn,
    other: &mut SqliteConnection,
    log: &Log,
    id: u32,
) -> QueryResult<bool> {
    let other_could_write = other_can_write(other);
    insert(conn, id)?;
    conn.on_commit(log.hook("committed"));
    Ok(other_could_write)
}

#[test]
fn immediate_takes_the_write_lock_at_begin_and_commits_with_hooks() {
    let file = DbFile::new();
    let mut conn = file.conn();
    let mut other = file.plain();
    let log = Log::new();

    // Without the option, BEGIN is deferred: nothing is locked yet.
    assert_eq!(deferred_order(&mut conn, &mut other, &log, 1), Ok(true));
    assert_eq!(log.take(), ["committed"]);

    assert_eq!(immediate_order(&mut conn, &mut other, &log, 2), Ok(false));
    assert_eq!(log.take(), ["committed"]);
    assert_eq!(order_ids(&mut other), [1, 2]);
    assert!(other_can_write(&mut other), "the lock went with the COMMIT");
}

#[test]
fn immediate_rolls_back_on_err_and_drops_the_hooks() {
    let file = DbFile::new();
    let mut conn = file.conn();
    let mut other = file.plain();
    let log = Log::new();
    immediate_order(&mut conn, &mut other, &log, 1).unwrap();
    log.take();
    // Duplicate key: the statement fails, `?` returns, the level rolls back.
    let r = immediate_order(&mut conn, &mut other, &log, 1);
    assert!(
        matches!(
            r,
            Err(Error::DatabaseError(DatabaseErrorKind::UniqueViolation, _))
        ),
        "{r:?}"
    );
    assert!(log.get().is_empty());
    assert!(!conn.in_transaction());
    assert!(other_can_write(&mut other));
}

#[test]
fn immediate_retries_sqlite_busy_until_the_lock_is_free() {
    #[atomic(immediate, retry = RetryPolicy::attempts(200).backoff(Duration::from_millis(2), Duration::from_millis(10)))]
    fn reserve(conn: &mut DbConn, log: &Log, runs: &Cell<u32>) -> QueryResult<()> {
        runs.set(runs.get() + 1);
        insert(conn, 7)?;
        conn.on_commit(log.hook("reserved"));
        Ok(())
    }

    let file = DbFile::new();
    let mut holder = file.plain();
    // The holder waits out the other side's brief SHARED lock at COMMIT:
    // only the side under test must fail at once.
    holder.batch_execute("PRAGMA busy_timeout = 10000").unwrap();
    holder.batch_execute("BEGIN IMMEDIATE").unwrap();
    let (locked_tx, locked_rx) = std::sync::mpsc::channel::<()>();
    let release = std::thread::spawn(move || {
        // Hold the lock until the other side has been refused at least once.
        locked_rx.recv_timeout(Duration::from_secs(10)).ok();
        std::thread::sleep(Duration::from_millis(30));
        holder.batch_execute("COMMIT").unwrap();
    });
    let mut conn = file.conn();
    let log = Log::new();
    let runs = Cell::new(0);
    let (result, logs) = capture_logs(|| {
        // Refused at once while the lock is held (busy_timeout = 0).
        let mut probe = file.plain();
        assert!(!other_can_write(&mut probe));
        locked_tx.send(()).unwrap();
        reserve(&mut conn, &log, &runs)
    });
    release.join().unwrap();
    assert_eq!(result, Ok(()));
    assert!(logs.contains("database is locked"), "{logs}");
    assert!(logs.contains("retrying"), "{logs}");
    // A refused BEGIN IMMEDIATE never ran the body.
    assert_eq!(runs.get(), 1);
    assert_eq!(log.get(), ["reserved"]);
}

// ---------------------------------------------------------------------------
// retry = N

#[atomic(retry = 3)]
fn flaky_order(
    conn: &mut DbConn,
    log: &Log,
    attempts: &Cell<u32>,
    failures: u32,
) -> QueryResult<u32> {
    let n = attempts.get() + 1;
    attempts.set(n);
    insert(conn, n)?;
    let hooks = log.clone();
    on_commit!(conn, hooks.push(format!("commit {n}")));
    let hooks = log.clone();
    conn.on_rollback(move || hooks.push(format!("rollback {n}")));
    if n <= failures {
        return Err(serialization_failure());
    }
    Ok(n)
}

#[test]
fn retry_reruns_the_body_after_a_serialization_failure_and_fires_only_the_committed_attempt() {
    let mut conn = db();
    let log = Log::new();
    let attempts = Cell::new(0);
    let (result, logs) = capture_logs(|| flaky_order(&mut conn, &log, &attempts, 1));
    assert_eq!(result, Ok(2));
    assert_eq!(attempts.get(), 2);
    // The failed attempt: its on_commit hook dropped, its on_rollback ran.
    assert_eq!(log.get(), ["rollback 1", "commit 2"]);
    // Its row was rolled back too.
    assert_eq!(order_ids(&mut conn), [2]);
    assert!(logs.contains("attempt=1"), "{logs}");
    assert!(
        logs.contains("could not serialize access (simulated)"),
        "{logs}"
    );
}

#[test]
fn retry_gives_up_after_n_attempts_and_returns_the_last_error() {
    let mut conn = db();
    let log = Log::new();
    let attempts = Cell::new(0);
    let r = flaky_order(&mut conn, &log, &attempts, u32::MAX);
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
    assert_eq!(attempts.get(), 3);
    assert_eq!(log.get(), ["rollback 1", "rollback 2", "rollback 3"]);
    assert!(order_ids(&mut conn).is_empty());
    assert!(!conn.in_transaction());
}

#[atomic(retry = 5)]
fn fails_with(conn: &mut DbConn, attempts: &Cell<u32>, error: fn() -> Error) -> QueryResult<()> {
    attempts.set(attempts.get() + 1);
    insert(conn, attempts.get())?;
    Err(error())
}

#[test]
fn retry_does_not_rerun_other_errors() {
    let mut conn = db();
    let attempts = Cell::new(0);
    assert_eq!(
        fails_with(&mut conn, &attempts, || Error::NotFound),
        Err(Error::NotFound)
    );
    assert_eq!(attempts.get(), 1);
    assert_eq!(
        fails_with(&mut conn, &attempts, || Error::RollbackTransaction),
        Err(Error::RollbackTransaction)
    );
    assert_eq!(attempts.get(), 2);
    assert!(order_ids(&mut conn).is_empty());
}

#[test]
fn retry_inside_an_open_transaction_runs_once_and_returns_the_error_unchanged() {
    let mut conn = db();
    let log = Log::new();
    let attempts = Cell::new(0);
    let r = conn.transaction(|conn| -> QueryResult<()> {
        let r = flaky_order(conn, &log, &attempts, 1);
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
        assert_eq!(attempts.get(), 1);
        // The savepoint rolled back; the enclosing transaction is open.
        assert!(conn.in_transaction());
        assert_eq!(log.take(), ["rollback 1"]);
        r.map(drop)
    });
    assert!(r.is_err());
    assert!(log.get().is_empty());
}

#[test]
fn retry_inside_a_test_transaction_retries_each_attempt_as_a_savepoint() {
    let mut conn = db();
    conn.begin_test_transaction().unwrap();
    let log = Log::new();
    let attempts = Cell::new(0);
    assert_eq!(flaky_order(&mut conn, &log, &attempts, 1), Ok(2));
    assert_eq!(log.get(), ["rollback 1", "commit 2"]);
    assert_eq!(order_ids(&mut conn), [2]);
}

/// An application error that exposes its Diesel error to the retry loop.
#[derive(Debug, PartialEq)]
enum ShopError {
    Db(Error),
    OutOfStock,
}

impl From<Error> for ShopError {
    fn from(e: Error) -> Self {
        ShopError::Db(e)
    }
}

impl Retryable for ShopError {
    fn diesel_error(&self) -> Option<&Error> {
        match self {
            ShopError::Db(e) => Some(e),
            ShopError::OutOfStock => None,
        }
    }
}

#[atomic(retry = 4)]
fn reserve_stock(conn: &mut DbConn, attempts: &Cell<u32>, stock: u32) -> Result<u32, ShopError> {
    let n = attempts.get() + 1;
    attempts.set(n);
    insert(conn, n)?;
    if stock == 0 {
        return Err(ShopError::OutOfStock);
    }
    if n == 1 {
        return Err(ShopError::Db(serialization_failure()));
    }
    Ok(n)
}

#[test]
fn retry_with_an_application_error_type_that_implements_retryable() {
    let mut conn = db();
    let attempts = Cell::new(0);
    assert_eq!(reserve_stock(&mut conn, &attempts, 1), Ok(2));
    assert_eq!(order_ids(&mut conn), [2]);
    // A non-Diesel error is not retried.
    let attempts = Cell::new(10);
    assert_eq!(
        reserve_stock(&mut conn, &attempts, 0),
        Err(ShopError::OutOfStock)
    );
    assert_eq!(attempts.get(), 11);
    assert_eq!(order_ids(&mut conn), [2]);
}

#[atomic(durable, retry = 3)]
fn durable_flaky(conn: &mut DbConn, log: &Log, attempts: &Cell<u32>) -> QueryResult<u32> {
    flaky_order(conn, log, attempts, 1)
}

#[test]
fn durable_with_retry_refuses_an_open_transaction_and_retries_at_the_top() {
    let mut conn = db();
    let log = Log::new();
    let attempts = Cell::new(0);
    conn.transaction(|conn| -> QueryResult<()> {
        assert_eq!(
            durable_flaky(conn, &log, &attempts),
            Err(Error::AlreadyInTransaction)
        );
        Ok(())
    })
    .unwrap();
    assert_eq!(attempts.get(), 0, "the body did not run");
    // At the top, the outer retry loop reruns the whole function; the inner
    // `flaky_order` is a savepoint and runs once per attempt.
    assert_eq!(durable_flaky(&mut conn, &log, &attempts), Ok(2));
    assert_eq!(log.get(), ["rollback 1", "commit 2"]);
}

#[test]
fn retry_after_a_panic_is_not_a_retry_and_the_connection_stays_usable() {
    #[atomic(retry = 3)]
    fn panics(conn: &mut DbConn, log: &Log, attempts: &Cell<u32>) -> QueryResult<()> {
        attempts.set(attempts.get() + 1);
        insert(conn, 1)?;
        conn.on_commit(log.hook("commit"));
        conn.on_rollback(log.hook("rollback"));
        panic!("boom");
    }
    let mut conn = db();
    let log = Log::new();
    let attempts = Cell::new(0);
    let message = expect_panic(|| panics(&mut conn, &log, &attempts));
    assert_eq!(message, "boom");
    assert_eq!(attempts.get(), 1);
    assert_eq!(log.get(), ["rollback"]);
    assert!(!conn.in_transaction());
    assert!(order_ids(&mut conn).is_empty());
    let attempts = Cell::new(0);
    assert_eq!(flaky_order(&mut conn, &log, &attempts, 0), Ok(1));
}

// ---------------------------------------------------------------------------
// Options and open transactions, methods, owned connections

#[test]
fn options_inside_an_open_transaction_return_already_in_transaction_without_running() {
    let file = DbFile::new();
    let mut conn = file.conn();
    let mut other = file.plain();
    let log = Log::new();
    conn.transaction(|conn| -> QueryResult<()> {
        let r = immediate_order(conn, &mut other, &log, 1);
        assert_eq!(r, Err(Error::AlreadyInTransaction));
        assert!(
            conn.in_transaction(),
            "the enclosing transaction stays open"
        );
        Ok(())
    })
    .unwrap();
    assert!(log.get().is_empty());
    assert!(order_ids(&mut conn).is_empty());
}

#[test]
fn options_inside_a_test_transaction_run_in_a_savepoint_without_them() {
    let file = DbFile::new();
    let mut conn = file.conn();
    let mut other = file.plain();
    let log = Log::new();
    conn.begin_test_transaction().unwrap();
    let (r, logs) = capture_logs(|| immediate_order(&mut conn, &mut other, &log, 1));
    // The test transaction itself holds the lock once it wrote; here it has
    // not written yet, so the other connection could.
    assert_eq!(r, Ok(true));
    assert_eq!(log.get(), ["committed"]);
    assert!(logs.contains("inside a test transaction"), "{logs}");
}

struct Shop {
    log: Log,
}

impl Shop {
    #[atomic(retry = 3)]
    fn place(&self, conn: &mut DbConn, attempts: &Cell<u32>) -> QueryResult<u32> {
        flaky_order(conn, &self.log, attempts, 1)
    }

    /// `self` and the connection taken by value: the body only borrows
    /// them, so it can run again.
    #[atomic(immediate, retry = 2)]
    fn place_owned(self, mut conn: DbConn) -> QueryResult<Vec<i32>> {
        insert(conn, 9)?;
        conn.on_commit(self.log.hook("owned"));
        Ok(order_ids(conn))
    }
}

#[test]
fn options_on_methods_and_an_owned_connection() {
    let mut conn = db();
    let shop = Shop { log: Log::new() };
    let attempts = Cell::new(0);
    assert_eq!(shop.place(&mut conn, &attempts), Ok(2));
    assert_eq!(shop.log.take(), ["rollback 1", "commit 2"]);

    let log = shop.log.clone();
    assert_eq!(shop.place_owned(conn), Ok(vec![2, 9]));
    assert_eq!(log.get(), ["owned"]);
}

// ---------------------------------------------------------------------------
// PostgreSQL

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use common::PgSchema;

    type PgConn = HookedConnection<PgConnection>;

    #[derive(QueryableByName)]
    struct Setting {
        #[diesel(sql_type = diesel::sql_types::Text)]
        value: String,
    }

    fn show(conn: &mut PgConn, name: &str) -> String {
        diesel::sql_query(format!("SELECT current_setting('{name}') AS value"))
            .get_result::<Setting>(conn)
            .unwrap()
            .value
    }

    #[atomic(isolation = serializable, read_only)]
    fn read_only_report(conn: &mut PgConn, log: &Log) -> QueryResult<()> {
        assert_eq!(show(conn, "transaction_isolation"), "serializable");
        assert_eq!(show(conn, "transaction_read_only"), "on");
        conn.on_commit(log.hook("commit"));
        conn.on_rollback(log.hook("rollback"));
        diesel::sql_query("INSERT INTO items (id) VALUES (1)").execute(conn)?;
        Ok(())
    }

    #[test]
    fn serializable_read_only_rejects_a_write() {
        let schema = PgSchema::new();
        let mut conn = schema.conn();
        conn.batch_execute("CREATE TABLE items (id INT4 PRIMARY KEY)")
            .unwrap();
        let log = Log::new();
        let r = read_only_report(&mut conn, &log);
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
        assert_eq!(log.get(), ["rollback"]);
        assert!(!conn.in_transaction());
        // The next transaction is an ordinary one again.
        conn.transaction(|conn| -> QueryResult<()> {
            assert_eq!(show(conn, "transaction_read_only"), "off");
            diesel::sql_query("INSERT INTO items (id) VALUES (1)").execute(conn)?;
            Ok(())
        })
        .unwrap();
    }

    #[atomic(isolation = serializable, read_only, deferrable)]
    fn deferrable_report(conn: &mut PgConn) -> QueryResult<(String, String, String)> {
        Ok((
            show(conn, "transaction_isolation"),
            show(conn, "transaction_read_only"),
            show(conn, "transaction_deferrable"),
        ))
    }

    #[atomic(isolation = repeatable_read)]
    fn repeatable(conn: &mut PgConn) -> QueryResult<String> {
        Ok(show(conn, "transaction_isolation"))
    }

    #[atomic(isolation = read_committed, retry = 2)]
    fn read_committed(conn: &mut PgConn) -> QueryResult<String> {
        Ok(show(conn, "transaction_isolation"))
    }

    #[test]
    fn each_isolation_level_and_deferrable_are_applied() {
        let schema = PgSchema::new();
        let mut conn = schema.conn();
        assert_eq!(
            deferrable_report(&mut conn).unwrap(),
            ("serializable".into(), "on".into(), "on".into())
        );
        assert_eq!(repeatable(&mut conn).unwrap(), "repeatable read");
        assert_eq!(read_committed(&mut conn).unwrap(), "read committed");
    }

    /// On the first attempt, `other` changes the row after this
    /// transaction's snapshot and commits: the UPDATE below then fails with
    /// a real serialization failure (40001), and the retry succeeds.
    #[atomic(isolation = serializable, retry = 3)]
    fn bump(
        conn: &mut PgConn,
        other: &mut PgConnection,
        log: &Log,
        attempts: &Cell<u32>,
    ) -> QueryResult<i32> {
        let n = attempts.get() + 1;
        attempts.set(n);
        // Takes the snapshot.
        diesel::sql_query("SELECT id FROM items").execute(conn)?;
        if n == 1 {
            other.batch_execute("UPDATE items SET n = n + 100").unwrap();
        }
        let hooks = log.clone();
        on_commit!(conn, hooks.push(format!("commit {n}")));
        let hooks = log.clone();
        conn.on_rollback(move || hooks.push(format!("rollback {n}")));
        diesel::sql_query("UPDATE items SET n = n + 1").execute(conn)?;
        Ok(n as i32)
    }

    #[test]
    fn serializable_with_retry_reruns_a_real_serialization_failure() {
        let schema = PgSchema::new();
        let mut conn = schema.conn();
        let mut other = schema.plain();
        conn.batch_execute("CREATE TABLE items (id INT4 PRIMARY KEY, n INT4 NOT NULL); INSERT INTO items VALUES (1, 0)")
            .unwrap();
        let log = Log::new();
        let attempts = Cell::new(0);
        assert_eq!(bump(&mut conn, &mut other, &log, &attempts), Ok(2));
        assert_eq!(log.get(), ["rollback 1", "commit 2"]);
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::Integer)]
            n: i32,
        }
        let n = diesel::sql_query("SELECT n FROM items")
            .get_result::<N>(&mut conn)
            .unwrap()
            .n;
        assert_eq!(n, 101, "the other's update and one bump, not two");
    }

    #[test]
    fn options_inside_an_open_transaction_return_already_in_transaction() {
        let schema = PgSchema::new();
        let mut conn = schema.conn();
        conn.transaction(|conn| -> QueryResult<()> {
            assert_eq!(repeatable(conn), Err(Error::AlreadyInTransaction));
            Ok(())
        })
        .unwrap();
    }
}

// ---------------------------------------------------------------------------
// MySQL

#[cfg(feature = "mysql")]
mod mysql {
    use super::*;
    use common::MysqlDb;

    type MyConn = HookedConnection<MysqlConnection>;

    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        n: i32,
    }

    fn read_n(conn: &mut MyConn) -> i32 {
        diesel::sql_query("SELECT n FROM items WHERE id = 1")
            .get_result::<N>(conn)
            .unwrap()
            .n
    }

    fn setup(db: &MysqlDb) -> (MyConn, MysqlConnection) {
        let mut conn = db.conn();
        conn.batch_execute(
            "CREATE TABLE items (id INT PRIMARY KEY, n INT NOT NULL) ENGINE = InnoDB; \
             INSERT INTO items VALUES (1, 0)",
        )
        .unwrap();
        let mut other = db.plain();
        other
            .batch_execute("SET SESSION innodb_lock_wait_timeout = 1")
            .unwrap();
        (conn, other)
    }

    /// Reads, lets `other` change the row and commit, reads again.
    #[atomic(isolation = read_committed)]
    fn reread_committed(conn: &mut MyConn, other: &mut MysqlConnection) -> QueryResult<(i32, i32)> {
        let before = read_n(conn);
        other.batch_execute("UPDATE items SET n = n + 1").unwrap();
        Ok((before, read_n(conn)))
    }

    #[atomic]
    fn reread_default(conn: &mut MyConn, other: &mut MysqlConnection) -> QueryResult<(i32, i32)> {
        let before = read_n(conn);
        other.batch_execute("UPDATE items SET n = n + 1").unwrap();
        Ok((before, read_n(conn)))
    }

    #[test]
    fn read_committed_sees_a_concurrent_commit_and_applies_to_that_transaction_only() {
        let db = MysqlDb::new();
        let (mut conn, mut other) = setup(&db);
        // READ COMMITTED: the second read sees the other's commit.
        assert_eq!(reread_committed(&mut conn, &mut other), Ok((0, 1)));
        // The next transaction is back at the session's REPEATABLE READ: its
        // snapshot hides the other's commit.
        assert_eq!(reread_default(&mut conn, &mut other), Ok((1, 1)));
    }

    /// Under SERIALIZABLE, InnoDB reads take shared locks: `other` cannot
    /// update the row this transaction read.
    #[atomic(isolation = serializable)]
    fn serializable_read(conn: &mut MyConn, other: &mut MysqlConnection) -> QueryResult<String> {
        read_n(conn);
        Ok(match other.batch_execute("UPDATE items SET n = n + 1") {
            Ok(()) => "updated".into(),
            Err(e) => e.to_string(),
        })
    }

    #[atomic(isolation = repeatable_read)]
    fn repeatable_read(conn: &mut MyConn, other: &mut MysqlConnection) -> QueryResult<String> {
        read_n(conn);
        Ok(match other.batch_execute("UPDATE items SET n = n + 1") {
            Ok(()) => "updated".into(),
            Err(e) => e.to_string(),
        })
    }

    #[test]
    fn serializable_locks_what_it_reads_and_repeatable_read_does_not() {
        let db = MysqlDb::new();
        let (mut conn, mut other) = setup(&db);
        let blocked = serializable_read(&mut conn, &mut other).unwrap();
        assert!(blocked.contains("Lock wait timeout exceeded"), "{blocked}");
        assert_eq!(repeatable_read(&mut conn, &mut other).unwrap(), "updated");
    }

    #[atomic(read_only)]
    fn read_only_write(conn: &mut MyConn, log: &Log) -> QueryResult<()> {
        conn.on_commit(log.hook("commit"));
        conn.on_rollback(log.hook("rollback"));
        diesel::sql_query("UPDATE items SET n = 5").execute(conn)?;
        Ok(())
    }

    #[test]
    fn read_only_rejects_a_write() {
        let db = MysqlDb::new();
        let (mut conn, _other) = setup(&db);
        let log = Log::new();
        let r = read_only_write(&mut conn, &log);
        let message = format!("{:?}", r.unwrap_err());
        assert!(message.contains("READ ONLY"), "{message}");
        assert_eq!(log.get(), ["rollback"]);
        assert_eq!(read_n(&mut conn), 0);
    }
}
