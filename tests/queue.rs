//! Rules 1, 3, 4 and 13 on SQLite: queueing, savepoint release,
//! rollback, order.

mod common;

use common::{sqlite, Log};
use diesel::prelude::*;
use diesel::result::Error;
use diesel_on_commit::prelude::*;

type R = Result<(), Error>;

#[test]
fn on_commit_waits_for_the_outermost_commit() {
    let mut conn = sqlite();
    let log = Log::new();
    conn.transaction(|conn| -> R {
        conn.on_commit(log.hook("hook"));
        log.push("body done");
        Ok(())
    })
    .unwrap();
    assert_eq!(log.get(), ["body done", "hook"]);
}

#[test]
fn rolled_back_transaction_discards_on_commit_and_runs_on_rollback() {
    let mut conn = sqlite();
    let log = Log::new();
    let r = conn.transaction(|conn| -> R {
        conn.on_commit(log.hook("commit"));
        conn.on_rollback(log.hook("rollback"));
        Err(Error::RollbackTransaction)
    });
    assert!(matches!(r, Err(Error::RollbackTransaction)));
    assert_eq!(log.get(), ["rollback"]);
}

#[test]
fn committed_transaction_drops_on_rollback_hooks() {
    let mut conn = sqlite();
    let log = Log::new();
    conn.transaction(|conn| -> R {
        conn.on_rollback(log.hook("rollback"));
        conn.on_commit(log.hook("commit"));
        Ok(())
    })
    .unwrap();
    assert_eq!(log.get(), ["commit"]);
}

#[test]
fn savepoint_release_moves_hooks_to_the_enclosing_level_and_runs_nothing() {
    let mut conn = sqlite();
    let log = Log::new();
    conn.transaction(|conn| -> R {
        conn.on_commit(log.hook("outer"));
        conn.transaction(|conn| -> R {
            conn.on_commit(log.hook("inner"));
            Ok(())
        })?;
        assert!(log.get().is_empty(), "a released savepoint runs nothing");
        conn.on_commit(log.hook("outer again"));
        Ok(())
    })
    .unwrap();
    // The seed lesson printed "Inner committed" first: wrong. Registration order.
    assert_eq!(log.get(), ["outer", "inner", "outer again"]);
}

#[test]
fn savepoint_rollback_discards_its_hooks_and_keeps_the_enclosing_ones() {
    let mut conn = sqlite();
    let log = Log::new();
    conn.transaction(|conn| -> R {
        conn.on_commit(log.hook("outer"));
        let r = conn.transaction(|conn| -> R {
            conn.on_commit(log.hook("inner commit"));
            conn.on_rollback(log.hook("inner rollback"));
            Err(Error::RollbackTransaction)
        });
        assert!(r.is_err());
        assert_eq!(log.get(), ["inner rollback"]);
        Ok(())
    })
    .unwrap();
    assert_eq!(log.get(), ["inner rollback", "outer"]);
}

#[test]
fn rollback_discards_hooks_of_savepoints_released_into_the_level() {
    let mut conn = sqlite();
    let log = Log::new();
    conn.transaction(|conn| -> R {
        conn.on_commit(log.hook("level 1"));
        let r = conn.transaction(|conn| -> R {
            conn.on_commit(log.hook("level 2"));
            conn.transaction(|conn| -> R {
                conn.on_commit(log.hook("level 3, released into 2"));
                conn.on_rollback(log.hook("level 3 rollback"));
                Ok(())
            })?;
            Err(Error::RollbackTransaction)
        });
        assert!(r.is_err());
        Ok(())
    })
    .unwrap();
    assert_eq!(log.get(), ["level 3 rollback", "level 1"]);
}

#[test]
fn outermost_rollback_discards_every_level_and_runs_all_on_rollback_in_order() {
    let mut conn = sqlite();
    let log = Log::new();
    let r = conn.transaction(|conn| -> R {
        conn.on_rollback(log.hook("r1"));
        conn.transaction(|conn| -> R {
            conn.on_rollback(log.hook("r2"));
            conn.on_commit(log.hook("c2"));
            Ok(())
        })?;
        conn.on_rollback(log.hook("r1 again"));
        Err(Error::RollbackTransaction)
    });
    assert!(r.is_err());
    assert_eq!(log.get(), ["r1", "r2", "r1 again"]);
}

#[test]
fn on_commit_kinds_run_in_one_registration_order_across_levels() {
    let mut conn = sqlite();
    let log = Log::new();
    conn.transaction(|conn| -> R {
        conn.on_commit(log.hook("plain 1"));
        let l = log.clone();
        conn.on_commit_with(move |_conn| l.push("with 2"));
        conn.transaction(|conn| -> R {
            conn.on_commit_robust(log.hook("robust 3"));
            conn.transaction(|conn| -> R {
                conn.on_commit(log.hook("plain 4"));
                Ok(())
            })
        })?;
        conn.on_commit_robust(log.hook("robust 5"));
        Ok(())
    })
    .unwrap();
    assert_eq!(
        log.get(),
        ["plain 1", "with 2", "robust 3", "plain 4", "robust 5"]
    );
}

#[test]
fn ten_nested_savepoints_with_the_innermost_rolled_back() {
    fn nest(conn: &mut HookedConnection<SqliteConnection>, log: &Log, level: u32) -> R {
        let l = log.clone();
        conn.on_commit(move || l.push(format!("commit {level}")));
        let l = log.clone();
        conn.on_rollback(move || l.push(format!("rollback {level}")));
        if level == 10 {
            return Err(Error::RollbackTransaction);
        }
        let r = conn.transaction(|conn| nest(conn, log, level + 1));
        if level == 9 {
            assert!(r.is_err());
            Ok(())
        } else {
            r
        }
    }
    let mut conn = sqlite();
    let log = Log::new();
    conn.transaction(|conn| nest(conn, &log, 1)).unwrap();
    let mut expected = vec!["rollback 10".to_string()];
    expected.extend((1..=9).map(|l| format!("commit {l}")));
    assert_eq!(log.get(), expected);
}

#[test]
fn the_connection_is_reusable_and_hooks_do_not_leak_between_transactions() {
    let mut conn = sqlite();
    let log = Log::new();
    for i in 0..3 {
        let r = conn.transaction(|conn| -> R {
            let l = log.clone();
            conn.on_commit(move || l.push(format!("commit {i}")));
            if i == 1 {
                Err(Error::RollbackTransaction)
            } else {
                Ok(())
            }
        });
        assert_eq!(r.is_ok(), i != 1);
    }
    assert_eq!(log.get(), ["commit 0", "commit 2"]);
}

#[test]
fn many_hooks_all_run_once_in_order() {
    let mut conn = sqlite();
    let log = Log::new();
    conn.transaction(|conn| -> R {
        for i in 0..5000 {
            let l = log.clone();
            conn.on_commit(move || l.push(i.to_string()));
        }
        Ok(())
    })
    .unwrap();
    let got = log.get();
    assert_eq!(got.len(), 5000);
    assert!(got.iter().enumerate().all(|(i, s)| *s == i.to_string()));
}

#[test]
fn hooks_return_unit_or_any_result() {
    let mut conn = sqlite();
    let log = Log::new();
    conn.transaction(|conn| -> R {
        let l = log.clone();
        conn.on_commit(move || -> Result<u32, String> {
            l.push("result ok");
            Ok(7)
        });
        let l = log.clone();
        conn.on_commit(move || -> std::io::Result<()> {
            l.push("io result");
            Ok(())
        });
        conn.on_commit(log.hook("unit"));
        Ok(())
    })
    .unwrap();
    assert_eq!(log.get(), ["result ok", "io result", "unit"]);
}

#[test]
fn in_transaction_follows_the_user_depth() {
    let mut conn = sqlite();
    assert!(!conn.in_transaction());
    conn.transaction(|conn| -> R {
        assert!(conn.in_transaction());
        conn.transaction(|conn| -> R {
            assert!(conn.in_transaction());
            Ok(())
        })
    })
    .unwrap();
    assert!(!conn.in_transaction());
    assert!(!TransactionHooks::in_transaction(&mut conn));
}

#[test]
fn generic_code_registers_through_the_trait() {
    fn register<T: TransactionHooks>(conn: &mut T, log: &Log) {
        conn.on_commit(log.hook("generic commit"));
        conn.on_rollback(log.hook("generic rollback"));
        conn.on_commit_robust(log.hook("generic robust"));
    }
    let mut conn = sqlite();
    let log = Log::new();
    conn.transaction(|conn| -> R {
        register(conn, &log);
        Ok(())
    })
    .unwrap();
    assert_eq!(log.get(), ["generic commit", "generic robust"]);
}

#[test]
fn labels_name_the_call_site_and_the_closure_type() {
    let mut conn = sqlite();
    let ((), hooks) = conn.capture_on_commit(Capture::Collect, |conn| {
        conn.transaction(|conn| -> R {
            conn.on_commit(|| ());
            Ok(())
        })
        .unwrap();
    });
    let label = hooks.labels()[0].to_string();
    let line = line!() - 6;
    assert!(
        label.starts_with(&format!("tests/queue.rs:{line}: ")),
        "{label}"
    );
    assert!(label.contains("labels_name_the_call_site"), "{label}");
    hooks.run(&mut conn);
}
