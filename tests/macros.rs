//! `#[atomic]` and `on_commit!` on SQLite in memory: the seed's
//! `create_order`, nesting, methods, generics, `durable`, every `on_commit!`
//! form, the connection owned, `&mut` or a pool guard (M3), panics, plain
//! connections and r2d2 guards.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::{capture_logs, expect_panic, sqlite, Log};
use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::prelude::*;
use diesel::result::{Error, QueryResult};
use diesel::sqlite::Sqlite;
use diesel_on_commit::prelude::*;

type DbConn = HookedConnection<SqliteConnection>;

diesel::table! {
    orders (id) {
        id -> Integer,
        customer -> Text,
        total -> Integer,
    }
}

fn create_tables<C: Connection<Backend = Sqlite>>(conn: &mut C) {
    diesel::sql_query(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, total INTEGER NOT NULL)",
    )
    .execute(conn)
    .unwrap();
}

fn db() -> DbConn {
    let mut conn = sqlite();
    create_tables(&mut conn);
    conn
}

fn order_ids<C>(conn: &mut C) -> Vec<i32>
where
    C: Connection<Backend = Sqlite> + diesel::connection::LoadConnection,
{
    orders::table
        .select(orders::id)
        .order(orders::id)
        .load(conn)
        .unwrap()
}

/// An application error, as services have: Diesel's errors convert into it.
#[derive(Debug, PartialEq)]
enum ShopError {
    Db(Error),
    EmptyCart,
}

impl From<Error> for ShopError {
    fn from(e: Error) -> Self {
        ShopError::Db(e)
    }
}

// ---------------------------------------------------------------------------
// The seed's create_order

/// Inserts the order; after COMMIT, "sends" the confirmation email.
#[atomic]
fn create_order(
    conn: &mut DbConn,
    emails: &Log,
    id: i32,
    customer: &str,
    total: i32,
) -> Result<i32, ShopError> {
    diesel::insert_into(orders::table)
        .values((
            orders::id.eq(id),
            orders::customer.eq(customer),
            orders::total.eq(total),
        ))
        .execute(conn)?;
    let emails = emails.clone();
    let to = customer.to_string();
    on_commit!(
        conn,
        emails.push(format!("confirmation to {to} for order {id}"))
    );
    if total <= 0 {
        // After the INSERT and the hook: both must be undone.
        return Err(ShopError::EmptyCart);
    }
    Ok(id)
}

#[test]
fn create_order_commits_then_sends_the_email() {
    let mut conn = db();
    let emails = Log::new();
    assert_eq!(create_order(&mut conn, &emails, 1, "ada", 30), Ok(1));
    assert_eq!(emails.get(), ["confirmation to ada for order 1"]);
    assert_eq!(order_ids(&mut conn), [1]);
    assert!(!conn.in_transaction());
}

#[test]
fn create_order_that_fails_rolls_back_and_sends_nothing() {
    let mut conn = db();
    let emails = Log::new();
    assert_eq!(
        create_order(&mut conn, &emails, 1, "ada", 0),
        Err(ShopError::EmptyCart)
    );
    assert!(emails.get().is_empty());
    assert!(order_ids(&mut conn).is_empty());
    assert!(!conn.in_transaction());
}

#[test]
fn create_order_with_a_database_error_rolls_back_through_question_mark() {
    let mut conn = db();
    let emails = Log::new();
    create_order(&mut conn, &emails, 1, "ada", 30).unwrap();
    emails.take();
    let err = create_order(&mut conn, &emails, 1, "bob", 30).unwrap_err();
    assert!(
        matches!(
            err,
            ShopError::Db(Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _
            ))
        ),
        "{err:?}"
    );
    assert!(emails.get().is_empty());
    assert_eq!(order_ids(&mut conn), [1]);
}

// ---------------------------------------------------------------------------
// Nesting

#[atomic]
fn insert_order(conn: &mut DbConn, log: &Log, id: i32, fail: bool) -> QueryResult<()> {
    diesel::insert_into(orders::table)
        .values((
            orders::id.eq(id),
            orders::customer.eq("x"),
            orders::total.eq(1),
        ))
        .execute(conn)?;
    let log = log.clone();
    on_commit!(conn, log.push(format!("order {id}")));
    if fail {
        Err(Error::RollbackTransaction)
    } else {
        Ok(())
    }
}

#[atomic]
fn outer_with_failing_inner(conn: &mut DbConn, log: &Log) -> QueryResult<()> {
    let hooks = log.clone();
    on_commit!(conn, hooks.push("outer"));
    insert_order(conn, log, 1, false)?;
    let inner = insert_order(conn, log, 2, true);
    assert_eq!(inner, Err(Error::RollbackTransaction));
    // The savepoint rolled back; this level is still open.
    assert!(TransactionHooks::in_transaction(conn));
    log.push("outer body done");
    Ok(())
}

#[test]
fn nested_atomic_inner_rollback_drops_its_hooks_and_the_outer_fires() {
    let mut conn = db();
    let log = Log::new();
    outer_with_failing_inner(&mut conn, &log).unwrap();
    // Registration order, the rolled-back savepoint's hook dropped.
    assert_eq!(log.get(), ["outer body done", "outer", "order 1"]);
    assert_eq!(order_ids(&mut conn), [1]);
}

#[atomic]
fn outer_that_fails_after_inner_committed(conn: &mut DbConn, log: &Log) -> QueryResult<()> {
    insert_order(conn, log, 1, false)?;
    assert!(log.get().is_empty(), "a released savepoint runs nothing");
    Err(Error::RollbackTransaction)
}

#[test]
fn nested_atomic_outer_rollback_drops_released_inner_hooks() {
    let mut conn = db();
    let log = Log::new();
    let r = outer_that_fails_after_inner_committed(&mut conn, &log);
    assert_eq!(r, Err(Error::RollbackTransaction));
    assert!(log.get().is_empty());
    assert!(order_ids(&mut conn).is_empty());
}

#[test]
fn atomic_inside_a_manual_transaction_is_a_savepoint() {
    let mut conn = db();
    let log = Log::new();
    conn.transaction(|conn| -> QueryResult<()> {
        insert_order(conn, &log, 1, false)?;
        assert!(log.get().is_empty(), "not before the outermost COMMIT");
        Ok(())
    })
    .unwrap();
    assert_eq!(log.get(), ["order 1"]);
}

// ---------------------------------------------------------------------------
// `return`, `?` with other errors

#[atomic]
fn early_return(conn: &mut DbConn, log: &Log, stop: bool) -> Result<&'static str, ShopError> {
    let l = log.clone();
    on_commit!(conn, l.push("hook"));
    if stop {
        return Ok("early");
    }
    let cart: Vec<i32> = Vec::new();
    cart.first().ok_or(ShopError::EmptyCart)?;
    Ok("late")
}

#[test]
fn early_return_commits_and_question_mark_on_an_app_error_rolls_back() {
    let mut conn = db();
    let log = Log::new();
    assert_eq!(early_return(&mut conn, &log, true), Ok("early"));
    assert_eq!(log.take(), ["hook"]);
    assert_eq!(
        early_return(&mut conn, &log, false),
        Err(ShopError::EmptyCart)
    );
    assert!(log.get().is_empty());
}

// ---------------------------------------------------------------------------
// Methods

struct OrderService {
    log: Log,
    placed: u32,
}

impl OrderService {
    /// Doc comments and other attributes are kept.
    #[atomic]
    #[must_use = "the result says whether it committed"]
    pub(crate) fn place(&self, conn: &mut DbConn, id: i32) -> QueryResult<i32> {
        insert_order(conn, &self.log, id, false)?;
        Ok(id)
    }

    #[atomic]
    fn place_and_count(&mut self, conn: &mut DbConn, id: i32, fail: bool) -> QueryResult<u32> {
        self.placed += 1;
        insert_order(conn, &self.log, id, fail)?;
        Ok(self.placed)
    }

    #[atomic]
    fn consume(self, conn: &mut DbConn) -> QueryResult<Log> {
        let log = self.log;
        let hook = log.clone();
        on_commit!(conn, hook.push("consumed"));
        Ok(log)
    }
}

trait Repository {
    fn save(&self, conn: &mut DbConn, id: i32) -> QueryResult<()>;
}

struct SqlRepository(Log);

impl Repository for SqlRepository {
    #[atomic]
    fn save(&self, conn: &mut DbConn, id: i32) -> QueryResult<()> {
        insert_order(conn, &self.0, id, id < 0)
    }
}

#[test]
fn atomic_methods_with_self_ref_self_mut_self_and_trait_impls() {
    let mut conn = db();
    let mut service = OrderService {
        log: Log::new(),
        placed: 0,
    };
    assert_eq!(service.place(&mut conn, 1), Ok(1));
    assert_eq!(service.place_and_count(&mut conn, 2, false), Ok(1));
    assert_eq!(
        service.place_and_count(&mut conn, 3, true),
        Err(Error::RollbackTransaction)
    );
    assert_eq!(service.placed, 2, "`&mut self` is the caller's");
    assert_eq!(service.log.get(), ["order 1", "order 2"]);
    let log = service.consume(&mut conn).unwrap();
    assert_eq!(log.take(), ["order 1", "order 2", "consumed"]);

    let repo = SqlRepository(Log::new());
    let dyn_repo: &dyn Repository = &repo;
    dyn_repo.save(&mut conn, 4).unwrap();
    assert_eq!(
        dyn_repo.save(&mut conn, -5),
        Err(Error::RollbackTransaction)
    );
    assert_eq!(repo.0.get(), ["order 4"]);
    assert_eq!(order_ids(&mut conn), [1, 2, 4]);
}

// ---------------------------------------------------------------------------
// Generics, where clauses, impl Trait arguments, lifetimes, patterns

/// Works on any SQLite connection, hooked or not.
#[atomic]
fn count_orders<C>(conn: &mut C) -> QueryResult<i64>
where
    C: Connection<Backend = Sqlite> + diesel::connection::LoadConnection,
{
    orders::table.count().get_result(conn)
}

#[atomic]
fn insert_many<'a, C, L: std::ops::Deref<Target = Log>>(
    conn: &mut C,
    ids: impl IntoIterator<Item = i32>,
    (tag, log): (&'a str, &L),
) -> QueryResult<&'a str>
where
    C: Connection<Backend = Sqlite> + TransactionHooks,
{
    for id in ids {
        diesel::insert_into(orders::table)
            .values((
                orders::id.eq(id),
                orders::customer.eq(tag),
                orders::total.eq(1),
            ))
            .execute(conn)?;
    }
    let (log, len) = (Log::clone(log), tag.len());
    on_commit!(conn, log.push(len.to_string()));
    Ok(tag)
}

#[atomic]
fn longest<'a>(_db: &mut impl Connection, a: &'a str, b: &'a str) -> QueryResult<&'a str> {
    Ok(if a.len() >= b.len() { a } else { b })
}

struct Named(String);

impl Named {
    /// An elided lifetime in the return type (borrowed from `self`).
    #[atomic]
    fn trimmed(&self, conn: &mut DbConn) -> QueryResult<&str> {
        count_orders(conn)?;
        Ok(self.0.trim())
    }
}

#[test]
fn generics_where_clauses_impl_trait_arguments_lifetimes_and_patterns() {
    let mut conn = db();
    let log = Log::new();
    let tag = String::from("bulk");
    let boxed = Box::new(log.clone());
    let got = insert_many(&mut conn, [1, 2, 3], (tag.as_str(), &boxed)).unwrap();
    assert_eq!(got, "bulk");
    assert_eq!(log.get(), ["4"]);
    assert_eq!(count_orders(&mut conn), Ok(3));
    assert_eq!(count_orders(conn.inner_mut()), Ok(3));
    assert_eq!(longest(&mut conn, "ab", "abc"), Ok("abc"));
    assert_eq!(Named("  x  ".into()).trimmed(&mut conn), Ok("x"));
}

// ---------------------------------------------------------------------------
// Choosing the connection parameter

#[atomic(conn = db)]
fn named_connection(other: &mut Vec<i32>, db: &mut DbConn, log: &Log) -> QueryResult<()> {
    other.push(1);
    let log = log.clone();
    on_commit!(db, log.push("named"));
    Ok(())
}

#[atomic]
fn only_mut_param(database: &mut DbConn, log: &Log) -> QueryResult<bool> {
    let log = log.clone();
    on_commit!(database, log.push("only &mut"));
    Ok(TransactionHooks::in_transaction(database))
}

#[atomic]
fn mut_binding(mut conn: &mut DbConn, log: &Log) -> QueryResult<()> {
    let l = log.clone();
    on_commit!(conn, l.push("mut binding"));
    // The binding is the body's: it can be re-pointed.
    conn = {
        let same: &mut DbConn = conn;
        same
    };
    let l = log.clone();
    on_commit!(conn, l.push("again"));
    Ok(())
}

#[atomic]
fn owned_connection(mut conn: DbConn, log: Log) -> QueryResult<bool> {
    on_commit!(conn, log.push("owned"));
    Ok(TransactionHooks::in_transaction(conn))
}

#[atomic(crate = diesel_on_commit, durable)]
fn crate_path(conn: &mut DbConn) -> QueryResult<()> {
    TransactionHooks::in_transaction(conn)
        .then_some(())
        .ok_or(Error::NotFound)
}

#[atomic(crate = "::diesel_on_commit")]
fn crate_string(conn: &mut DbConn) -> QueryResult<bool> {
    Ok(TransactionHooks::in_transaction(conn))
}

#[test]
fn the_connection_parameter_is_found_and_runs_in_the_transaction() {
    let mut conn = db();
    let log = Log::new();
    let mut other = Vec::new();
    named_connection(&mut other, &mut conn, &log).unwrap();
    assert_eq!(other, [1]);
    assert_eq!(only_mut_param(&mut conn, &log), Ok(true));
    mut_binding(&mut conn, &log).unwrap();
    assert_eq!(log.take(), ["named", "only &mut", "mut binding", "again"]);
    assert_eq!(crate_path(&mut conn), Ok(()));
    assert_eq!(crate_string(&mut conn), Ok(true));
    assert_eq!(owned_connection(conn, log.clone()), Ok(true));
    assert_eq!(log.get(), ["owned"]);
}

// ---------------------------------------------------------------------------
// durable

#[atomic(durable)]
fn durable_work(conn: &mut DbConn, log: &Log) -> Result<(), ShopError> {
    log.push("body ran");
    let l = log.clone();
    on_commit!(conn, l.push("durable hook"));
    Ok(())
}

#[test]
fn durable_runs_as_the_outermost_transaction() {
    let mut conn = db();
    let log = Log::new();
    durable_work(&mut conn, &log).unwrap();
    assert_eq!(log.get(), ["body ran", "durable hook"]);
}

#[test]
fn durable_inside_a_transaction_returns_already_in_transaction_without_running() {
    let mut conn = db();
    let log = Log::new();
    conn.transaction(|conn| -> QueryResult<()> {
        let r = durable_work(conn, &log);
        assert_eq!(r, Err(ShopError::Db(Error::AlreadyInTransaction)));
        // The enclosing transaction is untouched and still open.
        assert!(TransactionHooks::in_transaction(conn));
        Ok(())
    })
    .unwrap();
    assert!(log.get().is_empty());
}

#[atomic]
fn calls_durable(conn: &mut DbConn, log: &Log) -> Result<(), ShopError> {
    durable_work(conn, log)
}

#[test]
fn durable_nested_in_atomic_fails_and_rolls_the_outer_back() {
    let mut conn = db();
    let log = Log::new();
    let r = calls_durable(&mut conn, &log);
    assert_eq!(r, Err(ShopError::Db(Error::AlreadyInTransaction)));
    assert!(log.get().is_empty());
    assert!(!conn.in_transaction());
}

#[test]
fn durable_inside_a_test_transaction_is_allowed_and_its_hooks_fire() {
    let mut conn = db();
    let log = Log::new();
    conn.begin_test_transaction().unwrap();
    durable_work(&mut conn, &log).unwrap();
    assert_eq!(log.get(), ["body ran", "durable hook"]);
}

#[test]
fn durable_inside_test_transaction_closure_is_allowed() {
    let mut conn = db();
    let log = Log::new();
    conn.test_transaction(|conn| -> QueryResult<()> {
        durable_work(conn, &log).map_err(|_| Error::NotFound)?;
        Ok(())
    });
    assert_eq!(log.get(), ["body ran", "durable hook"]);
}

// ---------------------------------------------------------------------------
// on_commit! forms

// Per thread: hooks run on the thread that commits, and tests run in
// parallel threads, so a shared counter would see other tests' runs.
thread_local! {
    static PLAIN_FN_RUNS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    static WITH_FN_DEPTH_ZERO: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn plain_hook_fn() {
    PLAIN_FN_RUNS.with(|c| c.set(c.get() + 1));
}

fn with_hook_fn(conn: &mut DbConn) -> QueryResult<()> {
    let outside = usize::from(!conn.in_transaction());
    WITH_FN_DEPTH_ZERO.with(|c| c.set(c.get() + outside));
    Ok(())
}

#[test]
fn every_on_commit_form_waits_for_commit_and_runs_in_registration_order() {
    let mut conn = db();
    let log = Log::new();
    let (l1, l2, l3, l4, l5, l6) = (
        log.clone(),
        log.clone(),
        log.clone(),
        log.clone(),
        log.clone(),
        log.clone(),
    );
    let closure_var = {
        let log = log.clone();
        move || log.push("closure variable")
    };
    let with_var = {
        let log = log.clone();
        move |c: &mut DbConn| log.push(format!("with variable, in tx: {}", c.in_transaction()))
    };
    conn.transaction(|conn| -> QueryResult<()> {
        on_commit!(conn, l1.push("expression"));
        on_commit!(conn, move || l2.push("closure"));
        on_commit!(conn, move |c| l3
            .push(format!("with closure, in tx: {}", c.in_transaction())));
        on_commit!(conn, closure_var);
        on_commit!(conn, with_var);
        on_commit!(conn, plain_hook_fn);
        on_commit!(conn, with_hook_fn);
        on_commit!(conn, robust, l4.push("robust expression"));
        on_commit!(conn, robust, move || l5.push("robust closure"),);
        on_commit!(conn, l6.push("trailing comma"),);
        assert!(log.get().is_empty(), "nothing before COMMIT");
        assert_eq!(PLAIN_FN_RUNS.with(std::cell::Cell::get), 0);
        Ok(())
    })
    .unwrap();
    assert_eq!(
        log.get(),
        [
            "expression",
            "closure",
            "with closure, in tx: false",
            "closure variable",
            "with variable, in tx: false",
            "robust expression",
            "robust closure",
            "trailing comma",
        ]
    );
    assert_eq!(PLAIN_FN_RUNS.with(std::cell::Cell::get), 1);
    assert_eq!(WITH_FN_DEPTH_ZERO.with(std::cell::Cell::get), 1);
}

#[test]
fn on_commit_hooks_are_dropped_on_rollback() {
    let mut conn = db();
    let log = Log::new();
    let (l1, l2, l3) = (log.clone(), log.clone(), log.clone());
    let r = conn.transaction(|conn| -> QueryResult<()> {
        on_commit!(conn, l1.push("expression"));
        on_commit!(conn, move |_c| l2.push("with"));
        on_commit!(conn, robust, l3.push("robust"));
        Err(Error::RollbackTransaction)
    });
    assert_eq!(r, Err(Error::RollbackTransaction));
    assert!(log.get().is_empty());
}

#[test]
fn robust_hook_panic_is_caught_and_the_next_hooks_run() {
    let mut conn = db();
    let log = Log::new();
    let l = log.clone();
    let ((), logs) = capture_logs(|| {
        conn.transaction(|conn| -> QueryResult<()> {
            on_commit!(conn, robust, || -> () { panic!("robust boom") });
            on_commit!(conn, l.push("after"));
            Ok(())
        })
        .unwrap();
    });
    assert_eq!(log.get(), ["after"]);
    assert!(logs.contains("robust boom"), "{logs}");
}

#[test]
fn result_returning_hook_error_is_logged_with_its_label_and_the_next_hooks_run() {
    let mut conn = db();
    let log = Log::new();
    let l = log.clone();
    let ((), logs) = capture_logs(|| {
        conn.transaction(|conn| -> QueryResult<()> {
            on_commit!(conn, Err::<(), _>("mail server down"));
            on_commit!(conn, move || -> Result<(), String> {
                l.push("ok hook");
                Ok(())
            });
            Ok(())
        })
        .unwrap();
    });
    assert_eq!(log.get(), ["ok hook"]);
    assert!(logs.contains("mail server down"), "{logs}");
    assert!(
        logs.contains("macros.rs:") && logs.contains("Err::<(), _>(\"mail server down\")"),
        "the label names the call site and the expression: {logs}"
    );
}

#[test]
fn outside_a_transaction_the_hook_runs_at_once() {
    let mut conn = db();
    let log = Log::new();
    let l = log.clone();
    on_commit!(&mut conn, l.push("at once"));
    assert_eq!(log.get(), ["at once"]);
}

// M3: the connection as the user holds it.

/// A `&mut` reference, on a binding without `mut`.
fn register_through_a_reference(conn: &mut DbConn, log: &Log, s: &'static str) {
    let l = log.clone();
    on_commit!(conn, l.push(s));
    let hook = log.hook("closure");
    on_commit!(conn, hook);
    let l = log.clone();
    on_commit!(conn, move |c| l
        .push(format!("with, in tx: {}", c.in_transaction())));
}

#[test]
fn on_commit_takes_an_owned_binding_waits_for_commit_and_passes_the_wrapper() {
    let mut conn = db();
    let log = Log::new();
    // An owned `mut` binding in a transaction the wrapper's own manager
    // opened: the hook waits for COMMIT.
    <DbConn as Connection>::TransactionManager::begin_transaction(&mut conn).unwrap();
    let (l1, l2, l3) = (log.clone(), log.clone(), log.clone());
    on_commit!(conn, l1.push("owned expression"));
    on_commit!(conn, robust, l2.push("owned robust"));
    on_commit!(conn, move |c: &mut DbConn| l3
        .push(format!("owned with, in tx: {}", c.in_transaction())));
    on_commit!(conn, plain_hook_fn);
    assert!(log.get().is_empty(), "nothing before COMMIT");
    <DbConn as Connection>::TransactionManager::commit_transaction(&mut conn).unwrap();
    assert_eq!(
        log.take(),
        [
            "owned expression",
            "owned robust",
            "owned with, in tx: false"
        ]
    );
    assert_eq!(PLAIN_FN_RUNS.with(std::cell::Cell::get), 1);
    // Outside a transaction (rule 2): at once.
    let l = log.clone();
    on_commit!(conn, l.push("owned, at once"));
    assert_eq!(log.take(), ["owned, at once"]);
}

#[test]
fn on_commit_takes_a_mut_reference_and_mut_conn() {
    let mut conn = db();
    let log = Log::new();
    conn.transaction(|conn| -> QueryResult<()> {
        register_through_a_reference(conn, &log, "reference");
        let l = log.clone();
        on_commit!(&mut *conn, l.push("&mut *conn"));
        assert!(log.get().is_empty(), "nothing before COMMIT");
        Ok(())
    })
    .unwrap();
    assert_eq!(
        log.take(),
        ["reference", "closure", "with, in tx: false", "&mut *conn"]
    );
    // `&mut conn` on an owned binding.
    <DbConn as Connection>::TransactionManager::begin_transaction(&mut conn).unwrap();
    let l = log.clone();
    on_commit!(&mut conn, l.push("&mut conn"));
    let reference = &mut conn;
    let l = log.clone();
    on_commit!(reference, l.push("a reference binding"));
    let l = log.clone();
    on_commit!(&mut *reference, l.push("&mut *reference"));
    assert!(log.get().is_empty(), "nothing before COMMIT");
    <DbConn as Connection>::TransactionManager::rollback_transaction(&mut conn).unwrap();
    assert!(log.get().is_empty(), "dropped on rollback");
    <DbConn as Connection>::TransactionManager::begin_transaction(&mut conn).unwrap();
    let l = log.clone();
    on_commit!(&mut conn, l.push("&mut conn"));
    <DbConn as Connection>::TransactionManager::commit_transaction(&mut conn).unwrap();
    assert_eq!(log.take(), ["&mut conn"]);
}

#[test]
fn labels_are_the_call_site_and_the_expression_text_shortened() {
    let mut conn = db();
    let log = Log::new();
    let l = log.clone();
    let line = line!() + 3;
    let ((), hooks) = conn.capture_on_commit(Capture::Collect, |conn| {
        conn.transaction(|conn| -> QueryResult<()> {
            on_commit!(conn, l.push("x"));
            on_commit!(conn, plain_hook_fn);
            on_commit!(conn, robust, move || {
                let a_rather_long_variable_name = 1;
                let another_rather_long_variable_name = 2;
                let _ = a_rather_long_variable_name + another_rather_long_variable_name;
            });
            Ok(())
        })
        .unwrap();
    });
    let labels: Vec<String> = hooks.labels().iter().map(|l| l.to_string()).collect();
    assert_eq!(labels.len(), 3);
    let first = hooks.labels()[0];
    assert!(first.location().file().ends_with("macros.rs"), "{first}");
    assert_eq!(first.location().line(), line);
    assert_eq!(first.text(), "l.push(\"x\")");
    assert_eq!(hooks.labels()[1].text(), "plain_hook_fn");
    assert_eq!(hooks.labels()[1].location().line(), line + 1);
    let long = hooks.labels()[2].text();
    assert!(
        long.starts_with("move || { let a_rather_long_variable_name = 1;"),
        "{long}"
    );
    assert!(long.ends_with('…'), "{long}");
    assert_eq!(long.chars().count(), 60, "{long}");
    assert!(!long.contains('\n'), "{long}");
    hooks.run(&mut conn);
    assert_eq!(log.get(), ["x"]);
}

#[test]
fn hooks_registered_by_a_with_hook_run_at_once_depth_first() {
    let mut conn = db();
    let log = Log::new();
    let (l1, l2) = (log.clone(), log.clone());
    conn.transaction(|conn| -> QueryResult<()> {
        on_commit!(conn, move |c| {
            l1.push("first");
            let nested = l1.clone();
            on_commit!(c, nested.push("registered by first"));
            l1.push("first done");
        });
        on_commit!(conn, l2.push("second"));
        Ok(())
    })
    .unwrap();
    assert_eq!(
        log.get(),
        ["first", "registered by first", "first done", "second"]
    );
}

#[test]
fn atomic_called_from_a_with_hook_is_a_fresh_transaction_with_its_own_hooks() {
    let mut conn = db();
    let log = Log::new();
    let l = log.clone();
    conn.transaction(|conn| -> QueryResult<()> {
        on_commit!(conn, move |c: &mut DbConn| {
            l.push("hook starts");
            insert_order(c, &l, 10, false).unwrap();
            l.push("hook ends");
        });
        Ok(())
    })
    .unwrap();
    assert_eq!(log.get(), ["hook starts", "order 10", "hook ends"]);
    assert_eq!(order_ids(&mut conn), [10]);
}

#[test]
fn on_commit_takes_the_crate_path_first() {
    let mut conn = db();
    let log = Log::new();
    let l = log.clone();
    conn.transaction(|conn| -> QueryResult<()> {
        on_commit!(crate = ::diesel_on_commit; conn, l.push("renamed"));
        Ok(())
    })
    .unwrap();
    assert_eq!(log.get(), ["renamed"]);
}

#[test]
fn on_commit_leaves_the_connection_usable_afterwards() {
    // The connection argument is re-borrowed, not moved.
    let mut conn = db();
    let counter = Arc::new(AtomicUsize::new(0));
    conn.transaction(|conn| -> QueryResult<()> {
        let c = counter.clone();
        on_commit!(conn, {
            c.fetch_add(1, Ordering::SeqCst);
        });
        let c = counter.clone();
        on_commit!(conn, {
            c.fetch_add(1, Ordering::SeqCst);
        });
        orders::table.count().get_result::<i64>(conn)?;
        Ok(())
    })
    .unwrap();
    assert_eq!(counter.load(Ordering::SeqCst), 2);
}

// ---------------------------------------------------------------------------
// Panics in an #[atomic] body

#[atomic]
fn panics_midway(conn: &mut DbConn, log: &Log) -> QueryResult<()> {
    insert_order(conn, log, 1, false)?;
    panic!("boom in the body");
}

#[test]
fn panic_in_atomic_body_rolls_back_and_the_next_transaction_is_outermost() {
    let mut conn = db();
    let log = Log::new();
    let message = expect_panic(|| panics_midway(&mut conn, &log));
    assert_eq!(message, "boom in the body");
    assert!(!conn.in_transaction());
    assert!(
        order_ids(&mut conn).is_empty(),
        "the insert was rolled back"
    );
    // A real outermost transaction: its hooks fire at its COMMIT.
    insert_order(&mut conn, &log, 2, false).unwrap();
    assert_eq!(log.get(), ["order 2"]);
    assert_eq!(order_ids(&mut conn), [2]);
}

#[atomic]
fn panics_after_registering_hooks(
    conn: &mut DbConn,
    log: &Log,
    hook_panics: bool,
) -> QueryResult<()> {
    let hook = log.hook("on_commit");
    on_commit!(conn, hook);
    if hook_panics {
        conn.on_rollback(|| -> () { panic!("on_rollback boom") });
    }
    conn.on_rollback(log.hook("on_rollback"));
    panic!("body boom");
}

#[test]
fn panic_in_atomic_body_runs_on_rollback_hooks_and_drops_on_commit_ones() {
    let mut conn = db();
    let log = Log::new();
    let message = expect_panic(|| panics_after_registering_hooks(&mut conn, &log, false));
    assert_eq!(message, "body boom");
    assert_eq!(log.get(), ["on_rollback"]);
    assert!(!conn.in_transaction());
}

#[test]
fn panic_in_atomic_body_wins_over_a_panicking_on_rollback_hook() {
    let mut conn = db();
    let log = Log::new();
    let (message, logs) =
        capture_logs(|| expect_panic(|| panics_after_registering_hooks(&mut conn, &log, true)));
    assert_eq!(message, "body boom", "the body's panic is the one resumed");
    assert_eq!(
        log.get(),
        ["on_rollback"],
        "the hooks after the panicking one still ran"
    );
    assert!(logs.contains("on_rollback boom"), "{logs}");
    assert!(!conn.in_transaction());
    insert_order(&mut conn, &log, 1, false).unwrap();
    assert_eq!(log.get(), ["on_rollback", "order 1"]);
}

#[test]
fn panic_in_atomic_body_inside_a_test_transaction_keeps_the_test_transaction() {
    let mut conn = db();
    let log = Log::new();
    conn.begin_test_transaction().unwrap();
    insert_order(&mut conn, &log, 5, false).unwrap();
    let message = expect_panic(|| panics_midway(&mut conn, &log));
    assert_eq!(message, "boom in the body");
    assert!(!conn.in_transaction());
    // The test transaction is still open below: the first insert is there,
    // and a user transaction is still a real outermost one for hooks.
    assert_eq!(order_ids(&mut conn), [5]);
    insert_order(&mut conn, &log, 2, false).unwrap();
    assert_eq!(log.get(), ["order 5", "order 2"]);
    let depth = AnsiTransactionManager::transaction_manager_status_mut(conn.inner_mut())
        .transaction_depth()
        .unwrap()
        .map(|d| d.get());
    assert_eq!(depth, Some(1));
}

#[atomic]
fn plain_panics(conn: &mut SqliteConnection) -> QueryResult<()> {
    diesel::sql_query("INSERT INTO orders (id, customer, total) VALUES (9, 'p', 1)")
        .execute(conn)?;
    panic!("plain boom");
}

fn plain_depth(conn: &mut SqliteConnection) -> Option<u32> {
    AnsiTransactionManager::transaction_manager_status_mut(conn)
        .transaction_depth()
        .unwrap()
        .map(|d| d.get())
}

#[test]
fn panic_in_atomic_body_on_a_plain_connection_restores_the_depth() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    create_tables(&mut conn);
    let message = expect_panic(|| plain_panics(&mut conn));
    assert_eq!(message, "plain boom");
    assert_eq!(plain_depth(&mut conn), None);
    assert!(order_ids(&mut conn).is_empty());
}

// ---------------------------------------------------------------------------
// Plain connections

#[atomic]
fn plain_insert(conn: &mut SqliteConnection, id: i32, fail: bool) -> QueryResult<Option<u32>> {
    diesel::insert_into(orders::table)
        .values((
            orders::id.eq(id),
            orders::customer.eq("p"),
            orders::total.eq(1),
        ))
        .execute(conn)?;
    let depth = plain_depth(conn);
    if fail {
        return Err(Error::RollbackTransaction);
    }
    Ok(depth)
}

#[test]
fn atomic_on_a_plain_sqlite_connection_commits_and_rolls_back() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    create_tables(&mut conn);
    assert_eq!(plain_insert(&mut conn, 1, false), Ok(Some(1)));
    assert_eq!(
        plain_insert(&mut conn, 2, true),
        Err(Error::RollbackTransaction)
    );
    assert_eq!(order_ids(&mut conn), [1]);
    assert_eq!(plain_depth(&mut conn), None);
    // Nested on a plain connection: a savepoint.
    conn.transaction(|conn| -> QueryResult<()> {
        assert_eq!(plain_insert(conn, 3, false), Ok(Some(2)));
        Ok(())
    })
    .unwrap();
    assert_eq!(order_ids(&mut conn), [1, 3]);
}

// ---------------------------------------------------------------------------
// r2d2 guards

#[cfg(feature = "r2d2")]
mod pooled {
    use super::*;
    use diesel::r2d2::{ConnectionManager, Pool, PooledConnection};

    type Guard = PooledConnection<ConnectionManager<DbConn>>;

    fn pool() -> Pool<ConnectionManager<DbConn>> {
        let pool = Pool::builder()
            .max_size(1)
            .build(ConnectionManager::<DbConn>::new(":memory:"))
            .unwrap();
        create_tables(&mut *pool.get().unwrap());
        pool
    }

    #[atomic]
    fn through_guard(conn: &mut Guard, log: &Log, id: i32, fail: bool) -> QueryResult<()> {
        let hooked: &mut DbConn = conn;
        insert_order(hooked, log, id, false)?;
        if fail {
            return Err(Error::RollbackTransaction);
        }
        Ok(())
    }

    #[atomic]
    fn guard_panics(conn: &mut Guard, log: &Log) -> QueryResult<()> {
        insert_order(conn, log, 7, false)?;
        conn.on_rollback(log.hook("rolled back"));
        panic!("guard boom");
    }

    #[test]
    fn atomic_through_an_r2d2_guard_commits_rolls_back_and_survives_a_panic() {
        let pool = pool();
        let mut guard = pool.get().unwrap();
        let log = Log::new();
        through_guard(&mut guard, &log, 1, false).unwrap();
        assert_eq!(log.take(), ["order 1"]);
        assert_eq!(
            through_guard(&mut guard, &log, 2, true),
            Err(Error::RollbackTransaction)
        );
        assert!(log.get().is_empty());

        let message = expect_panic(|| guard_panics(&mut guard, &log));
        assert_eq!(message, "guard boom");
        assert_eq!(log.take(), ["rolled back"]);
        let conn: &mut DbConn = &mut guard;
        assert!(!conn.in_transaction());
        // The next transaction through the guard is outermost: hooks fire.
        through_guard(&mut guard, &log, 3, false).unwrap();
        assert_eq!(log.get(), ["order 3"]);
        assert_eq!(order_ids(&mut *guard), [1, 3]);
    }

    #[test]
    fn on_commit_takes_an_r2d2_guard_and_a_reference_to_one() {
        let pool = pool();
        let mut guard = pool.get().unwrap();
        let log = Log::new();
        // The guard as it is: `DerefMut` reaches the wrapper (M3).
        <DbConn as Connection>::TransactionManager::begin_transaction(&mut *guard).unwrap();
        let (l1, l2) = (log.clone(), log.clone());
        on_commit!(guard, l1.push("guard"));
        on_commit!(guard, move |c: &mut DbConn| l2
            .push(format!("guard with, in tx: {}", c.in_transaction())));
        assert!(log.get().is_empty(), "nothing before COMMIT");
        <DbConn as Connection>::TransactionManager::commit_transaction(&mut *guard).unwrap();
        assert_eq!(log.take(), ["guard", "guard with, in tx: false"]);

        // `&mut Guard`, as the guard's own `transaction` passes it.
        guard
            .transaction(|conn: &mut Guard| -> QueryResult<()> {
                let l = log.clone();
                on_commit!(conn, l.push("&mut guard"));
                let l = log.clone();
                on_commit!(&mut *conn, l.push("&mut *guard"));
                assert!(log.get().is_empty(), "nothing before COMMIT");
                Ok(())
            })
            .unwrap();
        assert_eq!(log.take(), ["&mut guard", "&mut *guard"]);

        let r = guard.transaction(|conn| -> QueryResult<()> {
            let l = log.clone();
            on_commit!(conn, l.push("rolled back"));
            Err(Error::RollbackTransaction)
        });
        assert_eq!(r, Err(Error::RollbackTransaction));
        assert!(log.get().is_empty());

        // Outside a transaction: at once (rule 2).
        let l = log.clone();
        on_commit!(guard, l.push("at once"));
        assert_eq!(log.take(), ["at once"]);
    }
}

// ---------------------------------------------------------------------------
// Nesting on PostgreSQL and MySQL (savepoints differ by backend)

/// The same nesting tests for one server backend: `#[atomic]` functions
/// calling each other, the inner one rolling back to its savepoint.
macro_rules! server_nesting_tests {
    ($module:ident, $feature:literal, $conn:ty, $connect:path) => {
        #[cfg(feature = $feature)]
        mod $module {
            use super::*;
            use diesel::sql_types::BigInt;

            type ServerConn = HookedConnection<$conn>;

            /// A table of its own: tests run in parallel on one database.
            struct Table(String);

            impl Table {
                fn new(conn: &mut ServerConn) -> Self {
                    let name = common::unique("macros_orders");
                    diesel::sql_query(format!("CREATE TABLE {name} (id INTEGER PRIMARY KEY)"))
                        .execute(conn)
                        .unwrap();
                    Table(name)
                }

                fn count(&self, conn: &mut ServerConn) -> i64 {
                    diesel::select(diesel::dsl::sql::<BigInt>(&format!(
                        "(SELECT COUNT(*) FROM {})",
                        self.0
                    )))
                    .get_result(conn)
                    .unwrap()
                }

                fn drop_table(self, conn: &mut ServerConn) {
                    diesel::sql_query(format!("DROP TABLE {}", self.0))
                        .execute(conn)
                        .unwrap();
                }
            }

            #[atomic]
            fn insert(
                conn: &mut ServerConn,
                table: &Table,
                log: &Log,
                id: i32,
                fail: bool,
            ) -> QueryResult<()> {
                diesel::sql_query(format!("INSERT INTO {} (id) VALUES ({id})", table.0))
                    .execute(conn)?;
                let log = log.clone();
                on_commit!(conn, log.push(format!("order {id}")));
                if fail {
                    return Err(Error::RollbackTransaction);
                }
                Ok(())
            }

            #[atomic]
            fn outer(conn: &mut ServerConn, table: &Table, log: &Log) -> QueryResult<()> {
                let hook = log.clone();
                on_commit!(conn, hook.push("outer"));
                insert(conn, table, log, 1, false)?;
                assert_eq!(
                    insert(conn, table, log, 2, true),
                    Err(Error::RollbackTransaction)
                );
                // A failed statement inside a savepoint, rolled back with it:
                // the outer transaction goes on (PostgreSQL needs the savepoint).
                assert!(insert(conn, table, log, 1, false).is_err());
                insert(conn, table, log, 3, false)?;
                assert!(log.get().is_empty(), "nothing before the outermost COMMIT");
                Ok(())
            }

            #[atomic(durable)]
            fn durable(_conn: &mut ServerConn, log: &Log) -> QueryResult<()> {
                log.push("durable body");
                Ok(())
            }

            #[atomic]
            fn panics(conn: &mut ServerConn, table: &Table, log: &Log) -> QueryResult<()> {
                insert(conn, table, log, 7, false)?;
                panic!("server boom")
            }

            #[test]
            fn nested_atomic_inner_rollbacks_drop_their_hooks_and_the_outer_fires() {
                let mut conn = $connect();
                let table = Table::new(&mut conn);
                let log = Log::new();
                outer(&mut conn, &table, &log).unwrap();
                assert_eq!(log.get(), ["outer", "order 1", "order 3"]);
                assert_eq!(table.count(&mut conn), 2);
                table.drop_table(&mut conn);
            }

            #[test]
            fn durable_nested_is_refused_and_a_panic_leaves_the_connection_usable() {
                let mut conn = $connect();
                let table = Table::new(&mut conn);
                let log = Log::new();
                let r = conn.transaction(|conn| durable(conn, &log));
                assert_eq!(r, Err(Error::AlreadyInTransaction));
                assert!(log.take().is_empty());
                let message = expect_panic(|| panics(&mut conn, &table, &log));
                assert_eq!(message, "server boom");
                assert!(!conn.in_transaction());
                insert(&mut conn, &table, &log, 8, false).unwrap();
                assert_eq!(log.get(), ["order 8"]);
                assert_eq!(table.count(&mut conn), 1);
                table.drop_table(&mut conn);
            }
        }
    };
}

server_nesting_tests!(postgres, "postgres", PgConnection, common::pg);
server_nesting_tests!(mysql, "mysql", MysqlConnection, common::mysql);
