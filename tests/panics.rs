//! Panics everywhere (RELIABILITY.md), on SQLite: in the body at
//! every depth, in `before_commit`, `on_commit`, `on_commit_with`,
//! `on_commit_robust`, `on_rollback` (after an `Err`, during a body panic,
//! during a `before_commit` panic, after a failed COMMIT), in hooks of
//! hooks, and while dropping wrappers during unwinding, under both
//! `HookPanics` policies. Never an abort (a double panic would kill this
//! test binary), and afterwards the wrapper is consistent: no level open,
//! no hook queued, not broken, and the next transaction fires its hooks.
//! `tests/ugly_paths.rs` and `tests/hook_failures.rs` have the single cases;
//! this file runs the whole matrix and the unwinding drops they lack.
#![cfg(feature = "sqlite")]

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};

use common::{panic_text, sqlite, Log};
use diesel::connection::{SimpleConnection, TransactionManager};
use diesel::prelude::*;
use diesel::result::Error;
use diesel_on_commit::prelude::*;
use diesel_on_commit::HookedTransactionManager;

type Conn = HookedConnection<SqliteConnection>;
type R = Result<(), Error>;

/// The panics these tests raise on purpose stay off stderr; any other
/// panic (a failed assertion) is printed as usual.
fn quiet() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    const PLANNED: [&str; 14] = [
        "body",
        "caught",
        "before_commit",
        "hook",
        "robust",
        "on_rollback",
        "captured",
        "capture body",
        "atomic body",
        "inner wrapper's rollback hook",
        "outer rollback hook",
        "the thread panics",
        "first",
        "second",
    ];
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !PLANNED.contains(&panic_text(info.payload()).as_str()) {
                default(info);
            }
        }));
    });
}

fn conn(policy: HookPanics) -> Conn {
    quiet();
    let mut c = sqlite();
    c.set_hook_panics(policy);
    c.batch_execute(
        "PRAGMA foreign_keys = ON;
         CREATE TABLE p_rows (id INTEGER PRIMARY KEY);
         CREATE TABLE p_parent (id INTEGER PRIMARY KEY);
         CREATE TABLE p_child (id INTEGER PRIMARY KEY,
             parent_id INTEGER NOT NULL REFERENCES p_parent(id) DEFERRABLE INITIALLY DEFERRED);",
    )
    .unwrap();
    c
}

fn rows(c: &mut Conn) -> i64 {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query("SELECT count(*) AS n FROM p_rows")
        .get_result::<N>(c)
        .unwrap()
        .n
}

/// The wrapper is consistent: nothing open, nothing queued, not broken,
/// and a new transaction commits and fires.
fn assert_consistent(c: &mut Conn, what: &str) {
    assert!(!c.in_transaction(), "{what}: a level is still open");
    let debug = format!("{c:?}");
    assert!(
        debug.contains("levels: 0") && debug.contains("queued_hooks: 0"),
        "{what}: {debug}"
    );
    assert!(
        !HookedTransactionManager::<SqliteConnection>::is_broken_transaction_manager(c),
        "{what}: broken"
    );
    let log = Log::new();
    c.transaction(|c| -> R {
        c.on_commit(log.hook("fires"));
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{what}: next transaction failed: {e}"));
    assert_eq!(
        log.get(),
        ["fires"],
        "{what}: the next transaction is a real outermost one"
    );
}

/// Where the panic is raised.
#[derive(Clone, Copy, Debug)]
enum Site {
    Body,
    SavepointBody,
    CaughtSavepointBody,
    BeforeCommit,
    BeforeCommitOfBeforeCommit,
    OnCommit,
    OnCommitWith,
    OnCommitWithNestedTransaction,
    HookOfHook,
    Robust,
    OnRollbackAfterErr,
    OnRollbackDuringBodyPanic,
    OnRollbackDuringBeforeCommitPanic,
    OnRollbackAfterFailedCommit,
}

const SITES: [Site; 14] = [
    Site::Body,
    Site::SavepointBody,
    Site::CaughtSavepointBody,
    Site::BeforeCommit,
    Site::BeforeCommitOfBeforeCommit,
    Site::OnCommit,
    Site::OnCommitWith,
    Site::OnCommitWithNestedTransaction,
    Site::HookOfHook,
    Site::Robust,
    Site::OnRollbackAfterErr,
    Site::OnRollbackDuringBodyPanic,
    Site::OnRollbackDuringBeforeCommitPanic,
    Site::OnRollbackAfterFailedCommit,
];

/// What the caller of `transaction()` sees and what must have happened.
struct Expect {
    /// The panic message out of `transaction()`, if any.
    panic: Option<&'static str>,
    committed: bool,
}

fn expect(site: Site, policy: HookPanics) -> Expect {
    let resumed = |msg| {
        if policy == HookPanics::Resume {
            Some(msg)
        } else {
            None
        }
    };
    match site {
        Site::Body | Site::SavepointBody => Expect {
            panic: Some("body"),
            committed: false,
        },
        Site::CaughtSavepointBody => Expect {
            panic: None,
            committed: true,
        },
        Site::BeforeCommit | Site::BeforeCommitOfBeforeCommit => Expect {
            panic: Some("before_commit"),
            committed: false,
        },
        Site::OnCommit
        | Site::OnCommitWith
        | Site::OnCommitWithNestedTransaction
        | Site::HookOfHook => Expect {
            panic: resumed("hook"),
            committed: true,
        },
        Site::Robust => Expect {
            panic: None,
            committed: true,
        },
        Site::OnRollbackAfterErr | Site::OnRollbackAfterFailedCommit => Expect {
            panic: resumed("on_rollback"),
            committed: false,
        },
        // Another panic is being handled: the hook's is only logged.
        Site::OnRollbackDuringBodyPanic => Expect {
            panic: Some("body"),
            committed: false,
        },
        Site::OnRollbackDuringBeforeCommitPanic => Expect {
            panic: Some("before_commit"),
            committed: false,
        },
    }
}

fn run_site(c: &mut Conn, site: Site, log: &Log) -> Result<R, String> {
    catch_unwind(AssertUnwindSafe(|| {
        c.transaction(|c| -> R {
            c.batch_execute("INSERT INTO p_rows (id) VALUES (1)")?;
            c.on_commit(log.hook("on_commit before"));
            c.on_rollback(log.hook("on_rollback before"));
            match site {
                Site::Body => panic!("body"),
                Site::SavepointBody => c.transaction(|_| -> R { panic!("body") })?,
                Site::CaughtSavepointBody => {
                    let r = catch_unwind(AssertUnwindSafe(|| {
                        c.transaction(|c| -> R {
                            c.on_commit(log.hook("savepoint on_commit (discarded)"));
                            c.on_rollback(log.hook("savepoint on_rollback"));
                            panic!("caught")
                        })
                    }));
                    assert!(r.is_err());
                }
                Site::BeforeCommit => {
                    c.before_commit(|_| -> QueryResult<()> { panic!("before_commit") })
                }
                Site::BeforeCommitOfBeforeCommit => c.before_commit(|c| {
                    c.before_commit(|_| -> QueryResult<()> { panic!("before_commit") });
                    Ok(())
                }),
                Site::OnCommit => c.on_commit(|| -> () { panic!("hook") }),
                Site::OnCommitWith => c.on_commit_with(|_: &mut Conn| -> () { panic!("hook") }),
                Site::OnCommitWithNestedTransaction => c.on_commit_with(|c: &mut Conn| -> R {
                    c.transaction(|c| -> R {
                        c.batch_execute("INSERT INTO p_rows (id) VALUES (2)")?;
                        panic!("hook")
                    })
                }),
                Site::HookOfHook => c.on_commit_with(|c: &mut Conn| {
                    c.on_commit(|| -> () { panic!("hook") });
                }),
                Site::Robust => c.on_commit_robust(|| -> () { panic!("robust") }),
                Site::OnRollbackAfterErr => {
                    c.on_rollback(|| -> () { panic!("on_rollback") });
                    c.on_rollback(log.hook("on_rollback after the panicking one"));
                    return Err(Error::RollbackTransaction);
                }
                Site::OnRollbackDuringBodyPanic => {
                    c.on_rollback(|| -> () { panic!("on_rollback") });
                    c.on_rollback(log.hook("on_rollback after the panicking one"));
                    panic!("body");
                }
                Site::OnRollbackDuringBeforeCommitPanic => {
                    c.on_rollback(|| -> () { panic!("on_rollback") });
                    c.on_rollback(log.hook("on_rollback after the panicking one"));
                    c.before_commit(|_| -> QueryResult<()> { panic!("before_commit") });
                }
                Site::OnRollbackAfterFailedCommit => {
                    c.batch_execute("INSERT INTO p_child (id, parent_id) VALUES (1, 99)")?;
                    c.on_rollback(|| -> () { panic!("on_rollback") });
                    c.on_rollback(log.hook("on_rollback after the panicking one"));
                }
            }
            c.on_commit(log.hook("on_commit after"));
            Ok(())
        })
    }))
    .map_err(|p| panic_text(&*p))
}

#[test]
fn a_panic_anywhere_never_aborts_and_leaves_the_wrapper_consistent() {
    quiet();
    let mut failures = Vec::new();
    for policy in [HookPanics::Resume, HookPanics::Log] {
        for site in SITES {
            let what = format!("{site:?} under {policy:?}");
            let mut c = conn(policy);
            let log = Log::new();
            let outcome = run_site(&mut c, site, &log);
            let want = expect(site, policy);
            let got_panic = outcome.as_ref().err().map(String::as_str);
            if got_panic != want.panic {
                failures.push(format!(
                    "{what}: panic out of transaction(): {got_panic:?}, want {:?}",
                    want.panic
                ));
            }
            let hooks = log.get();
            let fired = hooks.contains(&"on_commit before".to_owned());
            if fired != want.committed || (rows(&mut c) >= 1) != want.committed {
                failures.push(format!(
                    "{what}: committed={} hooks={hooks:?}",
                    want.committed
                ));
            }
            if !want.committed {
                if !hooks.contains(&"on_rollback before".to_owned())
                    || hooks.iter().any(|h| h.starts_with("on_commit"))
                {
                    failures.push(format!("{what}: rolled back, hooks: {hooks:?}"));
                }
                if matches!(
                    site,
                    Site::OnRollbackAfterErr
                        | Site::OnRollbackDuringBodyPanic
                        | Site::OnRollbackDuringBeforeCommitPanic
                        | Site::OnRollbackAfterFailedCommit
                ) && !hooks.contains(&"on_rollback after the panicking one".to_owned())
                {
                    failures.push(format!(
                        "{what}: a panicking on_rollback hook stopped the next: {hooks:?}"
                    ));
                }
            } else if hooks.contains(&"on_rollback before".to_owned())
                || (!matches!(site, Site::CaughtSavepointBody)
                    && !hooks.contains(&"on_commit after".to_owned()))
            {
                failures.push(format!("{what}: committed, hooks: {hooks:?}"));
            }
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| assert_consistent(&mut c, &what))) {
                failures.push(panic_text(&*p));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Rule 10 while unwinding: a thread panics holding wrappers with open
/// levels whose on_rollback hooks panic too, one of which owns yet another
/// wrapper mid-transaction (dropped inside the first one's drop). No
/// abort; every hook that does not panic runs; the thread's panic is the
/// one that comes out.
#[test]
fn dropping_nested_wrappers_during_unwinding_never_aborts() {
    quiet();
    let log = Log::new();
    let l = log.clone();
    let joined = std::thread::spawn(move || {
        let mut inner = sqlite();
        inner.set_hook_panics(HookPanics::Resume);
        HookedTransactionManager::begin_transaction(&mut inner).unwrap();
        inner.on_rollback(|| -> () { panic!("inner wrapper's rollback hook") });
        inner.on_rollback(l.hook("inner wrapper's second rollback hook"));

        let mut outer = sqlite();
        HookedTransactionManager::begin_transaction(&mut outer).unwrap();
        outer.on_rollback(l.hook("outer level 1"));
        HookedTransactionManager::begin_transaction(&mut outer).unwrap();
        outer.on_rollback(|| -> () { panic!("outer rollback hook") });
        // This hook owns `inner`: it is dropped (and so is `inner`) when the
        // hook has run, inside outer's drop, during unwinding.
        let l2 = l.clone();
        outer.on_rollback(move || {
            l2.push("outer hook owning the inner wrapper");
            drop(inner);
        });
        outer.on_commit(l.hook("never"));
        let _keep = outer;
        panic!("the thread panics");
    })
    .join();
    let payload = joined.expect_err("the thread panicked");
    assert_eq!(panic_text(&*payload), "the thread panics");
    assert_eq!(
        log.get(),
        [
            "outer level 1",
            "outer hook owning the inner wrapper",
            "inner wrapper's second rollback hook"
        ]
    );
}

/// Rule 10 outside unwinding: `drop` never panics, whatever the hooks do.
#[test]
fn dropping_a_wrapper_with_panicking_rollback_hooks_does_not_panic() {
    quiet();
    for policy in [HookPanics::Resume, HookPanics::Log] {
        let log = Log::new();
        let mut c = sqlite();
        c.set_hook_panics(policy);
        HookedTransactionManager::begin_transaction(&mut c).unwrap();
        c.on_rollback(|| -> () { panic!("first") });
        c.on_rollback(log.hook("second"));
        let r = catch_unwind(AssertUnwindSafe(|| drop(c)));
        assert!(r.is_ok(), "{policy:?}: drop panicked");
        assert_eq!(log.get(), ["second"]);
    }
}

/// A panic in a hook run by `CapturedHooks::run`, and in a capture body.
#[test]
fn panics_in_captured_hooks_and_capture_bodies() {
    let mut c = conn(HookPanics::Resume);
    let log = Log::new();
    let ((), hooks) = c.capture_on_commit(Capture::Collect, |c| {
        c.transaction(|c| -> R {
            c.on_commit(|| -> () { panic!("captured") });
            c.on_commit(log.hook("second captured"));
            Ok(())
        })
        .unwrap();
    });
    let r = catch_unwind(AssertUnwindSafe(|| hooks.run(&mut c)));
    assert_eq!(panic_text(&*r.unwrap_err()), "captured");
    assert_eq!(log.take(), ["second captured"]);
    assert_consistent(&mut c, "after CapturedHooks::run");
    let r = catch_unwind(AssertUnwindSafe(|| {
        c.capture_on_commit(Capture::Execute, |c| {
            c.transaction(|c| -> R {
                c.on_rollback(log.hook("rolled back"));
                panic!("capture body")
            })
        })
    }));
    assert_eq!(panic_text(&*r.unwrap_err()), "capture body");
    assert_eq!(log.take(), ["rolled back"]);
    // The capture was closed: a new one can open.
    let ((), hooks) = c.capture_on_commit(Capture::Collect, |_| ());
    assert!(hooks.is_empty());
    assert_consistent(&mut c, "after a panicking capture body");
}

/// A panic in `#[atomic]` on a plain connection and on an r2d2 pooled one
/// (rule 7: the pooled path).
#[test]
fn atomic_guard_on_a_plain_connection() {
    quiet();
    #[atomic]
    fn boom(conn: &mut SqliteConnection) -> QueryResult<()> {
        diesel::sql_query("INSERT INTO t (id) VALUES (1)").execute(conn)?;
        panic!("atomic body")
    }
    let mut plain = SqliteConnection::establish(":memory:").unwrap();
    plain
        .batch_execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        .unwrap();
    let r = catch_unwind(AssertUnwindSafe(|| boom(&mut plain)));
    assert_eq!(panic_text(&*r.unwrap_err()), "atomic body");
    // Depth restored: the next transaction is a real one and commits.
    plain
        .transaction(|c| diesel::sql_query("INSERT INTO t (id) VALUES (2)").execute(c))
        .unwrap();
    let n: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "(SELECT count(*) FROM t)",
    ))
    .get_result(&mut plain)
    .unwrap();
    assert_eq!(n, 1);
}

#[cfg(feature = "r2d2")]
mod pooled {
    use super::*;
    use diesel::r2d2::{ConnectionManager, Pool};

    fn pool() -> Pool<ConnectionManager<Conn>> {
        Pool::builder()
            .max_size(1)
            .build(ConnectionManager::<Conn>::new(":memory:"))
            .unwrap()
    }

    #[atomic]
    fn atomic_boom(conn: &mut Conn, log: &Log) -> QueryResult<()> {
        conn.on_commit(log.hook("never"));
        conn.on_rollback(log.hook("atomic rolled back"));
        panic!("atomic body")
    }

    #[test]
    fn panic_through_the_guard_of_a_pooled_connection() {
        quiet();
        let pool = pool();
        let log = Log::new();
        {
            let mut pooled = pool.get().unwrap();
            let conn: &mut Conn = &mut pooled;
            let r = catch_unwind(AssertUnwindSafe(|| {
                conn.transaction(|c| -> R {
                    c.on_commit(log.hook("never"));
                    c.on_rollback(log.hook("rolled back"));
                    panic!("body")
                })
            }));
            assert!(r.is_err());
            assert_eq!(log.take(), ["rolled back"]);
            let r = catch_unwind(AssertUnwindSafe(|| atomic_boom(conn, &log)));
            assert!(r.is_err());
            assert_eq!(log.take(), ["atomic rolled back"]);
            assert_consistent(conn, "pooled, through the guard");
        }
        let mut again = pool.get().unwrap();
        assert!(!again.in_transaction());
    }

    /// `pooled.transaction(..)` does not reach the wrapper's guard (rule 7):
    /// the level stays open, the pool finds the connection broken and drops
    /// it, and the drop runs the on_rollback hooks (rule 10), exactly once.
    #[test]
    fn panic_in_pooled_transaction_without_the_guard() {
        quiet();
        let pool = pool();
        let log = Log::new();
        let r = catch_unwind(AssertUnwindSafe(|| {
            let mut pooled = pool.get().unwrap();
            pooled.transaction(|c| -> R {
                c.on_commit(log.hook("never"));
                c.on_rollback(log.hook("rolled back by the drop"));
                panic!("body")
            })
        }));
        assert!(r.is_err());
        assert_eq!(log.take(), ["rolled back by the drop"]);
        let mut fresh = pool.get().unwrap();
        let conn: &mut Conn = &mut fresh;
        assert_consistent(conn, "the next checkout");
        assert!(log.take().is_empty());
    }
}
