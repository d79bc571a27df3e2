//! Outbox hooks (CONTRACT.md, O1, O2, O5, O6, O9, O11), written once,
//! generic over [`OutboxDb`], and stamped out as `#[test]`s by
//! [`outbox_tests!`] in tests/outbox.rs (SQLite), tests/postgres.rs and
//! tests/mysql.rs: every rule runs on the three real databases.
//!
//! Every generic test here must be listed in [`outbox_tests!`]: one that is
//! not is never called, and `-D warnings` (dead code) says so.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::connection::{Instrumentation, InstrumentationEvent, LoadConnection, SimpleConnection};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error};
use diesel_on_commit::outbox::{
    Drain, Outbox, OutboxAdmin, OutboxBackend, OutboxContext, OutboxError, OutboxHandlers,
    OutboxHook, OutboxId, OutboxOptions, OutboxRecord, OutboxTable,
};
use diesel_on_commit::{Capture, HookedConnection, OutsideTransaction};

use crate::common::{capture_logs, expect_panic, Log};

/// What the generic outbox tests need of a backend.
pub trait OutboxDb: Connection<Backend: OutboxBackend> + LoadConnection + Send + 'static {
    /// Keeps the test's database (or schema) alive.
    type Guard;
    /// Rows in one flush statement: the bind limit over 5 binds a row.
    const MAX_ROWS: usize;
    /// SQL that makes every later INSERT into the outbox table fail with a
    /// unique violation (a trigger inserting a duplicate into `guard`).
    const BREAK_FLUSH: &'static str;
    /// A fresh database with the outbox table and `items (id)`.
    fn fresh() -> (Self::Guard, HookedConnection<Self>);
    /// Another connection to the same database.
    fn connect(guard: &Self::Guard) -> HookedConnection<Self>;
    /// Milliseconds until each row of the default table is due, by id.
    fn due_in_ms(conn: &mut HookedConnection<Self>) -> Vec<i64>;
    /// `SELECT COUNT(*) FROM items`.
    fn items(conn: &mut HookedConnection<Self>) -> i64;
    /// The schema (or database) the test's tables are in.
    fn own_schema(conn: &mut HookedConnection<Self>) -> String;
}

/// `#[test] fn rule() { outbox_rules::rule::<$db>() }` for every rule below.
macro_rules! outbox_tests {
    ($db:ty) => {
        $crate::outbox_rules::outbox_tests!(@stamp $db:
            rows_are_written_just_before_commit_and_not_seen_before,
            a_rolled_back_transaction_writes_no_row,
            savepoints_discard_and_merge_rows,
            rows_registered_by_before_commit_hooks_are_flushed,
            a_before_commit_error_writes_no_row,
            a_transaction_without_rows_sends_no_outbox_statement,
            a_failed_flush_rolls_back_and_returns_the_database_error,
            outside_a_transaction_the_row_is_written_at_once,
            outside_a_transaction_the_policy_applies_first,
            hooks_after_commit_are_exempt_from_the_policy,
            invalid_registrations_are_errors_at_the_call,
            ids_are_client_made_uuid_v7,
            dedupe_within_a_transaction_first_surviving_registration_wins,
            dedupe_across_transactions_covers_pending_rows_only,
            test_transaction_rows_are_written_at_the_users_release,
            drain_deletes_on_ok_and_gives_the_context,
            drain_failed_attempts_back_off_then_die,
            drain_cancel_snooze_undecodable_panic_and_unknown_kinds,
            drain_runs_rows_that_become_due_only_with_all,
            failed_keyed_row_is_superseded_by_a_newer_pending_one,
            stats_count_per_kind_and_age_the_oldest_due_row,
            capture_lists_written_rows_and_changes_nothing,
            flush_chunks_under_the_bind_limit,
            migrations_are_idempotent_and_versioned,
            custom_table_names_are_validated_and_quoted,
            payload_is_serde_json_text_byte_for_byte,
            handlers_refuse_a_kind_registered_twice,
        );
    };
    (@stamp $db:ty: $($rule:ident),* $(,)?) => {
        $(
            #[test]
            fn $rule() {
                $crate::outbox_rules::$rule::<$db>()
            }
        )*
    };
}
pub(crate) use outbox_tests;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Email {
    pub to: String,
}
impl OutboxHook for Email {
    const KIND: &'static str = "test.email";
}

fn email(to: &str) -> Email {
    Email { to: to.into() }
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Job {
    pub n: i32,
}
impl OutboxHook for Job {
    const KIND: &'static str = "test.job";
}

/// Same shape as `Job`, another kind no handler in these tests knows.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Orphan {
    pub n: i32,
}
impl OutboxHook for Orphan {
    const KIND: &'static str = "test.orphan";
}

/// The payload `Job` cannot decode.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct NotAJob {
    pub text: String,
}
impl OutboxHook for NotAJob {
    const KIND: &'static str = "test.job";
}

/// Refused by the flush once [`OutboxDb::BREAK_FLUSH`] ran.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Bad;
impl OutboxHook for Bad {
    const KIND: &'static str = "test.bad";
}

fn rows<D: OutboxDb>(conn: &mut HookedConnection<D>) -> Vec<OutboxRecord> {
    OutboxAdmin::rows(conn).expect("OutboxAdmin::rows")
}

fn tos<D: OutboxDb>(conn: &mut HookedConnection<D>) -> Vec<String> {
    rows(conn)
        .into_iter()
        .map(|r| serde_json::from_str::<Email>(&r.payload).map_or(r.payload, |e| e.to))
        .collect()
}

fn items<D: OutboxDb>(conn: &mut HookedConnection<D>) -> i64 {
    D::items(conn)
}

/// The statements a connection sends, as text.
#[derive(Clone, Default)]
struct Statements(Arc<Mutex<Vec<String>>>);

impl Statements {
    fn watch<D: OutboxDb>(conn: &mut HookedConnection<D>) -> Self {
        let statements = Self::default();
        let log = statements.0.clone();
        conn.set_instrumentation(move |event: InstrumentationEvent<'_>| {
            if let InstrumentationEvent::StartQuery { query, .. } = event {
                let text = query.to_string();
                log.lock().unwrap().push(text.chars().take(200).collect());
            }
        });
        statements
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    fn outbox_inserts(&self) -> usize {
        self.take()
            .iter()
            .filter(|s| s.starts_with("INSERT INTO") && s.contains("outbox"))
            .count()
    }
}

fn no_instrumentation<D: OutboxDb>(conn: &mut HookedConnection<D>) {
    conn.set_instrumentation(None::<Box<dyn Instrumentation>>);
}

fn email_handlers(log: &Log) -> OutboxHandlers {
    let log = log.clone();
    OutboxHandlers::builder()
        .handle(move |job: Email, _ctx: OutboxContext| {
            log.push(job.to);
            Ok::<(), OutboxError>(())
        })
        .build()
        .unwrap()
}

// ---------------------------------------------------------------------------
// O1: exactly the committed work.
// ---------------------------------------------------------------------------

pub fn rows_are_written_just_before_commit_and_not_seen_before<D: OutboxDb>() {
    let (_db, mut conn) = D::fresh();
    let id = conn
        .transaction(|c| {
            let id = c.on_commit_outbox(email("a"))?;
            assert!(
                rows(c).is_empty(),
                "a transaction does not see its own rows"
            );
            Ok::<_, Error>(id)
        })
        .unwrap();
    let written = rows(&mut conn);
    assert_eq!(written.len(), 1);
    assert_eq!(written[0].id, id);
    assert_eq!(written[0].kind, "test.email");
    assert_eq!(written[0].state, "pending");
    assert_eq!(written[0].attempt, 0);
    assert_eq!(written[0].max_attempts, 20);
    assert_eq!(written[0].payload, r#"{"to":"a"}"#);
}

pub fn a_rolled_back_transaction_writes_no_row<D: OutboxDb>() {
    let (_db, mut conn) = D::fresh();
    let result = conn.transaction::<(), _, _>(|c| {
        c.on_commit_outbox(email("a"))?;
        c.batch_execute("INSERT INTO items VALUES (1)")?;
        Err(Error::RollbackTransaction)
    });
    assert!(matches!(result, Err(Error::RollbackTransaction)));
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        conn.transaction::<(), Error, _>(|c| {
            c.on_commit_outbox(email("b"))?;
            panic!("body panics")
        })
    }));
    assert!(panicked.is_err());
    assert!(rows(&mut conn).is_empty());
    assert_eq!(items(&mut conn), 0);
}

pub fn savepoints_discard_and_merge_rows<D: OutboxDb>() {
    let (_db, mut conn) = D::fresh();
    conn.transaction(|c| {
        c.on_commit_outbox(email("outer 1"))?;
        let _ = c.transaction::<(), _, _>(|c| {
            c.on_commit_outbox(email("rolled back"))?;
            c.transaction(|c| {
                c.on_commit_outbox(email("released into the rolled back one"))?;
                Ok::<_, Error>(())
            })?;
            Err(Error::RollbackTransaction)
        });
        c.transaction(|c| {
            c.on_commit_outbox(email("released"))?;
            c.transaction(|c| {
                c.on_commit_outbox(email("released twice"))?;
                Ok::<_, Error>(())
            })
        })?;
        c.on_commit_outbox(email("outer 2"))?;
        Ok::<_, Error>(())
    })
    .unwrap();
    let mut written = tos(&mut conn);
    written.sort();
    assert_eq!(
        written,
        ["outer 1", "outer 2", "released", "released twice"]
    );
}

pub fn rows_registered_by_before_commit_hooks_are_flushed<D: OutboxDb>() {
    let (_db, mut conn) = D::fresh();
    conn.transaction(|c| {
        c.before_commit(|c| {
            c.on_commit_outbox(email("from before_commit"))?;
            c.before_commit(|c| {
                // Rows are written after the last before_commit hook.
                assert!(rows(c).is_empty());
                c.on_commit_outbox(email("from a nested before_commit"))
                    .map(drop)
            });
            Ok(())
        });
        Ok::<_, Error>(())
    })
    .unwrap();
    let mut written = tos(&mut conn);
    written.sort();
    assert_eq!(
        written,
        ["from a nested before_commit", "from before_commit"]
    );
}

pub fn a_before_commit_error_writes_no_row<D: OutboxDb>() {
    let (_db, mut conn) = D::fresh();
    let result = conn.transaction::<(), Error, _>(|c| {
        c.on_commit_outbox(email("a"))?;
        c.before_commit(|_| Err(Error::NotFound));
        Ok(())
    });
    assert!(matches!(result, Err(Error::NotFound)));
    assert!(rows(&mut conn).is_empty());
}

pub fn a_transaction_without_rows_sends_no_outbox_statement<D: OutboxDb>() {
    let (_db, mut conn) = D::fresh();
    let statements = Statements::watch(&mut conn);
    conn.transaction(|c| {
        c.batch_execute("INSERT INTO items VALUES (1)")?;
        c.on_commit(|| ());
        c.transaction(|c| c.batch_execute("INSERT INTO items VALUES (2)"))
    })
    .unwrap();
    let sent = statements.take();
    assert!(
        sent.iter().all(|s| !s.contains("outbox")),
        "no outbox statement expected: {sent:?}"
    );
    // One transaction with rows: one INSERT, just before COMMIT.
    conn.transaction(|c| {
        c.on_commit_outbox(email("a"))?;
        c.on_commit_outbox(email("b"))?;
        Ok::<_, Error>(())
    })
    .unwrap();
    let sent = statements.take();
    let insert = sent
        .iter()
        .position(|s| s.starts_with("INSERT INTO") && s.contains("outbox"))
        .expect("the flush");
    assert_eq!(sent.len(), insert + 2, "the flush, then COMMIT: {sent:?}");
    no_instrumentation(&mut conn);
}

pub fn a_failed_flush_rolls_back_and_returns_the_database_error<D: OutboxDb>() {
    let (_db, mut conn) = D::fresh();
    conn.batch_execute(D::BREAK_FLUSH).unwrap();
    let log = Log::new();
    let result = conn.transaction::<(), Error, _>(|c| {
        c.batch_execute("INSERT INTO items VALUES (1)")?;
        c.on_commit(log.hook("on_commit"));
        c.on_rollback(log.hook("on_rollback"));
        c.on_commit_outbox(Bad)?;
        Ok(())
    });
    let error = result.expect_err("the flush must fail");
    assert!(
        matches!(
            error,
            Error::DatabaseError(DatabaseErrorKind::UniqueViolation, _)
        ),
        "{error:?}"
    );
    assert_eq!(log.take(), ["on_rollback"]);
    assert!(!conn.in_transaction());
    assert_eq!(items(&mut conn), 0, "the body's work was rolled back");
    // The connection goes on; outside a transaction the error is the call's.
    conn.transaction(|c| c.batch_execute("INSERT INTO items VALUES (2)"))
        .unwrap();
    let outside = conn
        .on_commit_outbox(Bad)
        .expect_err("outside: the INSERT's error");
    assert!(matches!(
        outside,
        Error::DatabaseError(DatabaseErrorKind::UniqueViolation, _)
    ));
    assert_eq!(items(&mut conn), 1);
}

// ---------------------------------------------------------------------------
// O2: outside a transaction.
// ---------------------------------------------------------------------------

pub fn outside_a_transaction_the_row_is_written_at_once<D: OutboxDb>() {
    let (_db, mut conn) = D::fresh();
    let id = conn.on_commit_outbox(email("now")).unwrap();
    assert_eq!(rows(&mut conn)[0].id, id);
    let (result, logs) = capture_logs(|| {
        conn.set_outside_transaction(OutsideTransaction::WarnAndRun);
        conn.on_commit_outbox(email("warned"))
    });
    result.unwrap();
    assert!(logs.contains("WARN"), "{logs}");
    assert!(logs.contains("registered outside a transaction"), "{logs}");
    assert_eq!(tos(&mut conn), ["now", "warned"]);
}

pub fn outside_a_transaction_the_policy_applies_first<D: OutboxDb>() {
    let (_db, mut conn) = D::fresh();
    conn.set_outside_transaction(OutsideTransaction::Panic);
    let message = expect_panic(|| conn.on_commit_outbox(email("refused")));
    assert!(message.contains("outside a transaction"), "{message}");
    assert!(message.contains("Email"), "names the label: {message}");
    assert!(rows(&mut conn).is_empty());
    // In a transaction the policy does not matter.
    conn.transaction(|c| c.on_commit_outbox(email("in")).map(drop))
        .unwrap();
    assert_eq!(tos(&mut conn), ["in"]);
}

pub fn hooks_after_commit_are_exempt_from_the_policy<D: OutboxDb>() {
    let (_db, mut conn) = D::fresh();
    conn.set_outside_transaction(OutsideTransaction::Panic);
    conn.transaction(|c| {
        c.on_commit_with(|c: &mut HookedConnection<D>| {
            c.on_commit_outbox(email("from a hook")).unwrap();
        });
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(tos(&mut conn), ["from a hook"]);
}

// ---------------------------------------------------------------------------
// O1: errors at the call.
// ---------------------------------------------------------------------------

#[derive(serde::Serialize, serde::Deserialize)]
pub struct EmptyKind;
impl OutboxHook for EmptyKind {
    const KIND: &'static str = "";
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct SpaceKind;
impl OutboxHook for SpaceKind {
    const KIND: &'static str = "has space";
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct QuoteKind;
impl OutboxHook for QuoteKind {
    const KIND: &'static str = "x'; DROP TABLE items; --";
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct LongKind;
impl OutboxHook for LongKind {
    const KIND: &'static str = "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk";
}

/// serde_json refuses maps whose keys are not strings.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Unserializable {
    map: HashMap<Vec<u8>, i32>,
}
impl OutboxHook for Unserializable {
    const KIND: &'static str = "test.unserializable";
}

fn refused_message(result: QueryResult<OutboxId>) -> String {
    match result {
        Err(Error::SerializationError(e)) => e.to_string(),
        other => panic!("expected a SerializationError, got {other:?}"),
    }
}

pub fn invalid_registrations_are_errors_at_the_call<D: OutboxDb>() {
    assert_eq!(LongKind::KIND.len(), 129);
    let (_db, mut conn) = D::fresh();
    conn.transaction(|c| {
        let m = refused_message(c.on_commit_outbox(EmptyKind));
        assert!(m.contains("invalid KIND"), "{m}");
        let m = refused_message(c.on_commit_outbox(SpaceKind));
        assert!(m.contains("invalid KIND \"has space\""), "{m}");
        let m = refused_message(c.on_commit_outbox(QuoteKind));
        assert!(m.contains("invalid KIND"), "{m}");
        let m = refused_message(c.on_commit_outbox(LongKind));
        assert!(m.contains("1 to 128 characters"), "{m}");
        let m = refused_message(c.on_commit_outbox(Unserializable {
            map: HashMap::from([(vec![1], 1)]),
        }));
        assert!(m.contains("does not serialize to JSON"), "{m}");
        let big = Email {
            to: "x".repeat(1024 * 1024),
        };
        let m = refused_message(c.on_commit_outbox(big));
        assert!(m.contains("over max_payload (1048576 bytes)"), "{m}");
        let m = refused_message(
            c.on_commit_outbox_opts(email("small"), OutboxOptions::new().max_payload(8)),
        );
        assert!(m.contains("over max_payload (8 bytes)"), "{m}");
        let m = refused_message(
            c.on_commit_outbox_opts(email("k"), OutboxOptions::new().key("k".repeat(256))),
        );
        assert!(m.contains("dedupe key of 256 characters"), "{m}");
        let m = refused_message(c.on_commit_outbox_opts(
            email("late"),
            OutboxOptions::new().delay(Duration::from_secs(3651 * 86_400)),
        ));
        assert!(m.contains("delay"), "{m}");
        // The transaction is unharmed: errors at the call, never a failed COMMIT.
        c.on_commit_outbox_opts(email("fine"), OutboxOptions::new().key("k".repeat(255)))?;
        c.batch_execute("INSERT INTO items VALUES (1)")
    })
    .unwrap();
    assert_eq!(tos(&mut conn), ["fine"]);
    assert_eq!(items(&mut conn), 1);
}

pub fn ids_are_client_made_uuid_v7<D: OutboxDb>() {
    let (_db, mut conn) = D::fresh();
    let ids = conn
        .transaction(|c| {
            (0..5)
                .map(|i| c.on_commit_outbox(Job { n: i }))
                .collect::<QueryResult<Vec<_>>>()
        })
        .unwrap();
    for id in &ids {
        assert_eq!(id.as_uuid().get_version_num(), 7);
    }
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 5);
    let written: Vec<OutboxId> = rows(&mut conn).into_iter().map(|r| r.id).collect();
    assert_eq!(written, sorted);
}

// ---------------------------------------------------------------------------
// O6: dedupe.
// ---------------------------------------------------------------------------

pub fn dedupe_within_a_transaction_first_surviving_registration_wins<D: OutboxDb>() {
    let (_db, mut conn) = D::fresh();
    let key = || OutboxOptions::new().key("order-1");
    let (dropped, winner, loser, other_kind) = conn
        .transaction(|c| {
            let dropped = c
                .transaction::<_, Error, _>(|c| {
                    let id = c.on_commit_outbox_opts(email("rolled back"), key())?;
                    Err(Error::RollbackTransaction).map(|()| id)
                })
                .err()
                .map(|_| ());
            let winner = c.transaction(|c| c.on_commit_outbox_opts(email("first"), key()))?;
            let loser = c.on_commit_outbox_opts(email("second"), key())?;
            let other_kind = c.on_commit_outbox_opts(Job { n: 1 }, key())?;
            c.on_commit_outbox_opts(email("other key"), OutboxOptions::new().key("order-2"))?;
            Ok::<_, Error>((dropped, winner, loser, other_kind))
        })
        .unwrap();
    assert!(dropped.is_some());
    let written = rows(&mut conn);
    let ids: Vec<OutboxId> = written.iter().map(|r| r.id).collect();
    assert!(ids.contains(&winner));
    assert!(ids.contains(&other_kind), "keys are per kind");
    assert!(
        !ids.contains(&loser),
        "a dropped registration's id never exists"
    );
    let mut texts = tos(&mut conn);
    texts.sort();
    assert_eq!(texts, ["first", "other key", r#"{"n":1}"#]);
    assert_eq!(
        written
            .iter()
            .find(|r| r.id == winner)
            .and_then(|r| r.key.clone()),
        Some("order-1".to_owned())
    );
}

pub fn dedupe_across_transactions_covers_pending_rows_only<D: OutboxDb>() {
    let (_db, mut conn) = D::fresh();
    let key = || OutboxOptions::new().key("order-1");
    let first = conn
        .transaction(|c| c.on_commit_outbox_opts(email("1"), key()))
        .unwrap();
    let second = conn
        .transaction(|c| c.on_commit_outbox_opts(email("2"), key()))
        .unwrap();
    let outside = conn.on_commit_outbox_opts(email("3"), key()).unwrap();
    let ids: Vec<OutboxId> = rows(&mut conn).iter().map(|r| r.id).collect();
    assert_eq!(ids, [first], "{second} and {outside} were skipped");
    // While the keyed row runs, a registration makes a new pending row.
    conn.batch_execute("UPDATE diesel_on_commit_outbox SET state = 'running'")
        .unwrap();
    let fourth = conn
        .transaction(|c| c.on_commit_outbox_opts(email("4"), key()))
        .unwrap();
    let fifth = conn
        .transaction(|c| c.on_commit_outbox_opts(email("5"), key()))
        .unwrap();
    let ids: Vec<OutboxId> = rows(&mut conn).iter().map(|r| r.id).collect();
    assert_eq!(ids, [first, fourth], "{fifth} was skipped");
    // Dead rows do not hold the key either.
    conn.batch_execute("UPDATE diesel_on_commit_outbox SET state = 'dead'")
        .unwrap();
    let sixth = conn.on_commit_outbox_opts(email("6"), key()).unwrap();
    assert_eq!(rows(&mut conn).len(), 3);
    assert!(rows(&mut conn).iter().any(|r| r.id == sixth));
}

// ---------------------------------------------------------------------------
// O11: test transactions, drain, captures.
// ---------------------------------------------------------------------------

pub fn test_transaction_rows_are_written_at_the_users_release<D: OutboxDb>() {
    let (_db, mut conn) = D::fresh();
    let log = Log::new();
    let handlers = email_handlers(&log);
    conn.test_transaction::<_, Error, _>(|c| {
        c.on_commit_outbox(email("baseline, at once"))?;
        c.transaction(|c| {
            c.on_commit_outbox(email("user transaction"))?;
            assert_eq!(tos(c), ["baseline, at once"]);
            Ok::<_, Error>(())
        })?;
        assert_eq!(tos(c), ["baseline, at once", "user transaction"]);
        assert!(log.get().is_empty(), "nothing runs by itself");
        let report = handlers.drain(c, Drain::Due)?;
        assert_eq!(report.succeeded, 2);
        assert_eq!(log.take(), ["baseline, at once", "user transaction"]);
        assert!(rows(c).is_empty());
        c.on_commit_outbox(email("left for the rollback"))?;
        Ok(())
    });
    assert!(
        rows(&mut conn).is_empty(),
        "the test transaction rolled back"
    );
}

pub fn drain_deletes_on_ok_and_gives_the_context<D: OutboxDb>() {
    let (_db, mut conn) = D::fresh();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let handlers = OutboxHandlers::builder()
        .handle(move |job: Job, ctx: OutboxContext| {
            log.lock()
                .unwrap()
                .push((job.n, ctx.id(), ctx.attempt(), ctx.kind()));
            Ok::<(), OutboxError>(())
        })
        .build()
        .unwrap();
    let ids = conn
        .transaction(|c| {
            Ok::<_, Error>([
                c.on_commit_outbox(Job { n: 1 })?,
                c.on_commit_outbox(Job { n: 2 })?,
            ])
        })
        .unwrap();
    let report = handlers.drain(&mut conn, Drain::Due).unwrap();
    assert_eq!(report.succeeded, 2);
    assert_eq!(
        *seen.lock().unwrap(),
        [(1, ids[0], 1, "test.job"), (2, ids[1], 1, "test.job")]
    );
    assert!(rows(&mut conn).is_empty(), "Ok deletes the row");
    assert_eq!(handlers.drain(&mut conn, Drain::Due).unwrap().succeeded, 0);
}

pub fn drain_failed_attempts_back_off_then_die<D: OutboxDb>() {
    let (_db, mut conn) = D::fresh();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let log = attempts.clone();
    let handlers = OutboxHandlers::builder()
        .handle(move |_: Job, ctx: OutboxContext| {
            log.lock().unwrap().push((ctx.id(), ctx.attempt()));
            Err(std::io::Error::other(format!("boom {}", ctx.attempt())))
        })
        .build()
        .unwrap();
    let id = conn.on_commit_outbox(Job { n: 1 }).unwrap();
    let report = handlers.drain(&mut conn, Drain::Due).unwrap();
    assert_eq!((report.failed, report.dead), (1, 0));
    let row = &rows(&mut conn)[0];
    assert_eq!((row.state.as_str(), row.attempt), ("pending", 1));
    assert_eq!(row.last_error.as_deref(), Some("boom 1"));
    // Due again after 1⁴ s ± 10 %.
    let due_in = D::due_in_ms(&mut conn)[0];
    assert!((850..=1100).contains(&due_in), "due in {due_in} ms");
    assert_eq!(
        handlers.drain(&mut conn, Drain::Due).unwrap().failed,
        0,
        "not due yet"
    );
    handlers.drain(&mut conn, Drain::All).unwrap();
    let due_in = D::due_in_ms(&mut conn)[0];
    assert!(
        (14_300..=17_600).contains(&due_in),
        "2⁴ s ± 10 %: {due_in} ms"
    );
    conn.batch_execute("UPDATE diesel_on_commit_outbox SET max_attempts = 3")
        .unwrap();
    let report = handlers.drain(&mut conn, Drain::All).unwrap();
    assert_eq!((report.failed, report.dead), (0, 1));
    let row = &rows(&mut conn)[0];
    assert_eq!((row.state.as_str(), row.attempt), ("dead", 3));
    assert_eq!(row.last_error.as_deref(), Some("boom 3"));
    assert_eq!(*attempts.lock().unwrap(), [(id, 1), (id, 2), (id, 3)]);
    // Dead rows are kept and never run again.
    assert_eq!(
        handlers.drain(&mut conn, Drain::All).unwrap(),
        Default::default()
    );
    assert_eq!(OutboxAdmin::stats(&mut conn).unwrap().dead, 1);
}

pub fn drain_cancel_snooze_undecodable_panic_and_unknown_kinds<D: OutboxDb>() {
    let (_db, mut conn) = D::fresh();
    let snoozed_runs = Arc::new(Mutex::new(Vec::new()));
    let runs = snoozed_runs.clone();
    let handlers = OutboxHandlers::builder()
        .handle(move |job: Job, ctx: OutboxContext| match job.n {
            1 => Err(OutboxError::cancel("no such order")),
            2 => {
                let mut runs = runs.lock().unwrap();
                runs.push(ctx.attempt());
                if runs.len() == 1 {
                    Err(OutboxError::snooze(Duration::from_secs(600)))
                } else {
                    Ok(())
                }
            }
            3 => panic!("handler bug"),
            _ => Ok(()),
        })
        .build()
        .unwrap();
    conn.transaction(|c| {
        c.on_commit_outbox(Job { n: 1 })?;
        c.on_commit_outbox(Job { n: 2 })?;
        c.on_commit_outbox(Job { n: 3 })?;
        c.on_commit_outbox(NotAJob { text: "?".into() })?;
        c.on_commit_outbox(Orphan { n: 4 })?;
        Ok::<_, Error>(())
    })
    .unwrap();
    let report = handlers.drain(&mut conn, Drain::Due).unwrap();
    assert_eq!(
        (report.succeeded, report.failed, report.dead, report.snoozed),
        (0, 2, 1, 1)
    );
    let by_payload: HashMap<String, OutboxRecord> = rows(&mut conn)
        .into_iter()
        .map(|r| (r.payload.clone(), r))
        .collect();
    let cancelled = &by_payload[r#"{"n":1}"#];
    assert_eq!(cancelled.state, "dead");
    assert_eq!(
        cancelled.last_error.as_deref(),
        Some("cancelled: no such order")
    );
    let snoozed = &by_payload[r#"{"n":2}"#];
    assert_eq!((snoozed.state.as_str(), snoozed.attempt), ("pending", 0));
    let panicked = &by_payload[r#"{"n":3}"#];
    assert_eq!((panicked.state.as_str(), panicked.attempt), ("pending", 1));
    assert!(
        panicked
            .last_error
            .as_deref()
            .unwrap()
            .contains("handler bug"),
        "{panicked:?}"
    );
    let undecodable = &by_payload[r#"{"text":"?"}"#];
    assert_eq!(undecodable.attempt, 1);
    assert!(
        undecodable
            .last_error
            .as_deref()
            .unwrap()
            .contains("does not decode"),
        "{undecodable:?}"
    );
    let orphan = &by_payload[r#"{"n":4}"#];
    assert_eq!(
        (orphan.state.as_str(), orphan.attempt),
        ("pending", 0),
        "left alone"
    );
    let stats = OutboxAdmin::stats(&mut conn).unwrap();
    assert_eq!(
        stats
            .kinds
            .iter()
            .find(|k| k.kind == "test.orphan")
            .unwrap()
            .due,
        1
    );
    let mut due_in = D::due_in_ms(&mut conn);
    due_in.sort();
    assert!(due_in[4] > 590_000, "snoozed 600 s: {due_in:?}");
    // A snooze counts no attempt: the next run is attempt 1 again.
    let report = handlers.drain(&mut conn, Drain::All).unwrap();
    assert_eq!((report.succeeded, report.failed), (1, 2), "{report:?}");
    assert_eq!(*snoozed_runs.lock().unwrap(), [1, 1]);
}

pub fn drain_runs_rows_that_become_due_only_with_all<D: OutboxDb>() {
    let (_db, mut conn) = D::fresh();
    let log = Log::new();
    let handlers = email_handlers(&log);
    conn.transaction(|c| {
        c.on_commit_outbox(email("now"))?;
        c.on_commit_outbox_opts(
            email("in a minute"),
            OutboxOptions::new().delay(Duration::from_secs(60)),
        )?;
        Ok::<_, Error>(())
    })
    .unwrap();
    let stats = OutboxAdmin::stats(&mut conn).unwrap();
    assert_eq!((stats.due, stats.scheduled), (1, 1));
    handlers.drain(&mut conn, Drain::Due).unwrap();
    assert_eq!(log.take(), ["now"]);
    let due_in = D::due_in_ms(&mut conn)[0];
    assert!((50_000..=60_000).contains(&due_in), "{due_in}");
    handlers.drain(&mut conn, Drain::All).unwrap();
    assert_eq!(log.take(), ["in a minute"]);
}

pub fn failed_keyed_row_is_superseded_by_a_newer_pending_one<D: OutboxDb>() {
    let (db, mut conn) = D::fresh();
    let key = || OutboxOptions::new().key("k");
    // The unique index holds one pending row per (kind, key) ...
    conn.on_commit_outbox_opts(Job { n: 0 }, key()).unwrap();
    conn.batch_execute("UPDATE diesel_on_commit_outbox SET state = 'running'")
        .unwrap();
    conn.on_commit_outbox_opts(Job { n: 0 }, key()).unwrap();
    conn.batch_execute("UPDATE diesel_on_commit_outbox SET state = 'pending'")
        .expect_err("two pending rows cannot share a key");
    conn.batch_execute("DELETE FROM diesel_on_commit_outbox")
        .unwrap();
    // ... so a keyed row whose attempt fails while a newer row with its key
    // was registered (elsewhere) is superseded: deleted, not an error.
    let other = Mutex::new(D::connect(&db));
    let handlers = OutboxHandlers::builder()
        .handle(move |job: Job, _: OutboxContext| {
            if job.n == 1 {
                let mut other = other.lock().unwrap();
                other.on_commit_outbox_opts(Job { n: 2 }, key()).unwrap();
                return Err(OutboxError::fail("transient"));
            }
            Ok(())
        })
        .build()
        .unwrap();
    conn.on_commit_outbox_opts(Job { n: 1 }, OutboxOptions::new().key("k"))
        .unwrap();
    let report = handlers.drain(&mut conn, Drain::Due).unwrap();
    assert_eq!(
        (report.superseded, report.succeeded, report.failed),
        (1, 1, 0),
        "{report:?}"
    );
    assert!(rows(&mut conn).is_empty());
}

pub fn stats_count_per_kind_and_age_the_oldest_due_row<D: OutboxDb>() {
    let (_db, mut conn) = D::fresh();
    assert_eq!(OutboxAdmin::stats(&mut conn).unwrap(), Default::default());
    conn.transaction(|c| {
        c.on_commit_outbox(email("a"))?;
        c.on_commit_outbox(email("b"))?;
        c.on_commit_outbox(Job { n: 1 })?;
        c.on_commit_outbox_opts(
            Job { n: 2 },
            OutboxOptions::new().delay(Duration::from_secs(3600)),
        )?;
        Ok::<_, Error>(())
    })
    .unwrap();
    conn.batch_execute(&format!(
        "UPDATE diesel_on_commit_outbox SET state = 'dead' WHERE payload = '{}'",
        r#"{"to":"b"}"#
    ))
    .unwrap();
    std::thread::sleep(Duration::from_millis(30)); // the oldest due row ages
    let stats = OutboxAdmin::stats(&mut conn).unwrap();
    assert_eq!(
        (stats.due, stats.scheduled, stats.running, stats.dead),
        (2, 1, 0, 1)
    );
    let age = stats.oldest_due_age.expect("a due row");
    assert!(
        age >= Duration::from_millis(20) && age < Duration::from_secs(60),
        "{age:?}"
    );
    let kinds: Vec<(&str, u64, u64, u64)> = stats
        .kinds
        .iter()
        .map(|k| (k.kind.as_str(), k.due, k.scheduled, k.dead))
        .collect();
    assert_eq!(kinds, [("test.email", 1, 0, 1), ("test.job", 1, 1, 0)]);
}

pub fn capture_lists_written_rows_and_changes_nothing<D: OutboxDb>() {
    let (_db, mut conn) = D::fresh();
    let log = Log::new();
    let ((), hooks) = conn.capture_on_commit(Capture::Collect, |conn| {
        conn.transaction(|c| {
            c.on_commit(log.hook("on_commit"));
            c.on_commit_outbox_opts(email("a"), OutboxOptions::new().key("k"))?;
            c.on_commit_outbox_opts(email("a again"), OutboxOptions::new().key("k"))?;
            let _ = c.transaction::<(), _, _>(|c| {
                c.on_commit_outbox(email("rolled back"))?;
                Err(Error::RollbackTransaction)
            });
            Ok::<_, Error>(())
        })
        .unwrap();
        let _ = conn.transaction::<(), _, _>(|c| {
            c.on_commit_outbox(email("never committed"))?;
            Err(Error::RollbackTransaction)
        });
        conn.on_commit_outbox(Job { n: 1 }).unwrap();
    });
    assert_eq!(hooks.len(), 1, "len() counts on_commit hooks only");
    assert_eq!(hooks.labels().len(), 1);
    let outbox = hooks.outbox();
    assert_eq!(outbox.len(), 2, "{outbox:?}");
    assert_eq!(outbox[0].kind(), "test.email");
    assert_eq!(outbox[0].key(), Some("k"));
    assert_eq!(outbox[0].payload(), r#"{"to":"a"}"#);
    assert_eq!(outbox[0].decode::<Email>().unwrap(), email("a"));
    assert!(
        outbox[0].label().to_string().contains("Email"),
        "{}",
        outbox[0].label()
    );
    assert_eq!(outbox[1].kind(), "test.job");
    assert_eq!(outbox[1].key(), None);
    let ids: Vec<OutboxId> = rows(&mut conn).iter().map(|r| r.id).collect();
    assert_eq!(
        ids,
        [outbox[0].id(), outbox[1].id()],
        "written all the same"
    );
    hooks.run(&mut conn);
    assert_eq!(log.take(), ["on_commit"]);
}

pub fn flush_chunks_under_the_bind_limit<D: OutboxDb>() {
    let (_db, mut conn) = D::fresh();
    let n = 70_000;
    let statements = Statements::watch(&mut conn);
    conn.transaction(|c| {
        for i in 0..n {
            c.on_commit_outbox(Job { n: i })?;
        }
        Ok::<_, Error>(())
    })
    .unwrap();
    assert_eq!(
        statements.outbox_inserts(),
        (n as usize).div_ceil(D::MAX_ROWS)
    );
    no_instrumentation(&mut conn);
    assert_eq!(OutboxAdmin::stats(&mut conn).unwrap().due, n as u64);
    // Exactly at the limit: one statement; one more row: two.
    conn.batch_execute("DELETE FROM diesel_on_commit_outbox")
        .unwrap();
    for (rows, inserts) in [(D::MAX_ROWS, 1), (D::MAX_ROWS + 1, 2)] {
        let statements = Statements::watch(&mut conn);
        conn.transaction(|c| {
            for i in 0..rows {
                c.on_commit_outbox(Job { n: i as i32 })?;
            }
            Ok::<_, Error>(())
        })
        .unwrap();
        assert_eq!(statements.outbox_inserts(), inserts, "{rows} rows");
    }
    no_instrumentation(&mut conn);
}

pub fn migrations_are_idempotent_and_versioned<D: OutboxDb>() {
    let (_db, mut conn) = D::fresh();
    let table = OutboxTable::default();
    assert_eq!(Outbox::schema_version(&mut conn, &table).unwrap(), Some(1));
    Outbox::run_migrations(&mut conn).unwrap();
    conn.on_commit_outbox(email("kept")).unwrap();
    Outbox::run_migrations(&mut conn).unwrap();
    assert_eq!(tos(&mut conn), ["kept"], "a second run changes nothing");
    let other = OutboxTable::new("never_migrated").unwrap();
    assert_eq!(Outbox::schema_version(&mut conn, &other).unwrap(), None);
    conn.batch_execute("UPDATE diesel_on_commit_outbox_meta SET version = 2")
        .unwrap();
    let error = Outbox::run_migrations(&mut conn).expect_err("a newer schema");
    assert!(error.to_string().contains("schema version 2"), "{error}");
    let sql = Outbox::migration_sql::<D::Backend>(&OutboxTable::new("x.y").unwrap());
    assert!(!sql.contains("diesel_on_commit_outbox"), "{sql}");
}

pub fn custom_table_names_are_validated_and_quoted<D: OutboxDb>() {
    for hostile in [
        "",
        "a.b.c",
        "outbox; DROP TABLE items",
        "out\"box",
        "out`box",
        "1outbox",
        "outbox--",
        ".outbox",
        "outbox.",
        &"x".repeat(49),
    ] {
        assert!(OutboxTable::new(hostile).is_err(), "{hostile:?}");
    }
    let (_db, mut conn) = D::fresh();
    let schema = D::own_schema(&mut conn);
    // Keywords and mixed case, quoted everywhere.
    let table = OutboxTable::new(&format!("{schema}.Select")).unwrap();
    Outbox::run_migrations_in(&mut conn, &table).unwrap();
    Outbox::run_migrations_in(&mut conn, &table).unwrap();
    assert_eq!(Outbox::schema_version(&mut conn, &table).unwrap(), Some(1));
    let opts = || OutboxOptions::new().table(table.clone()).key("k");
    conn.transaction(|c| {
        c.on_commit_outbox_opts(email("custom"), opts())?;
        c.on_commit_outbox_opts(email("custom, deduped"), opts())?;
        c.on_commit_outbox(email("default table"))
    })
    .unwrap();
    conn.on_commit_outbox_opts(email("deduped across"), opts())
        .unwrap();
    assert_eq!(tos(&mut conn), ["default table"]);
    let custom = OutboxAdmin::rows_in(&mut conn, &table).unwrap();
    assert_eq!(custom.len(), 1);
    assert_eq!(OutboxAdmin::stats_in(&mut conn, &table).unwrap().due, 1);
    let log = Log::new();
    let handlers = {
        let log = log.clone();
        OutboxHandlers::builder()
            .table(table.clone())
            .handle(move |job: Email, _: OutboxContext| {
                log.push(job.to);
                Ok::<(), OutboxError>(())
            })
            .build()
            .unwrap()
    };
    handlers.drain(&mut conn, Drain::Due).unwrap();
    assert_eq!(log.take(), ["custom"]);
    assert!(OutboxAdmin::rows_in(&mut conn, &table).unwrap().is_empty());
    assert_eq!(tos(&mut conn), ["default table"]);
}

pub fn payload_is_serde_json_text_byte_for_byte<D: OutboxDb>() {
    let (_db, mut conn) = D::fresh();
    let tricky = "nul \u{0} quote ' \" backslash \\ newline \n emoji 🦀 ; DROP TABLE items";
    conn.transaction(|c| c.on_commit_outbox(email(tricky)).map(drop))
        .unwrap();
    let row = &rows(&mut conn)[0];
    assert_eq!(row.payload, serde_json::to_string(&email(tricky)).unwrap());
    let log = Log::new();
    email_handlers(&log).drain(&mut conn, Drain::Due).unwrap();
    assert_eq!(log.take(), [tricky]);
    assert_eq!(items(&mut conn), 0);
}

pub fn handlers_refuse_a_kind_registered_twice<D: OutboxDb>() {
    let twice = OutboxHandlers::builder()
        .handle(|_: Job, _: OutboxContext| Ok::<(), OutboxError>(()))
        .handle(|_: Email, _: OutboxContext| Ok::<(), OutboxError>(()))
        .handle(|_: NotAJob, _: OutboxContext| Ok::<(), OutboxError>(()))
        .build();
    assert_eq!(
        twice.unwrap_err().to_string(),
        "two outbox handlers for the kind \"test.job\""
    );
    let invalid = OutboxHandlers::builder()
        .handle(|_: SpaceKind, _: OutboxContext| Ok::<(), OutboxError>(()))
        .build();
    assert!(invalid.is_err());
    let handlers = OutboxHandlers::builder()
        .handle(|_: Job, _: OutboxContext| Ok::<(), OutboxError>(()))
        .handle(|_: Email, _: OutboxContext| Ok::<(), OutboxError>(()))
        .build()
        .unwrap();
    assert_eq!(
        handlers.kinds().collect::<Vec<_>>(),
        ["test.email", "test.job"]
    );
    // An empty handler set drains nothing.
    let (_db, mut conn) = D::fresh();
    conn.on_commit_outbox(Job { n: 1 }).unwrap();
    let none = OutboxHandlers::builder().build().unwrap();
    assert_eq!(
        none.drain(&mut conn, Drain::All).unwrap(),
        Default::default()
    );
    assert_eq!(rows(&mut conn).len(), 1);
}
