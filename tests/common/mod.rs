//! Shared test support: connections for each backend and a log that hooks
//! write to, so a test can assert exactly which hooks ran and in what order.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

#[cfg(feature = "async")]
pub mod async_conn;

use diesel::prelude::*;
use diesel_on_commit::HookedConnection;

/// What hooks did, in order.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&self, s: impl Into<String>) {
        self.0.lock().unwrap().push(s.into());
    }

    /// A hook closure that appends `s`.
    pub fn hook(&self, s: &'static str) -> impl FnOnce() + Send + 'static {
        let log = self.clone();
        move || log.push(s)
    }

    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    pub fn get(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// A fresh in-memory SQLite database, wrapped.
pub fn sqlite() -> HookedConnection<SqliteConnection> {
    HookedConnection::new(SqliteConnection::establish(":memory:").expect("in-memory SQLite"))
}

/// The PostgreSQL URL from `POSTGRES_DATABASE_URL`; fails (never skips)
/// with a message that says how to get one.
#[cfg(feature = "postgres")]
pub fn pg_url() -> String {
    std::env::var("POSTGRES_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "POSTGRES_DATABASE_URL is not set. The `postgres` feature's tests need a PostgreSQL \
             server: start it (`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`) \
             and run `POSTGRES_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo test --features postgres`, \
             or run everything with `bash .ci/run`"
        )
    })
}

/// The MySQL/MariaDB URL from `MYSQL_DATABASE_URL`; fails (never skips)
/// with a message that says how to get one.
#[cfg(feature = "mysql")]
pub fn mysql_url() -> String {
    std::env::var("MYSQL_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "MYSQL_DATABASE_URL is not set. The `mysql` feature's tests need a MySQL/MariaDB server: \
             start it (`start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd`) \
             and run `MYSQL_DATABASE_URL=mysql://root@127.0.0.1:3306/test cargo test --features mysql`, \
             or run everything with `bash .ci/run`"
        )
    })
}

/// A wrapped PostgreSQL connection.
#[cfg(feature = "postgres")]
pub fn pg() -> HookedConnection<PgConnection> {
    let url = pg_url();
    HookedConnection::<PgConnection>::establish(&url).unwrap_or_else(|e| {
        panic!(
            "cannot connect to PostgreSQL at {url}: {e}. Is it running? `bash .ci/run` starts it."
        )
    })
}

/// A wrapped MySQL connection.
#[cfg(feature = "mysql")]
pub fn mysql() -> HookedConnection<MysqlConnection> {
    let url = mysql_url();
    HookedConnection::<MysqlConnection>::establish(&url).unwrap_or_else(|e| {
        panic!("cannot connect to MySQL at {url}: {e}. Is it running? `bash .ci/run` starts it.")
    })
}

/// A table name unique to this test process and call site, so tests that run
/// in parallel on a shared database never see each other's rows.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `f` with a `tracing` subscriber that records every event, and
/// returns what was logged (level and message per line).
pub fn capture_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf(Arc::new(Mutex::new(Vec::new())));
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .without_time()
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    (out, text)
}

/// The message of a caught panic.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// Runs `f`, expecting a panic; returns its message.
pub fn expect_panic<T>(f: impl FnOnce() -> T) -> String {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(_) => panic!("expected a panic"),
        Err(p) => panic_text(&*p),
    }
}

/// A PostgreSQL schema of one test's own, so tests that run in parallel on
/// the shared database cannot see each other's tables (or types). Every
/// connection made from it (`conn`, `plain`, `url` for pools) has its
/// `search_path` set to the schema. Dropped with everything in it when the
/// guard goes out of scope (declare it first, so connections close before).
#[cfg(feature = "postgres")]
pub struct PgSchema {
    pub name: String,
    url: String,
}

#[cfg(feature = "postgres")]
impl PgSchema {
    pub fn new() -> Self {
        let name = unique("t");
        let base = pg_url();
        let mut admin = PgConnection::establish(&base).unwrap_or_else(|e| {
            panic!("cannot connect to PostgreSQL at {base}: {e}. Is it running? `bash .ci/run` starts it.")
        });
        diesel::connection::SimpleConnection::batch_execute(
            &mut admin,
            &format!("CREATE SCHEMA {name}"),
        )
        .expect("CREATE SCHEMA");
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-csearch_path%3D{name}");
        Self { name, url }
    }

    /// A URL whose connections use this schema (for pools).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A wrapped connection that uses this schema.
    pub fn conn(&self) -> HookedConnection<PgConnection> {
        HookedConnection::<PgConnection>::establish(&self.url)
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.url))
    }

    /// A plain Diesel connection that uses this schema (an observer, or
    /// the baseline of what plain Diesel does).
    pub fn plain(&self) -> PgConnection {
        PgConnection::establish(&self.url)
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.url))
    }
}

#[cfg(feature = "postgres")]
impl Drop for PgSchema {
    fn drop(&mut self) {
        let sql = format!(
            "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS {} CASCADE",
            self.name
        );
        let result = PgConnection::establish(&pg_url())
            .map_err(|e| e.to_string())
            .and_then(|mut c| {
                diesel::connection::SimpleConnection::batch_execute(&mut c, &sql)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = result {
            eprintln!("could not drop schema {}: {e}", self.name);
        }
    }
}

/// A MySQL/MariaDB database of one test's own (MySQL's schemas are
/// databases), so tests that run in parallel cannot see each other's
/// tables. Dropped when the guard goes out of scope (declare it first).
#[cfg(feature = "mysql")]
pub struct MysqlDb {
    pub name: String,
    url: String,
}

#[cfg(feature = "mysql")]
impl MysqlDb {
    pub fn new() -> Self {
        let name = unique("t");
        let base = mysql_url();
        let mut admin = MysqlConnection::establish(&base).unwrap_or_else(|e| {
            panic!(
                "cannot connect to MySQL at {base}: {e}. Is it running? `bash .ci/run` starts it."
            )
        });
        diesel::connection::SimpleConnection::batch_execute(
            &mut admin,
            &format!("CREATE DATABASE {name}"),
        )
        .expect("CREATE DATABASE");
        let (path, query) = match base.split_once('?') {
            Some((path, query)) => (path, format!("?{query}")),
            None => (base.as_str(), String::new()),
        };
        let (server, _database) = path
            .rsplit_once('/')
            .filter(|(server, _)| server.contains("://"))
            .unwrap_or((path, ""));
        let url = format!("{server}/{name}{query}");
        Self { name, url }
    }

    /// A URL whose connections use this database (for pools).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A wrapped connection to this database.
    pub fn conn(&self) -> HookedConnection<MysqlConnection> {
        HookedConnection::<MysqlConnection>::establish(&self.url)
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.url))
    }

    /// A plain Diesel connection to this database.
    pub fn plain(&self) -> MysqlConnection {
        MysqlConnection::establish(&self.url)
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.url))
    }
}

#[cfg(feature = "mysql")]
impl Drop for MysqlDb {
    fn drop(&mut self) {
        let sql = format!(
            "SET SESSION lock_wait_timeout = 10; DROP DATABASE IF EXISTS {}",
            self.name
        );
        let result = MysqlConnection::establish(&mysql_url())
            .map_err(|e| e.to_string())
            .and_then(|mut c| {
                diesel::connection::SimpleConnection::batch_execute(&mut c, &sql)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = result {
            eprintln!("could not drop database {}: {e}", self.name);
        }
    }
}

/// A hook that sends `s` on `tx`: for hooks that run on another thread
/// (a pool dropping a connection in the background), so the test can wait
/// for them with `recv_timeout` instead of sleeping.
pub fn signal(
    tx: &std::sync::mpsc::Sender<&'static str>,
    s: &'static str,
) -> impl FnOnce() + Send + 'static {
    let tx = tx.clone();
    move || {
        let _ = tx.send(s);
    }
}
