//! The flush (O1, O6): at the outermost commit, after the last
//! `before_commit` hook and before COMMIT, the outbox rows that survived
//! their savepoints are deduplicated by key (first registration wins) and
//! written in multi-row INSERTs, each under the backend's bind-parameter
//! limit. A transaction with no row sends no statement.

use std::collections::HashSet;

use diesel::connection::Connection;
use diesel::result::QueryResult;
use diesel::RunQueryDsl;

use crate::hooked::connection::HookedConnection;
use crate::hooked::hooks::Hook;
use crate::outbox::backend::sealed::Sealed;
use crate::outbox::backend::{OutboxBackend, Part, Sql};
use crate::outbox::{CapturedOutbox, OutboxId, OutboxTable};
use crate::rules::label::HookLabel;

/// An outbox row as registered: serialized, validated, not yet written.
pub(crate) struct OutboxRow {
    pub(crate) id: OutboxId,
    pub(crate) kind: &'static str,
    pub(crate) key: Option<String>,
    pub(crate) payload: String,
    pub(crate) delay_ms: i64,
    pub(crate) table: OutboxTable,
}

/// Writes rows through the wrapper; made for `C` where its backend is an
/// [`OutboxBackend`], so the commit path needs no bound on `C`.
pub(crate) type WriteFn<C> =
    fn(&mut HookedConnection<C>, &[(HookLabel, OutboxRow)]) -> QueryResult<()>;

/// An outbox row in the hook queue (`Hook::Outbox`).
pub(crate) struct QueuedRow<C: Connection> {
    pub(crate) row: OutboxRow,
    pub(crate) write: WriteFn<C>,
}

/// Binds per row of the INSERT: id, kind, key, payload, delay.
const BINDS_PER_ROW: usize = 5;

/// A statement's payload bytes stop growing past this (MySQL's
/// `max_allowed_packet` is 4 MiB by default on older servers); one row
/// always fits, since a payload is at most `max_payload`.
const MAX_STATEMENT_PAYLOAD: usize = 2 * 1024 * 1024;

/// The flush: takes the queued rows, keeps the first registration of each
/// `(table, kind, key)`, writes them. Returns what an open capture records.
pub(crate) fn flush_queued<C: Connection>(
    conn: &mut HookedConnection<C>,
) -> QueryResult<Option<Vec<CapturedOutbox>>> {
    let entries = conn.state.take_outbox();
    let mut write = None;
    let mut rows = Vec::with_capacity(entries.len());
    for entry in entries {
        if let Hook::Outbox(queued) = entry.hook {
            let QueuedRow { row, write: w } = *queued;
            write = Some(w);
            rows.push((entry.label, row));
        }
    }
    let Some(write) = write else {
        return Ok(None);
    };
    dedupe(&mut rows);
    write(conn, &rows)?;
    Ok(conn.state.capture_open().then(|| captured(rows)))
}

/// O6 within a transaction: first registration wins per `(table, kind, key)`.
fn dedupe(rows: &mut Vec<(HookLabel, OutboxRow)>) {
    if rows.iter().all(|(_, row)| row.key.is_none()) {
        return;
    }
    let mut keep = Vec::with_capacity(rows.len());
    {
        let mut seen = HashSet::new();
        for (_, row) in rows.iter() {
            keep.push(match &row.key {
                None => true,
                Some(key) => seen.insert((&row.table, row.kind, key.as_str())),
            });
        }
    }
    let mut keep = keep.into_iter();
    rows.retain(|_| keep.next().unwrap_or(true));
}

pub(crate) fn captured(rows: Vec<(HookLabel, OutboxRow)>) -> Vec<CapturedOutbox> {
    rows.into_iter()
        .map(|(label, row)| CapturedOutbox {
            id: row.id,
            kind: row.kind,
            key: row.key,
            payload: row.payload,
            label,
        })
        .collect()
}

/// Writes `rows`, table by table, in INSERTs of at most the backend's bind
/// limit (and about 2 MiB of payload); rows whose `(kind, key)` is already
/// pending are skipped by the database (O6).
pub(crate) fn write_rows<C>(
    conn: &mut HookedConnection<C>,
    rows: &[(HookLabel, OutboxRow)],
) -> QueryResult<()>
where
    C: Connection,
    C::Backend: OutboxBackend,
{
    let mut tables: Vec<&OutboxTable> = Vec::new();
    for (_, row) in rows {
        if !tables.contains(&&row.table) {
            tables.push(&row.table);
        }
    }
    let max_rows = <C::Backend as Sealed>::DIALECT.max_binds() / BINDS_PER_ROW;
    for table in tables {
        let mut chunk = Vec::new();
        let mut bytes = 0;
        for (_, row) in rows.iter().filter(|(_, row)| row.table == *table) {
            if !chunk.is_empty()
                && (chunk.len() == max_rows || bytes + row.payload.len() > MAX_STATEMENT_PAYLOAD)
            {
                insert::<C>(conn, table, &chunk)?;
                chunk.clear();
                bytes = 0;
            }
            bytes += row.payload.len();
            chunk.push(row);
        }
        if !chunk.is_empty() {
            insert::<C>(conn, table, &chunk)?;
        }
    }
    Ok(())
}

/// One multi-row INSERT.
fn insert<C>(
    conn: &mut HookedConnection<C>,
    table: &OutboxTable,
    rows: &[&OutboxRow],
) -> QueryResult<()>
where
    C: Connection,
    C::Backend: OutboxBackend,
{
    let dialect = <C::Backend as Sealed>::DIALECT;
    let mut sql = Sql::new().uncached().sql(format!(
        "INSERT INTO {} (id, kind, dedupe_key, payload, run_at, created_at) VALUES ",
        table.qualified(dialect)
    ));
    let now = dialect.now();
    for (i, row) in rows.iter().enumerate() {
        sql.push(Part::Sql(if i == 0 { "(" } else { ", (" }.into()));
        sql.push(Part::Id(row.id.to_string().into()));
        sql.push(Part::Sql(", ".into()));
        sql.push(Part::Text(row.kind.into()));
        sql.push(Part::Sql(", ".into()));
        sql.push(Part::OptText(std::borrow::Cow::Borrowed(&row.key)));
        sql.push(Part::Sql(", ".into()));
        sql.push(Part::Text(row.payload.as_str().into()));
        sql.push(Part::Sql(", ".into()));
        sql.push(Part::NowPlusMs(row.delay_ms));
        sql.push(Part::Sql(format!(", {now})").into()));
    }
    sql.push(Part::Sql(dialect.on_conflict().into()));
    sql.execute(conn).map(drop)
}
