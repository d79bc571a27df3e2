//! Compile errors of `#[atomic]`'s transaction options that need the
//! PostgreSQL or MySQL connection types (or r2d2): one file per misuse under
//! `tests/ui/backends/`, each with its committed `.stderr`. The cases that
//! need only SQLite are in `tests/ui/` (`tests/ui.rs`). Regenerate with
//! `TRYBUILD=overwrite cargo test --all-features --test ui_backends`, then
//! read every changed snapshot.
#![cfg(all(
    feature = "sqlite",
    feature = "postgres",
    feature = "mysql",
    feature = "r2d2"
))]

#[test]
fn options_a_backend_lacks_are_compile_errors_that_say_what_to_write() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/backends/*.rs");
    // The same on an `async fn` (the async wrapper's connection types).
    #[cfg(all(feature = "async", feature = "tokio"))]
    t.compile_fail("tests/ui/backends/async/*.rs");
}
