//! Compile errors of `#[atomic]` and `on_commit!`: one file per misuse under
//! `tests/ui/`, each with its committed `.stderr`. Regenerate with
//! `TRYBUILD=overwrite cargo test --test ui` (and with `--features async`
//! for `tests/ui/async/`), then read every changed snapshot: each message
//! must say what to write instead.
//!
//! The snapshots depend on rustc's wording: they are checked on the stable
//! toolchain `.ci/run` uses. They are the same with the default features and
//! with `--all-features` (checked); the cases use SQLite, hence the gate.
#![cfg(feature = "sqlite")]

#[test]
fn misuse_is_a_compile_error_that_says_what_to_write() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    // `#[atomic] async fn` errors found by type checking the expansion, which
    // names `__private::atomic_async` (there with the `async` feature only).
    // The errors of the macro itself on an `async fn` are in `tests/ui/`.
    #[cfg(feature = "async")]
    t.compile_fail("tests/ui/async/*.rs");
}
