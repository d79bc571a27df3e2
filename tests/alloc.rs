//! Rule 14: a transaction that registers no hook costs no heap
//! allocation in the wrapper, measured against raw Diesel with a counting
//! allocator (thread-local counts, so parallel tests do not disturb it).

mod common;

use allocation_counter::measure;
use diesel::prelude::*;
use diesel::result::Error;
use diesel_on_commit::HookedConnection;

type R = Result<(), Error>;

diesel::table! { items (id) { id -> Integer } }

const SETUP: &str = "CREATE TABLE items (id INTEGER PRIMARY KEY)";

fn workload<C>(conn: &mut C, rounds: i32)
where
    C: Connection<Backend = diesel::sqlite::Sqlite> + diesel::connection::LoadConnection,
{
    for i in 0..rounds {
        // An empty transaction, one with an INSERT, and a nested savepoint.
        conn.transaction(|_| -> R { Ok(()) }).unwrap();
        conn.transaction(|conn| -> R {
            diesel::insert_into(items::table)
                .values(items::id.eq(i))
                .execute(conn)?;
            Ok(())
        })
        .unwrap();
        conn.transaction(|conn| -> R {
            conn.transaction(|_| -> R { Ok(()) })?;
            let r = conn.transaction(|_| -> R { Err(Error::RollbackTransaction) });
            assert!(r.is_err());
            Ok(())
        })
        .unwrap();
    }
}

fn raw() -> SqliteConnection {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    diesel::sql_query(SETUP).execute(&mut conn).unwrap();
    workload(&mut conn, 1); // warm the statement cache
    conn
}

fn wrapped() -> HookedConnection<SqliteConnection> {
    let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:").unwrap());
    diesel::sql_query(SETUP).execute(&mut conn).unwrap();
    workload(&mut conn, 1);
    conn
}

#[test]
fn hookless_transactions_allocate_exactly_as_much_as_raw_diesel() {
    let mut raw = raw();
    let mut wrapped = wrapped();
    // Clear the rows so both runs insert the same keys.
    diesel::delete(items::table).execute(&mut raw).unwrap();
    diesel::delete(items::table).execute(&mut wrapped).unwrap();
    let raw_info = measure(|| workload(&mut raw, 200));
    let wrapped_info = measure(|| workload(&mut wrapped, 200));
    println!("raw Diesel: {raw_info:?}\nwrapper:    {wrapped_info:?}");
    assert!(
        raw_info.count_total > 0,
        "the measurement sees Diesel's own allocations"
    );
    assert_eq!(
        wrapped_info.count_total, raw_info.count_total,
        "the wrapper must add no allocation to a hookless transaction"
    );
    assert_eq!(wrapped_info.bytes_total, raw_info.bytes_total);
}

#[test]
fn hooks_cost_at_most_one_allocation_each_amortized() {
    let mut raw = raw();
    let mut wrapped = wrapped();
    let baseline = measure(|| raw.transaction(|_| -> R { Ok(()) }).unwrap());
    let n = 1000u64;
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c = counter.clone();
    let info = measure(move || {
        wrapped
            .transaction(|conn| -> R {
                for _ in 0..n {
                    let c = c.clone(); // a capturing hook: its box allocates
                    conn.on_commit(move || {
                        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    });
                }
                Ok(())
            })
            .unwrap()
    });
    assert_eq!(counter.load(std::sync::atomic::Ordering::Relaxed), n);
    let extra = info.count_total - baseline.count_total;
    println!("{n} hooks: {extra} allocations beyond a raw transaction");
    // One box per hook, plus the queue's amortized growth (log2 n).
    assert!(extra <= n + 16, "{extra} allocations for {n} hooks");
}

#[test]
fn a_huge_transaction_does_not_leave_its_capacity_held() {
    let mut conn = wrapped();
    let info = measure(|| {
        conn.transaction(|conn| -> R {
            for _ in 0..100_000 {
                conn.on_commit(|| ());
            }
            Ok(())
        })
        .unwrap();
        // The next commit, with hooks or without, gives the buffer back.
        conn.transaction(|_| -> R { Ok(()) }).unwrap();
    });
    println!("after 100 000 hooks and one more transaction: {info:?}");
    assert!(info.bytes_max > 1_000_000, "the queue did grow: {info:?}");
    assert!(
        info.bytes_current < 64 * 1024,
        "the connection still holds {} bytes after the next commit",
        info.bytes_current
    );
}

#[test]
fn repeated_big_transactions_reuse_the_queue() {
    let mut conn = wrapped();
    let big = |conn: &mut HookedConnection<SqliteConnection>| {
        conn.transaction(|conn| -> R {
            for _ in 0..10_000 {
                conn.on_commit(|| ());
            }
            Ok(())
        })
        .unwrap()
    };
    big(&mut conn);
    let info = measure(|| big(&mut conn));
    let mut raw = raw();
    let raw = measure(|| raw.transaction(|_| -> R { Ok(()) }).unwrap());
    assert!(raw.count_total > 0, "{raw:?}");
    println!("second 10 000-hook transaction: {info:?}");
    // Zero-sized hooks do not allocate; a kept queue does not re-grow.
    assert!(
        info.count_total <= raw.count_total,
        "{} allocations for a 10 000-hook transaction on a warm connection",
        info.count_total
    );
}
