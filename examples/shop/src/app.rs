//! `shop serve` and `shop worker`: configuration, start-up checks, and the
//! errors a person reads when a service does not answer.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use diesel_migrations::MigrationHarness;

use crate::cache::Cache;
use crate::effects::{Effects, Keys};
use crate::http::{router, AppState};
use crate::worker::{Worker, WorkerConfig};
use crate::{DbConn, DbPool, MIGRATIONS};

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

const START_POSTGRES: &str =
    "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start";
const START_REDIS: &str =
    "redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" --appendonly no";

/// Why the service could not start: a sentence for a person, not a panic.
#[derive(Debug)]
pub struct StartupError(String);

impl StartupError {
    pub fn new(message: impl Into<String>) -> Self {
        StartupError(message.into())
    }
}

impl fmt::Display for StartupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartupError {}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((userinfo, host)) = rest.split_once('@') {
            if let Some((user, _password)) = userinfo.split_once(':') {
                return format!("{scheme}://{user}:***@{host}");
            }
        }
    }
    url.to_owned()
}

pub fn postgres_unreachable(url: &str, e: impl fmt::Display) -> StartupError {
    StartupError(format!(
        "cannot connect to PostgreSQL at {}: {e}\n\
         Is it running? Start it with: {START_POSTGRES}\n\
         (or pass --database-url)",
        redact(url)
    ))
}

pub fn redis_unreachable(url: &str, e: impl fmt::Display) -> StartupError {
    StartupError(format!(
        "cannot connect to Redis at {}: {e}\n\
         Is it running? Start it with: {START_REDIS}\n\
         (or pass --redis-url)",
        redact(url)
    ))
}

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub database_url: String,
    pub redis_url: String,
    pub keys: Keys,
    pub bind: SocketAddr,
    pub pool_size: usize,
}

/// A pool of wrapped connections. Nothing is connected yet.
pub fn pool(database_url: &str, size: usize) -> Result<DbPool, StartupError> {
    let manager =
        deadpool_diesel::Manager::<DbConn>::new(database_url, deadpool_diesel::Runtime::Tokio1);
    DbPool::builder(manager)
        .max_size(size)
        .runtime(deadpool_diesel::Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| StartupError(format!("cannot build the database pool: {e}")))
}

/// Connects to PostgreSQL (running the pending migrations) and Redis, and
/// returns the routes. Every failure is a [`StartupError`].
pub async fn prepare(config: &ServeConfig) -> Result<axum::Router, StartupError> {
    let url = &config.database_url;
    let pool = pool(url, config.pool_size)?;
    let conn = pool.get().await.map_err(|e| postgres_unreachable(url, e))?;
    let applied = conn
        .interact(|conn| {
            conn.run_pending_migrations(MIGRATIONS)
                .map(|done| done.len())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| StartupError(format!("migrations: {e}")))?
        .map_err(|e| StartupError(format!("cannot run the migrations on {}: {e}", redact(url))))?;
    drop(conn);
    tracing::info!(
        "PostgreSQL at {}: {applied} migration(s) applied",
        redact(url)
    );

    let redis_url = config.redis_url.clone();
    let keys = config.keys.clone();
    let fx = tokio::task::spawn_blocking(move || Effects::connect(&redis_url, keys))
        .await
        .map_err(|e| StartupError(format!("Redis check: {e}")))?
        .map_err(|e| redis_unreachable(&config.redis_url, e))?;
    let cache = Cache::connect(&config.redis_url, config.keys.clone())
        .await
        .map_err(|e| redis_unreachable(&config.redis_url, e))?;
    tracing::info!(
        "Redis at {}: keys under {:?}",
        redact(&config.redis_url),
        config.keys.prefix()
    );
    Ok(router(AppState { pool, fx, cache }))
}

/// `shop serve`: prints `listening on http://ADDR` on stdout once it
/// accepts connections, and serves until Ctrl-C.
pub async fn serve(config: ServeConfig) -> Result<(), StartupError> {
    let app = prepare(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|e| StartupError(format!("cannot listen on {}: {e}", config.bind)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartupError(format!("cannot read the local address: {e}")))?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on http://{addr}");
        let _ = out.flush();
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| StartupError(format!("server error: {e}")))
}

/// `shop worker`.
pub fn worker(config: WorkerConfig) -> Result<(), StartupError> {
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut worker = Worker::connect(config)?;
    worker.run(&stop);
    Ok(())
}

/// The worker's configuration with the default mail directory.
pub fn default_mail_dir() -> PathBuf {
    PathBuf::from("mail")
}
