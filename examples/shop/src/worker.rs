//! The worker: takes jobs off the Redis list and "sends" each e-mail with
//! lettre's `FileTransport`, which writes it as an `.eml` file into a
//! directory (swap in `SmtpTransport` for real mail).
//!
//! Jobs carry ids; the worker reads the committed rows. Because the jobs are
//! queued by `on_commit!` hooks, a job never names a row that was rolled
//! back: `order_with_lines` finding nothing would be a bug, and is logged as
//! one. A job that cannot be processed goes to the `jobs:dead` list.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use diesel::{Connection, PgConnection};
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::{FileTransport, Message, Transport};
use redis::Commands;

use crate::app::{postgres_unreachable, redis_unreachable, StartupError};
use crate::effects::{Job, Keys};
use crate::services;

/// How long one `BRPOP` waits for a job before the loop looks at `stop`.
const POLL_SECONDS: f64 = 1.0;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub database_url: String,
    pub redis_url: String,
    pub keys: Keys,
    pub mail_dir: PathBuf,
}

/// What one job came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The e-mail was written.
    Sent { to: String, subject: String },
    /// The job was moved to the dead list; why.
    Dead(String),
}

pub struct Worker {
    config: WorkerConfig,
    db: PgConnection,
    redis: redis::Connection,
    mailer: FileTransport,
    from: Mailbox,
    /// Jobs processed and e-mails sent since start.
    pub processed: u64,
    pub sent: u64,
}

fn redis_connection(url: &str) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(url)?;
    let conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
    // Longer than a BRPOP's wait.
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.set_write_timeout(Some(Duration::from_secs(2)))?;
    Ok(conn)
}

impl Worker {
    /// Connects to both services and creates the mail directory.
    pub fn connect(config: WorkerConfig) -> Result<Self, StartupError> {
        let db = PgConnection::establish(&config.database_url)
            .map_err(|e| postgres_unreachable(&config.database_url, e))?;
        let mut redis = redis_connection(&config.redis_url)
            .map_err(|e| redis_unreachable(&config.redis_url, e))?;
        redis::cmd("PING")
            .query::<String>(&mut redis)
            .map_err(|e| redis_unreachable(&config.redis_url, e))?;
        std::fs::create_dir_all(&config.mail_dir).map_err(|e| {
            StartupError::new(format!(
                "cannot create the mail directory {}: {e}",
                config.mail_dir.display()
            ))
        })?;
        Ok(Worker {
            mailer: FileTransport::new(&config.mail_dir),
            from: "Shop <shop@example.com>".parse().expect("a valid mailbox"),
            config,
            db,
            redis,
            processed: 0,
            sent: 0,
        })
    }

    /// Processes jobs until `stop` is set (checked at least every second).
    /// Survives Redis and PostgreSQL restarts: it logs, waits and reconnects.
    pub fn run(&mut self, stop: &AtomicBool) {
        tracing::info!(
            "worker: waiting for jobs on {} (mail goes to {})",
            self.config.keys.jobs(),
            self.config.mail_dir.display()
        );
        while !stop.load(Ordering::Relaxed) {
            match self.process_next() {
                Ok(_) => {}
                Err(e) => {
                    tracing::error!("worker: Redis failed ({e}); reconnecting in 1 s");
                    std::thread::sleep(Duration::from_secs(1));
                    match redis_connection(&self.config.redis_url) {
                        Ok(conn) => self.redis = conn,
                        Err(e) => tracing::error!("worker: cannot reconnect to Redis: {e}"),
                    }
                }
            }
        }
    }

    /// Waits up to a second for a job and processes it. `Ok(None)`: no job
    /// came.
    pub fn process_next(&mut self) -> redis::RedisResult<Option<Outcome>> {
        let popped: Option<(String, String)> =
            self.redis.brpop(self.config.keys.jobs(), POLL_SECONDS)?;
        let Some((_, payload)) = popped else {
            return Ok(None);
        };
        self.processed += 1;
        let outcome = match self.handle(&payload) {
            Ok((to, subject)) => {
                self.sent += 1;
                tracing::info!("worker: sent {subject:?} to {to}");
                Outcome::Sent { to, subject }
            }
            Err(why) => {
                tracing::error!(
                    "worker: job {payload} failed: {why}; moved to {}",
                    self.config.keys.dead_jobs()
                );
                let _: () = self.redis.lpush(self.config.keys.dead_jobs(), &payload)?;
                Outcome::Dead(why)
            }
        };
        Ok(Some(outcome))
    }

    fn handle(&mut self, payload: &str) -> Result<(String, String), String> {
        let job: Job = serde_json::from_str(payload).map_err(|e| format!("not a job: {e}"))?;
        let (to, subject, body) = match self.compose(&job) {
            Ok(Some(mail)) => mail,
            Ok(None) => return Err(format!("{job:?} names a row that does not exist")),
            Err(e) => {
                // The connection may be gone: make a new one for the next job.
                if let Ok(db) = PgConnection::establish(&self.config.database_url) {
                    self.db = db;
                }
                return Err(format!("database error: {e}"));
            }
        };
        let message = Message::builder()
            .from(self.from.clone())
            .to(to
                .parse::<Mailbox>()
                .map_err(|e| format!("bad recipient {to:?}: {e}"))?)
            .subject(subject.clone())
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| format!("cannot build the e-mail: {e}"))?;
        self.mailer
            .send(&message)
            .map_err(|e| format!("cannot write the e-mail: {e}"))?;
        Ok((to, subject))
    }

    /// `(to, subject, body)`, or `None` if the row is missing.
    fn compose(&mut self, job: &Job) -> diesel::QueryResult<Option<(String, String, String)>> {
        Ok(match *job {
            Job::OrderConfirmation { order_id } => {
                services::order_with_lines(&mut self.db, order_id)?.map(|(order, lines)| {
                    let mut body = format!("Thank you for your order #{}.\n\n", order.id);
                    for (line, name) in &lines {
                        body += &format!(
                            "  {} x {} (product {}) at {}\n",
                            line.quantity,
                            name,
                            line.product_id,
                            money(line.unit_price_cents)
                        );
                    }
                    body += &format!("\nTotal: {}\n", money(order.total_cents));
                    if let Some(reference) = &order.client_ref {
                        body += &format!("Reference: {reference}\n");
                    }
                    (
                        order.customer_email,
                        format!("Order #{} confirmed", order.id),
                        body,
                    )
                })
            }
            Job::FriendRequestAccepted { request_id } => {
                services::friend_request_with_users(&mut self.db, request_id)?.map(
                    |(request, from, to)| {
                        (
                            from.email,
                            format!("{} accepted your friend request", to.name),
                            format!(
                                "Hello {},\n\n{} accepted your friend request (#{}).\n",
                                from.name, to.name, request.id
                            ),
                        )
                    },
                )
            }
        })
    }
}

fn money(cents: i64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}
