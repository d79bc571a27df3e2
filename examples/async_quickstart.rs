//! The async wrapper, narrated: an axum-style handler takes a connection
//! from a deadpool pool of `AsyncHookedConnection`s, creates an order in a
//! transaction and publishes an event only after COMMIT.
//!
//! ```sh
//! cargo run --example async_quickstart --features async,tokio,deadpool
//! ```
//!
//! SQLite (diesel-async's `SyncConnectionWrapper`) in a temporary file; the
//! same code runs on `AsyncPgConnection` and `AsyncMysqlConnection`.

use std::time::Duration;

use diesel::result::Error;
use diesel::SqliteConnection;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use diesel_on_commit::prelude::*;
use tokio::sync::mpsc;

type DbConn = AsyncHookedConnection<SyncConnectionWrapper<SqliteConnection>>;
type DbPool = Pool<DbConn>;

/// Stands in for a message broker (RabbitMQ, NATS, Kafka).
#[derive(Clone)]
struct Broker(mpsc::UnboundedSender<String>);

impl Broker {
    async fn publish(&self, event: String) -> Result<(), String> {
        tokio::time::sleep(Duration::from_millis(5)).await; // a network round trip
        self.0.send(event).map_err(|e| e.to_string())
    }
}

/// The transaction: insert the order, publish `order_created` after COMMIT.
#[atomic]
async fn create_order(conn: &mut DbConn, id: i32, broker: Broker) -> Result<i32, Error> {
    conn.on_rollback(move || println!("   on_rollback: order {id} was not created"));
    diesel::sql_query(format!("INSERT INTO orders (id) VALUES ({id})"))
        .execute(conn)
        .await?;
    conn.on_commit_async(async move { broker.publish(format!("order_created {id}")).await });
    println!("   order {id} inserted; nothing published yet (not committed)");
    Ok(id)
}

/// What an axum handler would be: `State(pool)` in, a status out.
async fn handle_create_order(pool: &DbPool, broker: &Broker, id: i32) -> &'static str {
    let mut pooled = pool.get().await.expect("a pooled connection");
    let conn: &mut DbConn = &mut pooled;
    match create_order(conn, id, broker.clone()).await {
        Ok(_) => "201 Created",
        Err(_) => "409 Conflict",
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::temp_dir().join(format!("async_quickstart_{}.db", std::process::id()));
    let url = path.to_string_lossy().into_owned();
    let pool: DbPool = Pool::builder(AsyncDieselConnectionManager::<DbConn>::new(&url))
        .max_size(4)
        .build()?;
    pool.get()
        .await?
        .batch_execute("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        .await?;
    let (tx, mut published) = mpsc::unbounded_channel();
    let broker = Broker(tx);

    println!("1. POST /orders {{id: 1}}");
    let status = handle_create_order(&pool, &broker, 1).await;
    println!("   {status}; published: {:?}", published.try_recv().ok());

    println!("2. POST /orders {{id: 1}} again: duplicate key, rolled back");
    let status = handle_create_order(&pool, &broker, 1).await;
    println!("   {status}; published: {:?}", published.try_recv().ok());

    println!("3. POST /orders {{id: 2}}; the client hangs up while the hook publishes");
    let mut pooled = pool.get().await?;
    let conn: &mut DbConn = &mut pooled;
    let (b, (started, hook_started)) = (broker.clone(), tokio::sync::oneshot::channel());
    let request = conn.transaction::<_, Error, _>(async move |conn| {
        diesel::sql_query("INSERT INTO orders (id) VALUES (2)")
            .execute(conn)
            .await?;
        conn.on_commit_async(async move {
            let _ = started.send(());
            b.publish("order_created 2".into()).await
        });
        Ok(())
    });
    // The request future is dropped as soon as the hook started (after COMMIT).
    tokio::select! {
        _ = request => unreachable!("the hook takes 5 ms"),
        _ = hook_started => println!("   request future dropped mid-hook"),
    }
    let event = tokio::time::timeout(Duration::from_secs(1), published.recv()).await;
    println!(
        "   the hook went on, on a spawned task; published: {:?}",
        event.ok().flatten()
    );

    drop(pooled);
    let _ = std::fs::remove_file(&path);
    Ok(())
}
