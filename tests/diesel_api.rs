//! Ordinary Diesel code runs through `HookedConnection` unchanged (SQLite):
//! every loading mode, returning clauses, save_changes, batch insert,
//! sql_query, migrations, MultiConnection.

mod common;

use common::{sqlite, Log};
use diesel::prelude::*;
use diesel::result::Error;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use diesel_on_commit::HookedConnection;

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

diesel::table! {
    orders (id) {
        id -> Integer,
        customer -> Text,
        total_cents -> Integer,
    }
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Identifiable, AsChangeset, Insertable)]
#[diesel(table_name = orders)]
struct Order {
    id: i32,
    customer: String,
    total_cents: i32,
}

fn migrated() -> HookedConnection<SqliteConnection> {
    let mut conn = sqlite();
    let applied = conn.run_pending_migrations(MIGRATIONS).unwrap();
    assert_eq!(applied.len(), 1);
    conn
}

fn order(id: i32, customer: &str, total_cents: i32) -> Order {
    Order {
        id,
        customer: customer.into(),
        total_cents,
    }
}

#[test]
fn migrations_run_through_the_wrapper() {
    let mut conn = migrated();
    assert!(!conn.has_pending_migration(MIGRATIONS).unwrap());
    let applied = conn.applied_migrations().unwrap();
    assert_eq!(applied.len(), 1);
    conn.revert_last_migration(MIGRATIONS).unwrap();
    assert!(conn.has_pending_migration(MIGRATIONS).unwrap());
}

#[test]
fn insert_returning_get_result_load_and_load_iter() {
    let mut conn = migrated();
    let inserted: Order = diesel::insert_into(orders::table)
        .values(&order(1, "ada", 1200))
        .returning(Order::as_returning())
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(inserted, order(1, "ada", 1200));
    // Batch insert.
    let n = diesel::insert_into(orders::table)
        .values(&vec![order(2, "bob", 300), order(3, "cy", 50)])
        .execute(&mut conn)
        .unwrap();
    assert_eq!(n, 2);
    let all: Vec<Order> = orders::table.order(orders::id).load(&mut conn).unwrap();
    assert_eq!(all.len(), 3);
    let names: Vec<String> = orders::table
        .select(orders::customer)
        .order(orders::id)
        .load_iter::<String, diesel::connection::DefaultLoadingMode>(&mut conn)
        .unwrap()
        .collect::<QueryResult<_>>()
        .unwrap();
    assert_eq!(names, ["ada", "bob", "cy"]);
    let one: Order = orders::table.find(2).first(&mut conn).unwrap();
    assert_eq!(one.customer, "bob");
}

#[test]
fn save_changes_and_sql_query() {
    let mut conn = migrated();
    diesel::insert_into(orders::table)
        .values(&order(1, "ada", 1200))
        .execute(&mut conn)
        .unwrap();
    let mut o: Order = orders::table.find(1).first(&mut conn).unwrap();
    o.total_cents = 999;
    let saved: Order = o.save_changes(&mut conn).unwrap();
    assert_eq!(saved.total_cents, 999);

    #[derive(QueryableByName, Debug)]
    struct Total {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        total: i64,
    }
    let t: Total = diesel::sql_query("SELECT SUM(total_cents) AS total FROM orders")
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(t.total, 999);
}

#[test]
fn query_errors_pass_through_unchanged() {
    let mut conn = migrated();
    diesel::insert_into(orders::table)
        .values(&order(1, "ada", 1))
        .execute(&mut conn)
        .unwrap();
    let e = diesel::insert_into(orders::table)
        .values(&order(1, "dup", 1))
        .execute(&mut conn)
        .unwrap_err();
    assert!(matches!(
        e,
        Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)
    ));
    // SQLite does not abort a transaction on a failed statement: a
    // swallowed error there does not stop the commit.
    let log = Log::new();
    conn.transaction(|conn| -> Result<(), Error> {
        let _ = diesel::insert_into(orders::table)
            .values(&order(1, "dup", 1))
            .execute(conn);
        diesel::insert_into(orders::table)
            .values(&order(2, "ok", 1))
            .execute(conn)?;
        conn.on_commit(log.hook("committed"));
        Ok(())
    })
    .unwrap();
    assert_eq!(log.get(), ["committed"]);
}

mod plain_multi {
    use diesel::prelude::*;

    #[derive(diesel::MultiConnection)]
    pub enum AnyConnection {
        Sqlite(SqliteConnection),
    }
}

mod hooked_multi {
    use diesel::prelude::*;

    // The derive needs a plain path as the variant's type: name the wrapper
    // with an alias.
    pub type HookedSqlite = diesel_on_commit::HookedConnection<SqliteConnection>;

    #[derive(diesel::MultiConnection)]
    pub enum AnyHookedConnection {
        Sqlite(HookedSqlite),
    }
}

use hooked_multi::AnyHookedConnection;
use plain_multi::AnyConnection;

#[test]
fn a_wrapped_multi_connection_enum() {
    let mut conn = HookedConnection::<AnyConnection>::establish(":memory:").unwrap();
    conn.run_pending_migrations(MIGRATIONS).unwrap();
    let log = Log::new();
    conn.transaction(|conn| -> Result<(), Error> {
        diesel::insert_into(orders::table)
            .values(&order(1, "ada", 5))
            .execute(conn)?;
        conn.on_commit(log.hook("multi committed"));
        Ok(())
    })
    .unwrap();
    assert_eq!(log.get(), ["multi committed"]);
    let n: i64 = orders::table.count().get_result(&mut conn).unwrap();
    assert_eq!(n, 1);
}

#[test]
fn a_multi_connection_enum_over_wrapped_connections() {
    let mut conn = AnyHookedConnection::establish(":memory:").unwrap();
    conn.run_pending_migrations(MIGRATIONS).unwrap();
    let log = Log::new();
    conn.transaction(|conn| -> Result<(), Error> {
        diesel::insert_into(orders::table)
            .values(&order(1, "ada", 5))
            .execute(conn)?;
        let AnyHookedConnection::Sqlite(inner) = conn;
        inner.on_commit(log.hook("variant committed"));
        Ok(())
    })
    .unwrap();
    assert_eq!(log.get(), ["variant committed"]);
    let names: Vec<String> = orders::table
        .select(orders::customer)
        .load(&mut conn)
        .unwrap();
    assert_eq!(names, ["ada"]);
}

/// A multi-row `INSERT … RETURNING` with `get_results` does not compile on
/// the wrapper: Diesel implements `LoadQuery` for it (and for `ON CONFLICT`)
/// on SQLite only for `SqliteConnection` itself, over private types (README,
/// Known limits). `inner_mut()` runs it on the inner connection, inside the
/// wrapper's transaction: its hooks are kept and follow the transaction.
#[test]
fn multi_row_insert_returning_through_inner_mut_keeps_the_hooks() {
    let mut conn = migrated();
    let log = Log::new();
    conn.transaction(|conn| -> Result<(), Error> {
        conn.on_commit(log.hook("registered before"));
        let rows = vec![order(1, "ada", 100), order(2, "bob", 200)];
        let ids: Vec<i32> = diesel::insert_into(orders::table)
            .values(&rows)
            .returning(orders::id)
            .get_results(conn.inner_mut())?;
        assert_eq!(ids, [1, 2]);
        conn.on_commit(log.hook("registered after"));
        assert!(log.get().is_empty(), "nothing runs before COMMIT");
        Ok(())
    })
    .unwrap();
    assert_eq!(log.get(), ["registered before", "registered after"]);
    let r = conn.transaction(|conn| -> Result<(), Error> {
        let rows = vec![order(3, "cy", 300), order(4, "di", 400)];
        let returned: Vec<Order> = diesel::insert_into(orders::table)
            .values(&rows)
            .returning(Order::as_returning())
            .get_results(conn.inner_mut())?;
        assert_eq!(returned, rows);
        conn.on_commit(log.hook("never"));
        conn.on_rollback(log.hook("rolled back"));
        Err(Error::RollbackTransaction)
    });
    assert!(r.is_err());
    assert_eq!(
        log.get(),
        ["registered before", "registered after", "rolled back"]
    );
    let ids: Vec<i32> = orders::table
        .select(orders::id)
        .order(orders::id)
        .load(&mut conn)
        .unwrap();
    assert_eq!(ids, [1, 2]);
}
