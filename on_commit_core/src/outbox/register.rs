//! Registering outbox hooks on the sync wrapper (O1, O2): serialize and
//! validate at the call, then queue at the current level, or, outside a
//! transaction, rule 2's policy and one autocommitted INSERT.

use std::any::type_name;
use std::panic::Location;

use diesel::connection::Connection;
use diesel::result::{Error, QueryResult};

use crate::hooked::connection::HookedConnection;
use crate::hooked::hooks::Hook;
use crate::outbox::backend::OutboxBackend;
use crate::outbox::flush::{captured, write_rows, OutboxRow, QueuedRow};
use crate::outbox::{
    valid_kind, OutboxHook, OutboxId, OutboxOptions, DEFAULT_MAX_PAYLOAD, MAX_DELAY, MAX_KEY_CHARS,
};
use crate::rules::label::HookLabel;
use crate::rules::levels::DepthCheck;
use crate::rules::queue::Entry;

/// Why a registration was refused at the call (boxed in
/// `Error::SerializationError`).
#[derive(Debug)]
struct InvalidOutboxHook(String);

impl std::fmt::Display for InvalidOutboxHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidOutboxHook {}

fn refused(message: String) -> Error {
    Error::SerializationError(Box::new(InvalidOutboxHook(message)))
}

impl OutboxRow {
    /// Serializes and validates `value` (O1): every problem is an `Err`
    /// here, never a failed COMMIT later.
    fn new<T: OutboxHook>(value: &T, opts: OutboxOptions) -> QueryResult<Self> {
        let kind = T::KIND;
        if !valid_kind(kind) {
            return Err(refused(format!(
                "outbox hook {}: invalid KIND {kind:?}: expected 1 to 128 characters from \
                 A-Z a-z 0-9 _ . : -",
                type_name::<T>()
            )));
        }
        let payload = serde_json::to_string(value).map_err(|e| {
            refused(format!(
                "outbox hook {kind}: the value does not serialize to JSON: {e}"
            ))
        })?;
        let max = opts.max_payload.unwrap_or(DEFAULT_MAX_PAYLOAD);
        if payload.len() > max {
            return Err(refused(format!(
                "outbox hook {kind}: payload of {} bytes is over max_payload ({max} bytes)",
                payload.len()
            )));
        }
        if let Some(key) = &opts.key {
            if key.chars().count() > MAX_KEY_CHARS {
                return Err(refused(format!(
                    "outbox hook {kind}: dedupe key of {} characters is over {MAX_KEY_CHARS}",
                    key.chars().count()
                )));
            }
        }
        if opts.delay > MAX_DELAY {
            return Err(refused(format!(
                "outbox hook {kind}: delay {:?} is over the maximum of 3650 days",
                opts.delay
            )));
        }
        Ok(Self {
            id: OutboxId::new_v7(),
            kind,
            key: opts.key,
            payload,
            delay_ms: opts.delay.as_millis() as i64,
            table: opts.table,
        })
    }
}

impl<C> HookedConnection<C>
where
    C: Connection,
    C::Backend: OutboxBackend,
{
    /// Registers an outbox hook (feature `outbox`): `value` is serialized
    /// now and written as a row of the outbox table just before the
    /// outermost COMMIT, so it exists if and only if the work committed
    /// (O1). Returns the row's id, a client-made UUIDv7.
    ///
    /// * Inside a transaction the row is queued at the current level: a
    ///   savepoint rollback discards it, a release moves it to the enclosing
    ///   level (rules 1, 3, 4). Rows are written after the last
    ///   `before_commit` hook (rows those hooks register included), in
    ///   multi-row INSERTs; a transaction does not see its own rows before
    ///   that. A failed write rolls the transaction back and
    ///   `transaction()` returns the database error, with its kind.
    /// * Outside a transaction rule 2's policy applies first (`Panic`
    ///   panics, `WarnAndRun` warns), then the row is written at once in
    ///   one autocommitted INSERT, whose result this returns (O2). Inside a
    ///   test transaction alone, that INSERT goes into the test
    ///   transaction.
    /// * A `KIND` that is not 1 to 128 characters of `A-Z a-z 0-9 _ . : -`,
    ///   a value serde_json cannot serialize, or a payload over 1 MiB is
    ///   `Err(Error::SerializationError(..))` at this call, with a message
    ///   saying which.
    ///
    /// Run the rows with [`OutboxHandlers::drain`](crate::outbox::OutboxHandlers::drain).
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use diesel::result::Error;
    /// use diesel_on_commit::outbox::{Outbox, OutboxAdmin, OutboxHook};
    /// use diesel_on_commit::HookedConnection;
    ///
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct SendConfirmation { order_id: i64 }
    /// impl OutboxHook for SendConfirmation { const KIND: &'static str = "shop.send_confirmation"; }
    ///
    /// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
    /// Outbox::run_migrations(&mut conn)?;
    /// conn.transaction::<_, Error, _>(|conn| {
    ///     conn.on_commit_outbox(SendConfirmation { order_id: 1 })?;
    ///     // A savepoint that rolls back takes its row with it.
    ///     let _ = conn.transaction::<(), _, _>(|conn| {
    ///         conn.on_commit_outbox(SendConfirmation { order_id: 2 })?;
    ///         Err(Error::RollbackTransaction)
    ///     });
    ///     Ok(())
    /// })?;
    /// assert_eq!(OutboxAdmin::stats(&mut conn)?.due, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[track_caller]
    pub fn on_commit_outbox<T: OutboxHook>(&mut self, value: T) -> QueryResult<OutboxId> {
        let label = HookLabel::new(Location::caller(), type_name::<T>());
        self.register_outbox(label, &value, OutboxOptions::new())
    }

    /// As [`on_commit_outbox`](Self::on_commit_outbox), with a dedupe key,
    /// a delay, a payload limit or another table ([`OutboxOptions`]).
    ///
    /// With a key, the returned id exists only if this registration wins:
    /// within a transaction the first surviving registration of a
    /// `(KIND, key)` is written and later ones are dropped; across
    /// transactions the row is skipped while another with that kind and
    /// key is pending (O6). A dropped registration's id never exists.
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use diesel::result::Error;
    /// use diesel_on_commit::outbox::{Outbox, OutboxAdmin, OutboxHook, OutboxOptions};
    /// use diesel_on_commit::HookedConnection;
    /// use std::time::Duration;
    ///
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Reindex { product: i64 }
    /// impl OutboxHook for Reindex { const KIND: &'static str = "search.reindex"; }
    ///
    /// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
    /// Outbox::run_migrations(&mut conn)?;
    /// conn.transaction::<_, Error, _>(|conn| {
    ///     for _ in 0..3 {
    ///         conn.on_commit_outbox_opts(Reindex { product: 9 }, OutboxOptions::new().key("product-9"))?;
    ///     }
    ///     conn.on_commit_outbox_opts(Reindex { product: 10 }, OutboxOptions::new().delay(Duration::from_secs(60)))?;
    ///     Ok(())
    /// })?;
    /// let stats = OutboxAdmin::stats(&mut conn)?;
    /// assert_eq!((stats.due, stats.scheduled), (1, 1)); // one reindex of 9 now, 10 in a minute
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[track_caller]
    pub fn on_commit_outbox_opts<T: OutboxHook>(
        &mut self,
        value: T,
        opts: OutboxOptions,
    ) -> QueryResult<OutboxId> {
        let label = HookLabel::new(Location::caller(), type_name::<T>());
        self.register_outbox(label, &value, opts)
    }

    fn register_outbox<T: OutboxHook>(
        &mut self,
        label: HookLabel,
        value: &T,
        opts: OutboxOptions,
    ) -> QueryResult<OutboxId> {
        let row = OutboxRow::new(value, opts)?;
        let id = row.id;
        let check = self.check_levels();
        if let Some(level) = self.state.open_level(check) {
            let queued = QueuedRow {
                row,
                write: write_rows::<C>,
            };
            self.state.queue_outbox_at(
                level,
                Entry {
                    label,
                    hook: Hook::Outbox(Box::new(queued)),
                },
            );
            return Ok(id);
        }
        match check {
            DepthCheck::Matches => {}
            DepthCheck::Broken => {
                tracing::error!(
                    hook = %label,
                    "on_commit_outbox hook {label} registered on a broken connection: refused"
                );
                return Err(Error::BrokenTransactionManager);
            }
            DepthCheck::Foreign => panic!(
                "on_commit_outbox hook {label} registered while the connection is in a \
                 transaction that the wrapper did not open (begun on inner_mut() or through the \
                 inner TransactionManager); open transactions with the wrapper's transaction()"
            ),
        }
        // O2: outside a transaction.
        self.state.outbox_outside_policy(label);
        let rows = [(label, row)];
        write_rows::<C>(self, &rows)?;
        if self.state.capture_open() {
            let rows = captured(Vec::from(rows));
            self.state.capture_outbox(rows);
        }
        Ok(id)
    }
}
