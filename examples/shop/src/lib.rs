//! A complete service on `diesel-on-commit`: the seed's three use cases on
//! PostgreSQL and Redis, behind an HTTP JSON API, with a mail worker.
//!
//! - [`services`]: the transactions. Each is an `#[atomic]` function that
//!   registers its side effects with `on_commit!`: they run after COMMIT, or
//!   never.
//! - [`effects`]: what the hooks do. Queue a job (a Redis list) and
//!   invalidate cache keys, over blocking Redis connections: hooks run on the
//!   blocking thread that `deadpool_diesel`'s `interact` runs the transaction
//!   on, so a blocking call is legal there, and it is done before the HTTP
//!   response goes out.
//! - [`cache`]: the read-through product cache (async Redis), with a
//!   generation counter per key so that a slow reader cannot put an old row
//!   back after the invalidation.
//! - [`http`]: the axum routes. [`worker`]: takes jobs off the queue and
//!   "sends" each email with lettre's `FileTransport` into a directory.
//! - [`app`]: `shop serve` and `shop worker`, with a clear error when
//!   PostgreSQL or Redis does not answer.

pub mod app;
pub mod cache;
pub mod effects;
pub mod error;
pub mod http;
pub mod models;
pub mod schema;
pub mod services;
pub mod worker;

use diesel::PgConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations};
use diesel_on_commit::HookedConnection;

/// Every connection of the service: the wrapper, so every checkout has hooks.
pub type DbConn = HookedConnection<PgConnection>;

/// The pool: sync Diesel connections used from async handlers through
/// `interact` (tokio's blocking threads).
pub type DbPool = deadpool_diesel::Pool<deadpool_diesel::Manager<DbConn>>;

/// `examples/shop/migrations`, run by `shop serve` at start.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

pub use effects::{Effects, Job, Keys};
pub use error::ShopError;
