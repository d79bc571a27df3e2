//! What an operator reads of the outbox (O12, the part this release has):
//! counts per kind and state, and the age of the oldest due row, from any
//! connection; and the rows themselves.

use std::time::Duration;

use diesel::connection::{Connection, LoadConnection};
use diesel::deserialize::{self, QueryableByName};
use diesel::result::QueryResult;
use diesel::row::NamedRow;
use diesel::RunQueryDsl;

use crate::outbox::backend::sealed::Sealed;
use crate::outbox::backend::{OutboxBackend, Sql};
use crate::outbox::{OutboxId, OutboxTable};

/// Reading the outbox table, from any connection (no worker needed).
///
/// ```
/// use diesel::prelude::*;
/// use diesel_on_commit::outbox::{Outbox, OutboxAdmin, OutboxHook};
/// use diesel_on_commit::HookedConnection;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Ping;
/// impl OutboxHook for Ping { const KIND: &'static str = "ping"; }
///
/// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
/// Outbox::run_migrations(&mut conn)?;
/// conn.on_commit_outbox(Ping)?;
/// let stats = OutboxAdmin::stats(&mut conn)?;
/// assert_eq!(stats.due, 1);
/// assert_eq!(stats.kinds[0].kind, "ping");
/// assert!(stats.oldest_due_age.is_some()); // the lag to alert on
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct OutboxAdmin {
    _private: (),
}

/// Counts of the outbox table ([`OutboxAdmin::stats`]): in total and per kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxStats {
    /// Pending rows that are due now.
    pub due: u64,
    /// Pending rows due later (delayed, backing off, snoozed).
    pub scheduled: u64,
    /// Rows claimed by a handler right now.
    pub running: u64,
    /// Dead rows: kept until someone deals with them.
    pub dead: u64,
    /// How long the oldest due row has been due (database clock): the lag
    /// to alert on. `None` with no due row.
    pub oldest_due_age: Option<Duration>,
    /// The same, per kind, in kind order (kinds no handler knows included).
    pub kinds: Vec<KindStats>,
}

/// One kind's counts in [`OutboxStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KindStats {
    /// The kind.
    pub kind: String,
    /// Pending rows due now.
    pub due: u64,
    /// Pending rows due later.
    pub scheduled: u64,
    /// Running rows.
    pub running: u64,
    /// Dead rows.
    pub dead: u64,
    /// How long this kind's oldest due row has been due.
    pub oldest_due_age: Option<Duration>,
}

/// One row of the outbox table ([`OutboxAdmin::rows`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxRecord {
    /// The row's id.
    pub id: OutboxId,
    /// Its kind.
    pub kind: String,
    /// Its dedupe key.
    pub key: Option<String>,
    /// The payload, as JSON text.
    pub payload: String,
    /// `pending`, `running`, `done` or `dead`.
    pub state: String,
    /// Attempts counted so far.
    pub attempt: i32,
    /// Attempts after which it is dead.
    pub max_attempts: i32,
    /// The last failed attempt's error, or why it was cancelled.
    pub last_error: Option<String>,
}

impl OutboxAdmin {
    /// [`stats_in`](Self::stats_in) the default table.
    pub fn stats<Conn>(conn: &mut Conn) -> QueryResult<OutboxStats>
    where
        Conn: Connection + LoadConnection,
        Conn::Backend: OutboxBackend,
    {
        Self::stats_in(conn, &OutboxTable::default())
    }

    /// Due, scheduled, running and dead counts, and the age of the oldest
    /// due row, in total and per kind, in one statement.
    pub fn stats_in<Conn>(conn: &mut Conn, table: &OutboxTable) -> QueryResult<OutboxStats>
    where
        Conn: Connection + LoadConnection,
        Conn::Backend: OutboxBackend,
    {
        let dialect = <Conn::Backend as Sealed>::DIALECT;
        let now = dialect.now();
        let due = format!("state = 'pending' AND run_at <= {now}");
        let sql = format!(
            "SELECT kind, \
             COUNT(CASE WHEN {due} THEN 1 END) AS due, \
             COUNT(CASE WHEN state = 'pending' AND run_at > {now} THEN 1 END) AS scheduled, \
             COUNT(CASE WHEN state = 'running' THEN 1 END) AS running, \
             COUNT(CASE WHEN state = 'dead' THEN 1 END) AS dead, \
             {} AS oldest_due_ms \
             FROM {} GROUP BY kind ORDER BY kind",
            dialect.age_ms(&format!("MIN(CASE WHEN {due} THEN run_at END)")),
            table.qualified(dialect)
        );
        let rows = Sql::new().sql(sql).load::<KindRow>(conn)?;
        let mut stats = OutboxStats::default();
        for row in rows {
            let age = row
                .oldest_due_ms
                .map(|ms| Duration::from_millis(ms.max(0) as u64));
            let kind = KindStats {
                kind: row.kind,
                due: row.due as u64,
                scheduled: row.scheduled as u64,
                running: row.running as u64,
                dead: row.dead as u64,
                oldest_due_age: age,
            };
            stats.due += kind.due;
            stats.scheduled += kind.scheduled;
            stats.running += kind.running;
            stats.dead += kind.dead;
            stats.oldest_due_age = stats.oldest_due_age.max(age);
            stats.kinds.push(kind);
        }
        Ok(stats)
    }

    /// [`rows_in`](Self::rows_in) the default table.
    pub fn rows<Conn>(conn: &mut Conn) -> QueryResult<Vec<OutboxRecord>>
    where
        Conn: Connection + LoadConnection,
        Conn::Backend: OutboxBackend,
    {
        Self::rows_in(conn, &OutboxTable::default())
    }

    /// Every row of `table`, oldest first (by id, a UUIDv7).
    pub fn rows_in<Conn>(conn: &mut Conn, table: &OutboxTable) -> QueryResult<Vec<OutboxRecord>>
    where
        Conn: Connection + LoadConnection,
        Conn::Backend: OutboxBackend,
    {
        let dialect = <Conn::Backend as Sealed>::DIALECT;
        let sql = format!(
            "SELECT {} AS id, kind, dedupe_key, payload, state, attempt, max_attempts, \
             last_error FROM {} ORDER BY id",
            dialect.id_text(),
            table.qualified(dialect)
        );
        Sql::new().sql(sql).load::<OutboxRecord>(conn)
    }
}

struct KindRow {
    kind: String,
    due: i64,
    scheduled: i64,
    running: i64,
    dead: i64,
    oldest_due_ms: Option<i64>,
}

impl<DB: OutboxBackend> QueryableByName<DB> for KindRow {
    fn build<'a>(row: &impl NamedRow<'a, DB>) -> deserialize::Result<Self> {
        Ok(Self {
            kind: DB::get_text(row, "kind")?,
            due: DB::get_i64(row, "due")?,
            scheduled: DB::get_i64(row, "scheduled")?,
            running: DB::get_i64(row, "running")?,
            dead: DB::get_i64(row, "dead")?,
            oldest_due_ms: DB::get_opt_i64(row, "oldest_due_ms")?,
        })
    }
}

impl<DB: OutboxBackend> QueryableByName<DB> for OutboxRecord {
    fn build<'a>(row: &impl NamedRow<'a, DB>) -> deserialize::Result<Self> {
        Ok(Self {
            id: DB::get_text(row, "id")?.parse()?,
            kind: DB::get_text(row, "kind")?,
            key: DB::get_opt_text(row, "dedupe_key")?,
            payload: DB::get_text(row, "payload")?,
            state: DB::get_text(row, "state")?,
            attempt: DB::get_i32(row, "attempt")?,
            max_attempts: DB::get_i32(row, "max_attempts")?,
            last_error: DB::get_opt_text(row, "last_error")?,
        })
    }
}
