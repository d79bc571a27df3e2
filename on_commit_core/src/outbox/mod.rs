//! Outbox hooks (feature `outbox`): work that must happen, written as a row
//! of the outbox table in the transaction that registers it, and run after
//! COMMIT by a handler, retried until it succeeds or is declared dead.
//!
//! `on_commit` hooks are in-process and **at most once**: a crash between
//! COMMIT and the hook loses it. An outbox hook is a typed, serializable
//! value ([`OutboxHook`]); [`HookedConnection::on_commit_outbox`] serializes
//! it at once and queues it at the current level like any hook (a savepoint
//! rollback discards it), and the outermost commit writes the surviving rows
//! just before COMMIT ("the flush"), so the row exists if and only if the
//! work committed. Handlers run it **at least once**: make them idempotent,
//! keyed on [`OutboxContext::id`].
//!
//! This release covers the sync wrapper ([`HookedConnection`]) on
//! PostgreSQL, MySQL/MariaDB and SQLite: registration, the flush, dedupe,
//! the schema and its migrations, and [`OutboxHandlers::drain`], which runs
//! due rows on one connection (tests, scripts, a simple cron). Workers in
//! many processes (`Outbox::builder`), leases, wake-ups and the async
//! wrapper come next (README, "Hooks that must not be lost").
//!
//! ```
//! use diesel::prelude::*;
//! use diesel_on_commit::outbox::{Drain, Outbox, OutboxContext, OutboxError, OutboxHandlers, OutboxHook};
//! use diesel_on_commit::HookedConnection;
//! use std::sync::{Arc, Mutex};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct SendConfirmation { order_id: i64 }
//! impl OutboxHook for SendConfirmation { const KIND: &'static str = "shop.send_confirmation"; }
//!
//! let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
//! Outbox::run_migrations(&mut conn)?;
//!
//! conn.transaction::<_, diesel::result::Error, _>(|conn| {
//!     conn.on_commit_outbox(SendConfirmation { order_id: 7 })?; // written just before COMMIT
//!     Ok(())
//! })?;
//!
//! let sent = Arc::new(Mutex::new(Vec::new()));
//! let log = sent.clone();
//! let handlers = OutboxHandlers::builder()
//!     .handle(move |job: SendConfirmation, _ctx: OutboxContext| {
//!         log.lock().unwrap().push(job.order_id);
//!         Ok::<(), OutboxError>(())
//!     })
//!     .build()?;
//! let report = handlers.drain(&mut conn, Drain::Due)?;
//! assert_eq!(report.succeeded, 1);
//! assert_eq!(*sent.lock().unwrap(), [7]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`HookedConnection`]: crate::HookedConnection
//! [`HookedConnection::on_commit_outbox`]: crate::HookedConnection::on_commit_outbox

mod admin;
mod backend;
pub(crate) mod flush;
mod handlers;
mod register;
mod schema;
mod table;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::rules::label::HookLabel;

pub use admin::{KindStats, OutboxAdmin, OutboxRecord, OutboxStats};
pub use backend::OutboxBackend;
pub use handlers::{
    Drain, DrainReport, OutboxContext, OutboxError, OutboxHandlers, OutboxHandlersBuilder,
};
pub use schema::Outbox;
pub use table::OutboxTable;

/// A value that can be registered as an outbox hook: serialized with
/// serde_json at registration, stored as text, decoded by its handler.
///
/// `KIND` names the hook in the table and routes it to its handler: 1 to
/// 128 characters from `A-Z a-z 0-9 _ . : -` (for example
/// `"shop.send_confirmation"`). Keep it stable across deploys: rows written
/// by one version are run by the next.
///
/// ```
/// use diesel_on_commit::outbox::OutboxHook;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct SendConfirmation { order_id: i64 }
///
/// impl OutboxHook for SendConfirmation {
///     const KIND: &'static str = "shop.send_confirmation";
/// }
/// ```
pub trait OutboxHook: Serialize + DeserializeOwned {
    /// The kind of the hook: its name in the table and in handlers.
    const KIND: &'static str;
}

/// The id of an outbox row: a UUIDv7 made by the client at registration
/// (time-ordered, 74 random bits). Handlers get it from
/// [`OutboxContext::id`]: the stable key for idempotency downstream.
///
/// ```
/// use diesel_on_commit::outbox::OutboxId;
///
/// let id: OutboxId = "0190f0e0-0000-7000-8000-000000000000".parse()?;
/// assert_eq!(id.to_string(), "0190f0e0-0000-7000-8000-000000000000");
/// assert_eq!(id.as_uuid().get_version_num(), 7);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OutboxId(uuid::Uuid);

impl OutboxId {
    pub(crate) fn new_v7() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    /// The id as a [`uuid::Uuid`].
    pub fn as_uuid(&self) -> &uuid::Uuid {
        &self.0
    }
}

impl From<OutboxId> for uuid::Uuid {
    fn from(id: OutboxId) -> Self {
        id.0
    }
}

impl fmt::Display for OutboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for OutboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OutboxId({})", self.0.hyphenated())
    }
}

impl FromStr for OutboxId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(Self)
    }
}

/// The default limit on a payload's serialized size: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// The longest dedupe key, in characters (the column is `varchar(255)`).
pub const MAX_KEY_CHARS: usize = 255;

/// The longest delay an outbox hook may be given: 3650 days.
pub const MAX_DELAY: Duration = Duration::from_secs(3650 * 86_400);

/// How an outbox hook is registered:
/// [`HookedConnection::on_commit_outbox_opts`](crate::HookedConnection::on_commit_outbox_opts).
///
/// ```
/// use diesel_on_commit::outbox::OutboxOptions;
/// use std::time::Duration;
///
/// let opts = OutboxOptions::new()
///     .key("order-7")                    // at most one pending row per (KIND, key)
///     .delay(Duration::from_secs(30))    // due 30 s after COMMIT (database clock)
///     .max_payload(64 * 1024);           // refuse payloads over 64 KiB at the call
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, Default)]
pub struct OutboxOptions {
    pub(crate) key: Option<String>,
    pub(crate) delay: Duration,
    pub(crate) max_payload: Option<usize>,
    pub(crate) table: OutboxTable,
}

impl OutboxOptions {
    /// No key, no delay, the default table, payloads up to 1 MiB.
    pub fn new() -> Self {
        Self::default()
    }

    /// A dedupe key (O6): at most one *pending* row per `(KIND, key)`.
    /// Within a transaction the first registration that survives its
    /// savepoints wins; across transactions the row is not written when
    /// one with the same kind and key is still pending. Rows sharing a key
    /// must be interchangeable. At most 255 characters.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Makes the row due `delay` after it is written (database clock), at
    /// most [`MAX_DELAY`].
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// The largest serialized payload accepted, in bytes (default
    /// [`DEFAULT_MAX_PAYLOAD`]); a larger one is an `Err` at the call.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = Some(bytes);
        self
    }

    /// The outbox table the row goes to (default `diesel_on_commit_outbox`).
    pub fn table(mut self, table: OutboxTable) -> Self {
        self.table = table;
        self
    }
}

/// An outbox row written while a capture was open:
/// [`CapturedHooks::outbox`](crate::CapturedHooks::outbox) (O11).
#[derive(Debug, Clone)]
pub struct CapturedOutbox {
    pub(crate) id: OutboxId,
    pub(crate) kind: &'static str,
    pub(crate) key: Option<String>,
    pub(crate) payload: String,
    pub(crate) label: HookLabel,
}

impl CapturedOutbox {
    /// The row's id.
    pub fn id(&self) -> OutboxId {
        self.id
    }

    /// The hook's `KIND`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The dedupe key, if any.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The payload, as the JSON text written to the table.
    pub fn payload(&self) -> &str {
        &self.payload
    }

    /// The payload decoded as `T`.
    pub fn decode<T: OutboxHook>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.payload)
    }

    /// Where it was registered: `file:line: type`.
    pub fn label(&self) -> HookLabel {
        self.label
    }
}

/// Why configuring the outbox failed: a table name or a handler set.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutboxConfigError {
    /// A table name that is not `[schema.]name` of identifiers
    /// (`[A-Za-z_][A-Za-z0-9_]*`, each at most 48 characters).
    InvalidTableName(String),
    /// Two handlers for one `KIND`.
    DuplicateKind(&'static str),
    /// A `KIND` that is empty, too long or has a character outside
    /// `A-Z a-z 0-9 _ . : -`.
    InvalidKind(&'static str),
}

impl fmt::Display for OutboxConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidTableName(name) => write!(
                f,
                "invalid outbox table name {name:?}: expected [schema.]name, each an identifier \
                 of 1 to 48 characters from A-Z a-z 0-9 _ not starting with a digit"
            ),
            Self::DuplicateKind(kind) => {
                write!(f, "two outbox handlers for the kind {kind:?}")
            }
            Self::InvalidKind(kind) => write!(
                f,
                "invalid outbox KIND {kind:?}: expected 1 to 128 characters from A-Z a-z 0-9 _ . : -"
            ),
        }
    }
}

impl std::error::Error for OutboxConfigError {}

/// Whether `kind` is a valid `KIND`: 1 to 128 characters of `[A-Za-z0-9_.:-]`.
pub(crate) fn valid_kind(kind: &str) -> bool {
    !kind.is_empty()
        && kind.len() <= 128
        && kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}
