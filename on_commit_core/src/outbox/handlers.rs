//! Handlers and the test-support drain (O5, O11): `OutboxHandlers` maps
//! each `KIND` to a typed handler; `drain` claims the due rows on one
//! connection, runs their handlers and records each outcome.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use diesel::connection::{Connection, LoadConnection};
use diesel::deserialize::{self, QueryableByName};
use diesel::result::QueryResult;
use diesel::row::NamedRow;
use diesel::RunQueryDsl;

use crate::outbox::backend::sealed::Sealed;
use crate::outbox::backend::{OutboxBackend, Sql};
use crate::outbox::{valid_kind, OutboxConfigError, OutboxHook, OutboxId, OutboxTable};

/// What a handler is told about the row it runs (O4, O5). `Clone` and
/// `'static`: pass it on freely.
///
/// ```
/// use diesel_on_commit::outbox::{OutboxContext, OutboxError};
///
/// fn send(order_id: i64, ctx: OutboxContext) -> Result<(), OutboxError> {
///     // The id is stable across attempts: the key for idempotency downstream.
///     let _idempotency_key = ctx.id().to_string();
///     if ctx.attempt() > 3 { /* tell someone */ }
///     let _ = order_id;
///     Ok(())
/// }
/// # let _ = send;
/// ```
#[derive(Debug, Clone)]
pub struct OutboxContext {
    id: OutboxId,
    kind: &'static str,
    attempt: u32,
}

impl OutboxContext {
    /// The row's id: the same on every attempt. Handlers run at least
    /// once, so use it to make their effects idempotent.
    pub fn id(&self) -> OutboxId {
        self.id
    }

    /// This attempt's number: 1 for the first run.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The hook's `KIND`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }
}

/// How a handler's run ended, other than `Ok` (O5): a failed attempt (any
/// error converts: `?` works), [`cancel`](Self::cancel) or
/// [`snooze`](Self::snooze).
///
/// ```
/// use diesel_on_commit::outbox::OutboxError;
/// use std::time::Duration;
///
/// fn charge(amount: i64) -> Result<(), OutboxError> {
///     if amount <= 0 {
///         return Err(OutboxError::cancel("nothing to charge")); // dead now, no retry
///     }
///     if amount > 1_000_000 {
///         return Err(OutboxError::snooze(Duration::from_secs(3600))); // later, not an attempt
///     }
///     let _n: i64 = "42".parse()?; // any std::error::Error: a failed attempt, retried
///     Ok(())
/// }
/// # let _ = charge;
/// ```
pub struct OutboxError(Outcome);

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Failed(String),
    Cancel(String),
    Snooze(Duration),
}

impl OutboxError {
    /// A failed attempt with this message: the row is due again after a
    /// backoff (attempt⁴ seconds ± 10 %), or dead after its last attempt.
    pub fn fail(message: impl fmt::Display) -> Self {
        Self(Outcome::Failed(message.to_string()))
    }

    /// The row is dead now, with this reason; no further attempt.
    pub fn cancel(reason: impl fmt::Display) -> Self {
        Self(Outcome::Cancel(reason.to_string()))
    }

    /// The row is due again after `delay`; this run does not count as an
    /// attempt.
    pub fn snooze(delay: Duration) -> Self {
        Self(Outcome::Snooze(delay))
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for OutboxError {
    /// A failed attempt; the message is the error and its sources.
    fn from(error: E) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Self(Outcome::Failed(message))
    }
}

impl fmt::Debug for OutboxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for OutboxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Outcome::Failed(message) => write!(f, "failed: {message}"),
            Outcome::Cancel(reason) => write!(f, "cancelled: {reason}"),
            Outcome::Snooze(delay) => write!(f, "snoozed for {delay:?}"),
        }
    }
}

type Handler = Arc<dyn Fn(&str, OutboxContext) -> Result<(), Outcome> + Send + Sync>;

/// The handlers of each `KIND` (O5), cheap to clone.
/// [`drain`](Self::drain) runs the due rows with them on one connection.
///
/// ```
/// use diesel_on_commit::outbox::{OutboxContext, OutboxError, OutboxHandlers, OutboxHook};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Ping;
/// impl OutboxHook for Ping { const KIND: &'static str = "ping"; }
///
/// let twice = OutboxHandlers::builder()
///     .handle(|_: Ping, _: OutboxContext| Ok::<(), OutboxError>(()))
///     .handle(|_: Ping, _: OutboxContext| Ok::<(), OutboxError>(()))
///     .build();
/// assert!(twice.is_err()); // a KIND registered twice
/// ```
#[derive(Clone)]
pub struct OutboxHandlers {
    handlers: Arc<BTreeMap<&'static str, Handler>>,
    table: OutboxTable,
}

impl fmt::Debug for OutboxHandlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxHandlers")
            .field("kinds", &self.handlers.keys().collect::<Vec<_>>())
            .field("table", &self.table)
            .finish()
    }
}

/// Builds [`OutboxHandlers`]: [`OutboxHandlers::builder`].
#[must_use = "call .build()"]
pub struct OutboxHandlersBuilder {
    handlers: BTreeMap<&'static str, Handler>,
    table: OutboxTable,
    error: Option<OutboxConfigError>,
}

impl fmt::Debug for OutboxHandlersBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxHandlersBuilder")
            .field("kinds", &self.handlers.keys().collect::<Vec<_>>())
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl OutboxHandlersBuilder {
    /// The handler of `T::KIND`: it gets the decoded value and the
    /// [`OutboxContext`]. `Ok` deletes the row; an `Err` converts into an
    /// [`OutboxError`] (a failed attempt, a cancel or a snooze). A payload
    /// that does not decode as `T`, or a panic, is a failed attempt.
    pub fn handle<T, F, E>(mut self, handler: F) -> Self
    where
        T: OutboxHook + 'static,
        F: Fn(T, OutboxContext) -> Result<(), E> + Send + Sync + 'static,
        E: Into<OutboxError>,
    {
        let kind = T::KIND;
        if !valid_kind(kind) {
            self.error
                .get_or_insert(OutboxConfigError::InvalidKind(kind));
        } else if self.handlers.contains_key(kind) {
            self.error
                .get_or_insert(OutboxConfigError::DuplicateKind(kind));
        }
        let run: Handler = Arc::new(move |payload: &str, ctx: OutboxContext| {
            let value: T = serde_json::from_str(payload).map_err(|e| {
                Outcome::Failed(format!(
                    "the payload does not decode as {}: {e}",
                    std::any::type_name::<T>()
                ))
            })?;
            handler(value, ctx).map_err(|e| e.into().0)
        });
        self.handlers.entry(kind).or_insert(run);
        self
    }

    /// The outbox table the handlers read (default `diesel_on_commit_outbox`).
    pub fn table(mut self, table: OutboxTable) -> Self {
        self.table = table;
        self
    }

    /// The handlers; `Err` when a `KIND` was given two handlers or is invalid.
    pub fn build(self) -> Result<OutboxHandlers, OutboxConfigError> {
        match self.error {
            Some(error) => Err(error),
            None => Ok(OutboxHandlers {
                handlers: Arc::new(self.handlers),
                table: self.table,
            }),
        }
    }
}

/// Which rows [`OutboxHandlers::drain`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Drain {
    /// Pending rows that are due now (database clock), including rows that
    /// become due or are registered while the drain runs.
    Due,
    /// Every pending row, due or not (a delayed row, one snoozed or backing
    /// off), each at most once per call.
    All,
}

/// What [`OutboxHandlers::drain`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Rows whose handler returned `Ok`: deleted.
    pub succeeded: usize,
    /// Failed attempts that leave the row pending, due after a backoff.
    pub failed: usize,
    /// Rows declared dead: attempts spent, or cancelled.
    pub dead: usize,
    /// Rows snoozed: due later, no attempt counted.
    pub snoozed: usize,
    /// Rows that went back to pending while another pending row had the
    /// same kind and key: deleted, since rows sharing a key are
    /// interchangeable (O6).
    pub superseded: usize,
}

/// How long a claimed row is leased to the drain (also the handler's
/// budget before the row becomes claimable again, for later workers).
const LEASE_MS: i64 = 5 * 60 * 1000;

/// The longest error text kept in `last_error`.
const MAX_ERROR_CHARS: usize = 4000;

impl OutboxHandlers {
    /// A builder with no handler.
    pub fn builder() -> OutboxHandlersBuilder {
        OutboxHandlersBuilder {
            handlers: BTreeMap::new(),
            table: OutboxTable::default(),
            error: None,
        }
    }

    /// The kinds that have a handler, in order.
    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.handlers.keys().copied()
    }

    /// Runs the rows `which` selects **on this connection**, now, in
    /// `run_at` order (for tests, scripts and simple cron jobs; O11): each
    /// row is claimed (set running, attempt + 1), its handler runs, then
    /// the row is deleted (`Ok`), due again after attempt⁴ seconds ± 10 %
    /// (`Err`), dead (its last attempt failed, or
    /// [`OutboxError::cancel`]) or due after the snooze without counting
    /// the attempt ([`OutboxError::snooze`]). A payload that does not
    /// decode, or a panic, is a failed attempt. Rows of a kind with no
    /// handler here are left alone. Rows registered (and committed) while
    /// the drain runs are run too, each row at most once per call.
    ///
    /// Each statement runs on its own, autocommitted (or in the caller's
    /// transaction, or in a test transaction). Errors of the database are
    /// returned; a handler's errors are recorded in the row and counted.
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use diesel_on_commit::outbox::{Drain, Outbox, OutboxContext, OutboxError, OutboxHandlers, OutboxHook};
    /// use diesel_on_commit::HookedConnection;
    ///
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Flaky;
    /// impl OutboxHook for Flaky { const KIND: &'static str = "flaky"; }
    ///
    /// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
    /// Outbox::run_migrations(&mut conn)?;
    /// conn.on_commit_outbox(Flaky)?; // outside a transaction: written at once
    /// let handlers = OutboxHandlers::builder()
    ///     .handle(|_: Flaky, ctx: OutboxContext| {
    ///         if ctx.attempt() == 1 { Err(OutboxError::fail("try again")) } else { Ok(()) }
    ///     })
    ///     .build()?;
    /// assert_eq!(handlers.drain(&mut conn, Drain::Due)?.failed, 1); // due again in ~1 s
    /// assert_eq!(handlers.drain(&mut conn, Drain::All)?.succeeded, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn drain<Conn>(&self, conn: &mut Conn, which: Drain) -> QueryResult<DrainReport>
    where
        Conn: Connection + LoadConnection,
        Conn::Backend: OutboxBackend,
    {
        let mut report = DrainReport::default();
        if self.handlers.is_empty() {
            return Ok(report);
        }
        let dialect = <Conn::Backend as Sealed>::DIALECT;
        let table = self.table.qualified(dialect);
        // Kinds are validated (A-Z a-z 0-9 _ . : -): safe as literals.
        let kinds = self
            .handlers
            .keys()
            .map(|kind| format!("'{kind}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let due = match which {
            Drain::Due => format!(" AND run_at <= {}", dialect.now()),
            Drain::All => String::new(),
        };
        let select = format!(
            "SELECT {} AS id, kind, payload, attempt, max_attempts, dedupe_key FROM {table} \
             WHERE state = 'pending'{due} AND kind IN ({kinds}) ORDER BY run_at, id",
            dialect.id_text()
        );
        let mut seen = HashSet::new();
        loop {
            let rows = Sql::new().sql(select.as_str()).load::<Claimable>(conn)?;
            let rows: Vec<Claimable> = rows
                .into_iter()
                .filter(|row| !seen.contains(&row.id))
                .collect();
            if rows.is_empty() {
                return Ok(report);
            }
            for row in rows {
                seen.insert(row.id.clone());
                self.run_one(conn, &table, row, &mut report)?;
            }
        }
    }

    fn run_one<Conn>(
        &self,
        conn: &mut Conn,
        table: &str,
        row: Claimable,
        report: &mut DrainReport,
    ) -> QueryResult<()>
    where
        Conn: Connection + LoadConnection,
        Conn::Backend: OutboxBackend,
    {
        let Some((&kind, handler)) = self.handlers.get_key_value(row.kind.as_str()) else {
            return Ok(());
        };
        let token = uuid::Uuid::new_v4().to_string();
        let claimed = Sql::new()
            .sql(format!(
                "UPDATE {table} SET state = 'running', attempt = attempt + 1, claim_token = "
            ))
            .text(token.as_str())
            .sql(", lease_until = ")
            .now_plus_ms(LEASE_MS)
            .sql(" WHERE id = ")
            .id(row.id.as_str())
            .sql(" AND state = 'pending'")
            .execute(conn)?;
        if claimed != 1 {
            return Ok(()); // taken meanwhile
        }
        let attempt = u32::try_from(row.attempt + 1).unwrap_or(u32::MAX);
        let ctx = OutboxContext {
            id: row.id.parse().map_err(|e: uuid::Error| {
                diesel::result::Error::DeserializationError(Box::new(e))
            })?,
            kind,
            attempt,
        };
        let span = tracing::debug_span!("outbox_run", kind, id = %row.id, attempt);
        let outcome = span.in_scope(|| {
            catch_unwind(AssertUnwindSafe(|| handler(&row.payload, ctx))).unwrap_or_else(
                |payload| {
                    let message = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a non-string payload".to_owned());
                    Err(Outcome::Failed(format!("the handler panicked: {message}")))
                },
            )
        });
        let owned = |sql: Sql<'static>| {
            sql.sql(" WHERE id = ")
                .id(row.id.clone())
                .sql(" AND claim_token = ")
                .text(token.clone())
        };
        match outcome {
            Ok(()) => {
                owned(Sql::new().sql(format!("DELETE FROM {table}"))).execute(conn)?;
                report.succeeded += 1;
            }
            Err(Outcome::Failed(message)) if row.attempt + 1 >= row.max_attempts => {
                tracing::warn!(kind, id = %row.id, attempt, "outbox row dead after its last attempt: {message}");
                owned(dead(table, message)).execute(conn)?;
                report.dead += 1;
            }
            Err(Outcome::Failed(message)) => {
                tracing::debug!(kind, id = %row.id, attempt, "outbox attempt failed: {message}");
                let sql = Sql::new()
                    .sql(format!("UPDATE {table} SET last_error = "))
                    .text(truncate(message))
                    .sql(", ");
                if self.back_to_pending(
                    conn,
                    table,
                    &row,
                    sql,
                    backoff_ms(attempt),
                    false,
                    &token,
                )? {
                    report.failed += 1;
                } else {
                    report.superseded += 1;
                }
            }
            Err(Outcome::Cancel(reason)) => {
                owned(dead(table, format!("cancelled: {reason}"))).execute(conn)?;
                report.dead += 1;
            }
            Err(Outcome::Snooze(delay)) => {
                let ms = i64::try_from(delay.as_millis())
                    .unwrap_or(i64::MAX)
                    .min(MAX_DELAY_MS);
                let sql = Sql::new().sql(format!("UPDATE {table} SET "));
                if self.back_to_pending(conn, table, &row, sql, ms, true, &token)? {
                    report.snoozed += 1;
                } else {
                    report.superseded += 1;
                }
            }
        }
        Ok(())
    }

    /// Makes a claimed row pending again, due in `ms` (`uncount`: the
    /// attempt does not count). A keyed row whose key is pending in
    /// another row meanwhile is deleted instead (superseded; returns
    /// `false`), as the unique index over pending rows would refuse it.
    #[allow(clippy::too_many_arguments)]
    fn back_to_pending<Conn>(
        &self,
        conn: &mut Conn,
        table: &str,
        row: &Claimable,
        sql: Sql<'static>,
        ms: i64,
        uncount: bool,
        token: &str,
    ) -> QueryResult<bool>
    where
        Conn: Connection + LoadConnection,
        Conn::Backend: OutboxBackend,
    {
        if let Some(key) = &row.dedupe_key {
            let others = Sql::new()
                .sql(format!("SELECT COUNT(*) AS n FROM {table} WHERE kind = "))
                .text(row.kind.clone())
                .sql(" AND dedupe_key = ")
                .text(key.clone())
                .sql(" AND state = 'pending'")
                .load::<Count>(conn)?;
            if others.first().is_some_and(|c| c.n > 0) {
                Sql::new()
                    .sql(format!("DELETE FROM {table} WHERE id = "))
                    .id(row.id.clone())
                    .sql(" AND claim_token = ")
                    .text(token.to_owned())
                    .execute(conn)?;
                return Ok(false);
            }
        }
        sql.sql(if uncount {
            "attempt = attempt - 1, "
        } else {
            ""
        })
        .sql("state = 'pending', claim_token = NULL, lease_until = NULL, run_at = ")
        .now_plus_ms(ms)
        .sql(" WHERE id = ")
        .id(row.id.clone())
        .sql(" AND claim_token = ")
        .text(token.to_owned())
        .execute(conn)?;
        Ok(true)
    }
}

const MAX_DELAY_MS: i64 = 3650 * 86_400 * 1000;

fn dead(table: &str, message: String) -> Sql<'static> {
    Sql::new()
        .sql(format!("UPDATE {table} SET state = 'dead', last_error = "))
        .text(truncate(message))
        .sql(", claim_token = NULL, lease_until = NULL")
}

fn truncate(mut message: String) -> String {
    if let Some((at, _)) = message.char_indices().nth(MAX_ERROR_CHARS) {
        message.truncate(at);
    }
    message
}

/// The backoff after failed attempt `attempt`: attempt⁴ seconds ± 10 %.
pub(crate) fn backoff_ms(attempt: u32) -> i64 {
    let base = u64::from(attempt.clamp(1, 100)).pow(4) * 1000;
    let random = u16::from_le_bytes(
        uuid::Uuid::new_v4().as_bytes()[..2]
            .try_into()
            .unwrap_or([0, 0]),
    );
    // 0.9 to 1.1 of the base, in 1/65535 steps.
    let jitter = base as f64 * (0.9 + 0.2 * f64::from(random) / f64::from(u16::MAX));
    jitter as i64
}

/// A pending row, as the drain selects it.
struct Claimable {
    id: String,
    kind: String,
    payload: String,
    attempt: i32,
    max_attempts: i32,
    dedupe_key: Option<String>,
}

impl<DB: OutboxBackend> QueryableByName<DB> for Claimable {
    fn build<'a>(row: &impl NamedRow<'a, DB>) -> deserialize::Result<Self> {
        Ok(Self {
            id: DB::get_text(row, "id")?,
            kind: DB::get_text(row, "kind")?,
            payload: DB::get_text(row, "payload")?,
            attempt: DB::get_i32(row, "attempt")?,
            max_attempts: DB::get_i32(row, "max_attempts")?,
            dedupe_key: DB::get_opt_text(row, "dedupe_key")?,
        })
    }
}

struct Count {
    n: i64,
}

impl<DB: OutboxBackend> QueryableByName<DB> for Count {
    fn build<'a>(row: &impl NamedRow<'a, DB>) -> deserialize::Result<Self> {
        Ok(Self {
            n: DB::get_i64(row, "n")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::backoff_ms;

    #[test]
    fn backoff_is_attempt_to_the_fourth_seconds_within_ten_percent() {
        for attempt in 1..=20u32 {
            let base = f64::from(attempt).powi(4) * 1000.0;
            for _ in 0..20 {
                let ms = backoff_ms(attempt) as f64;
                assert!(
                    ms >= base * 0.9 - 1.0 && ms <= base * 1.1 + 1.0,
                    "{attempt}: {ms}"
                );
            }
        }
    }
}
