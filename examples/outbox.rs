//! Outbox hooks on SQLite: work that must happen is written as a row in
//! the transaction that registers it, and run after COMMIT by a handler.
//!
//! ```sh
//! cargo run --example outbox --features sqlite,outbox
//! ```

use diesel::prelude::*;
use diesel::result::Error;
use diesel_on_commit::outbox::{
    Drain, Outbox, OutboxAdmin, OutboxContext, OutboxError, OutboxHandlers, OutboxHook,
    OutboxOptions,
};
use diesel_on_commit::HookedConnection;

/// The job: a typed, serializable value.
#[derive(serde::Serialize, serde::Deserialize)]
struct SendConfirmation {
    order_id: i64,
}

impl OutboxHook for SendConfirmation {
    const KIND: &'static str = "shop.send_confirmation";
}

fn place_order(
    conn: &mut HookedConnection<SqliteConnection>,
    id: i64,
    fail: bool,
) -> QueryResult<()> {
    conn.transaction(|conn| {
        diesel::sql_query("INSERT INTO orders (id) VALUES (?)")
            .bind::<diesel::sql_types::BigInt, _>(id)
            .execute(conn)?;
        // Serialized now, written just before COMMIT: the row exists if and
        // only if the order does. The key makes a retry of the same order
        // register one confirmation, not two.
        let job = conn.on_commit_outbox_opts(
            SendConfirmation { order_id: id },
            OutboxOptions::new().key(format!("order-{id}")),
        )?;
        println!("order {id}: registered outbox row {job}");
        if fail {
            println!("order {id}: payment declined, rolling back");
            return Err(Error::RollbackTransaction);
        }
        Ok(())
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
    Outbox::run_migrations(&mut conn)?;
    diesel::sql_query("CREATE TABLE orders (id BIGINT PRIMARY KEY)").execute(&mut conn)?;

    place_order(&mut conn, 1, false)?;
    let _ = place_order(&mut conn, 2, true); // rolled back: no row
    place_order(&mut conn, 3, false)?;

    let stats = OutboxAdmin::stats(&mut conn)?;
    println!("before the drain: {} due, {} dead", stats.due, stats.dead);

    // Handlers run at least once: make them idempotent, keyed on ctx.id().
    let handlers = OutboxHandlers::builder()
        .handle(|job: SendConfirmation, ctx: OutboxContext| {
            if job.order_id == 3 && ctx.attempt() == 1 {
                return Err(OutboxError::fail("mail server busy"));
            }
            println!(
                "sending the confirmation of order {} (idempotency key {}, attempt {})",
                job.order_id,
                ctx.id(),
                ctx.attempt()
            );
            Ok(())
        })
        .build()?;
    let report = handlers.drain(&mut conn, Drain::Due)?;
    println!("drained: {report:?}");

    let stats = OutboxAdmin::stats(&mut conn)?;
    println!(
        "after the drain: {} due, {} backing off, oldest due {:?}",
        stats.due, stats.scheduled, stats.oldest_due_age
    );
    // The failed row is due again in about 1 s (attempt⁴ s ± 10 %).
    let report = handlers.drain(&mut conn, Drain::All)?;
    println!("drained again: {report:?}");
    Ok(())
}
