//! `shop serve` and `shop worker` without their services: a clear error
//! that says how to start them, exit code 1, no panic.

mod common;

use std::process::{Command, Output};

use common::PgSchema;

const NO_POSTGRES: &str = "postgres://postgres@127.0.0.1:1/test";
const NO_REDIS: &str = "redis://127.0.0.1:1";

fn shop(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shop"))
        .args(args)
        .output()
        .expect("run shop")
}

fn assert_clear_failure(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{needle:?} not in:\n{stderr}");
    }
}

#[test]
fn serve_without_postgres_says_how_to_start_it() {
    let out = shop(&[
        "serve",
        "--bind",
        "127.0.0.1:0",
        "--database-url",
        NO_POSTGRES,
    ]);
    assert_clear_failure(
        &out,
        &[
            "error: cannot connect to PostgreSQL at postgres://postgres@127.0.0.1:1/test",
            "pg_ctlcluster --skip-systemctl-redirect",
        ],
    );
}

#[test]
fn serve_and_worker_without_redis_say_how_to_start_it() {
    let schema = PgSchema::new("cli");
    for subcommand in ["serve", "worker"] {
        let out = shop(&[
            subcommand,
            "--bind",
            "127.0.0.1:0",
            "--database-url",
            &schema.url,
            "--redis-url",
            NO_REDIS,
        ]);
        assert_clear_failure(
            &out,
            &[
                "error: cannot connect to Redis at redis://127.0.0.1:1",
                "redis-server --daemonize yes",
            ],
        );
    }
}

#[test]
fn worker_without_postgres_says_how_to_start_it() {
    let out = shop(&["worker", "--database-url", NO_POSTGRES]);
    assert_clear_failure(
        &out,
        &["error: cannot connect to PostgreSQL", "pg_ctlcluster"],
    );
}

#[test]
fn passwords_are_not_printed() {
    let out = shop(&[
        "serve",
        "--database-url",
        "postgres://postgres:s3cret@127.0.0.1:1/test",
    ]);
    assert_clear_failure(&out, &["postgres://postgres:***@127.0.0.1:1/test"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("s3cret"));
}

#[test]
fn bad_usage_exits_with_2_and_the_usage() {
    let out = shop(&["serve", "--no-such-flag"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("unknown option \"--no-such-flag\"") && stderr.contains("USAGE"),
        "{stderr}"
    );
    let help = shop(&["--help"]);
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("shop worker"));
}
