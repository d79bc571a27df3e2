//! The code `#[atomic]` and `on_commit!` expand to raises no warning and no
//! clippy lint in the user's crate: this file denies them (and some
//! allow-by-default ones) and uses every form. It fails to compile under
//! `cargo test` / `cargo clippy --all-targets` if an expansion lints.
#![deny(warnings, clippy::all, clippy::pedantic)]
#![deny(
    rust_2018_idioms,
    unused_qualifications,
    unused_results,
    unused_lifetimes,
    single_use_lifetimes,
    trivial_casts,
    unreachable_pub
)]

use std::sync::atomic::{AtomicUsize, Ordering};

use diesel::prelude::*;
use diesel::result::{Error, QueryResult};
use diesel::sqlite::Sqlite;
use diesel_on_commit::prelude::*;

type DbConn = HookedConnection<SqliteConnection>;

static RUNS: AtomicUsize = AtomicUsize::new(0);

fn bump() {
    let _ = RUNS.fetch_add(1, Ordering::SeqCst);
}

fn bump_with(conn: &mut DbConn) -> Result<(), &'static str> {
    if conn.in_transaction() {
        return Err("expected to run after COMMIT");
    }
    bump();
    Ok(())
}

#[derive(Debug)]
enum AppError {
    Db(Error),
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self::Db(e) = self;
        write!(f, "database: {e}")
    }
}

impl From<Error> for AppError {
    fn from(e: Error) -> Self {
        Self::Db(e)
    }
}

/// Every `on_commit!` form.
#[atomic]
fn all_hook_forms(conn: &mut DbConn, id: i32) -> QueryResult<i32> {
    let _ = diesel::sql_query("SELECT 1").execute(conn)?;
    on_commit!(conn, bump());
    on_commit!(conn, move || {
        bump();
    });
    on_commit!(conn, move |c| {
        let r = bump_with(c);
        assert!(r.is_ok());
    });
    on_commit!(conn, bump);
    on_commit!(conn, bump_with);
    on_commit!(conn, robust, bump());
    on_commit!(conn, robust, move || {
        bump();
    });
    on_commit!(conn, robust, bump,);
    on_commit!(conn, Ok::<(), String>(()));
    on_commit!(crate = diesel_on_commit; conn, bump());
    if id < 0 {
        return Err(Error::RollbackTransaction);
    }
    Ok(id)
}

#[atomic(durable)]
fn durable(conn: &mut DbConn) -> Result<(), AppError> {
    let _ = all_hook_forms(conn, 1)?;
    Ok(())
}

#[atomic(conn = db, crate = diesel_on_commit)]
fn named(values: &mut Vec<i32>, db: &mut DbConn) -> QueryResult<usize> {
    values.push(1);
    on_commit!(db, bump());
    Ok(values.len())
}

#[atomic]
fn owned(mut conn: DbConn) -> QueryResult<()> {
    on_commit!(conn, bump());
    Ok(())
}

#[atomic]
fn rebound(mut conn: &mut DbConn) -> QueryResult<()> {
    conn = {
        let again: &mut DbConn = conn;
        again
    };
    on_commit!(conn, bump());
    Ok(())
}

#[atomic]
fn generic<C>(conn: &mut C, items: impl IntoIterator<Item = i32>) -> QueryResult<i32>
where
    C: Connection<Backend = Sqlite> + TransactionHooks,
{
    on_commit!(conn, bump());
    Ok(items.into_iter().sum())
}

#[atomic]
fn plain(conn: &mut SqliteConnection) -> QueryResult<usize> {
    diesel::sql_query("SELECT 1").execute(conn)
}

#[atomic]
fn borrowed<'a>(conn: &mut DbConn, name: &'a str) -> QueryResult<&'a str> {
    on_commit!(conn, bump());
    Ok(name)
}

#[atomic]
fn underscored(_db: &mut DbConn, _unused: u8) -> QueryResult<()> {
    Ok(())
}

struct Service {
    calls: u32,
}

impl Service {
    #[atomic]
    fn call(&mut self, conn: &mut DbConn) -> QueryResult<u32> {
        self.calls += 1;
        on_commit!(conn, bump());
        Ok(self.calls)
    }
}

static FORM_RUNS: AtomicUsize = AtomicUsize::new(0);

fn bump_form() {
    let _ = FORM_RUNS.fetch_add(1, Ordering::SeqCst);
}

/// `on_commit!` on the connection however it is held (M3), outside a
/// transaction: each hook runs at once.
fn connection_forms() {
    let mut conn = DbConn::establish(":memory:").unwrap();
    on_commit!(conn, bump_form());
    on_commit!(&mut conn, bump_form());
    let reference = &mut conn;
    on_commit!(reference, bump_form());
    on_commit!(&mut *reference, bump_form());
}

#[test]
fn connection_forms_compile_lint_free_and_run() {
    connection_forms();
    assert_eq!(FORM_RUNS.load(Ordering::SeqCst), 4);
}

#[test]
fn every_form_compiles_lint_free_and_runs() {
    let mut conn = DbConn::establish(":memory:").unwrap();
    assert_eq!(all_hook_forms(&mut conn, 1).unwrap(), 1);
    let after_one = RUNS.load(Ordering::SeqCst);
    assert_eq!(after_one, 9);
    assert!(all_hook_forms(&mut conn, -1).is_err());
    assert_eq!(RUNS.load(Ordering::SeqCst), after_one);
    durable(&mut conn).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(named(&mut Vec::new(), &mut conn).unwrap(), 1);
    rebound(&mut conn).unwrap();
    assert_eq!(generic(&mut conn, [1, 2]).unwrap(), 3);
    assert_eq!(borrowed(&mut conn, "x").unwrap(), "x");
    assert_eq!(Service { calls: 0 }.call(&mut conn).unwrap(), 1);
    assert_eq!(plain(conn.inner_mut()).unwrap(), 0);
    underscored(&mut conn, 0).unwrap();
    owned(conn).unwrap();
}

/// `#[atomic] async fn`, in the forms of the sync functions above, on
/// diesel-async's `SyncConnectionWrapper<SqliteConnection>`.
#[cfg(feature = "async")]
mod async_forms {
    use diesel::result::{Error, QueryResult};
    use diesel::sqlite::{Sqlite, SqliteConnection};
    use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    use diesel_async::{AsyncConnection, RunQueryDsl};
    use diesel_on_commit::atomic;

    use super::AppError;

    type Conn = SyncConnectionWrapper<SqliteConnection>;

    #[atomic]
    async fn simple(conn: &mut Conn, id: i32) -> QueryResult<i32> {
        let _ = diesel::sql_query("SELECT 1").execute(conn).await?;
        if id < 0 {
            return Err(Error::RollbackTransaction);
        }
        Ok(id)
    }

    #[atomic(durable)]
    async fn durable(conn: &mut Conn) -> Result<(), AppError> {
        let _ = simple(conn, 1).await?;
        Ok(())
    }

    #[atomic(conn = db, crate = diesel_on_commit)]
    async fn named(values: &mut Vec<i32>, db: &mut Conn) -> QueryResult<usize> {
        values.push(simple(db, 1).await?);
        Ok(values.len())
    }

    #[atomic]
    async fn owned(mut conn: Conn) -> QueryResult<()> {
        let _ = simple(conn, 1).await?;
        Ok(())
    }

    #[atomic]
    async fn rebound(mut conn: &mut Conn) -> QueryResult<()> {
        conn = {
            let again: &mut Conn = conn;
            again
        };
        let _ = simple(conn, 1).await?;
        Ok(())
    }

    #[atomic]
    async fn generic<C>(conn: &mut C, items: impl IntoIterator<Item = i32>) -> QueryResult<i32>
    where
        C: AsyncConnection<Backend = Sqlite>,
    {
        let _ = diesel::sql_query("SELECT 1").execute(conn).await?;
        Ok(items.into_iter().sum())
    }

    #[atomic]
    async fn borrowed<'a>(conn: &mut Conn, name: &'a str) -> QueryResult<&'a str> {
        let _ = simple(conn, 1).await?;
        Ok(name)
    }

    #[atomic]
    async fn underscored(_db: &mut Conn, _unused: u8) -> QueryResult<()> {
        Ok(())
    }

    struct Service {
        calls: u32,
    }

    impl Service {
        #[atomic]
        async fn call(&mut self, conn: &mut Conn) -> QueryResult<u32> {
            self.calls += 1;
            let _ = simple(conn, 1).await?;
            Ok(self.calls)
        }
    }

    #[tokio::test]
    async fn every_async_form_compiles_lint_free_and_runs() {
        let mut conn = Conn::establish(":memory:").await.unwrap();
        assert_eq!(simple(&mut conn, 1).await, Ok(1));
        assert_eq!(simple(&mut conn, -1).await, Err(Error::RollbackTransaction));
        durable(&mut conn).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(named(&mut Vec::new(), &mut conn).await, Ok(1));
        rebound(&mut conn).await.unwrap();
        assert_eq!(generic(&mut conn, [1, 2]).await, Ok(3));
        assert_eq!(borrowed(&mut conn, "x").await, Ok("x"));
        assert_eq!(Service { calls: 0 }.call(&mut conn).await, Ok(1));
        underscored(&mut conn, 0).await.unwrap();
        owned(conn).await.unwrap();
    }
}
