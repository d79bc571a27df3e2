//! What the hooks do: queue a job and invalidate cache keys, in Redis.
//!
//! Hooks run while the database connection is still checked out of the pool,
//! so they must be fast: each one is a single round trip to Redis (`LPUSH`,
//! or one `MULTI`/`EXEC` of `INCR` + `DEL`), well under a millisecond on the
//! same host, much less than the transaction it follows.
//!
//! **Why blocking Redis connections.** The transaction runs in
//! `deadpool_diesel`'s `interact`, on one of tokio's blocking threads; the
//! hooks run there too, right after COMMIT, before `interact` returns. A
//! blocking call is legal on that thread, and making it there means that when
//! the HTTP response goes out, the job is queued and the stale cache keys are
//! gone: a client that reads after its own write never sees the old value.
//! The alternative, handing the work to a channel that a tokio task drains,
//! frees the connection a few microseconds sooner but gives that guarantee
//! up (the response can overtake the invalidation) unless the handler waits
//! for the task, which is the same round trip with more moving parts.
//!
//! A Redis failure in a hook is returned as `Err` and logged by
//! diesel-on-commit at ERROR with the hook's label; the order stays
//! committed. Hooks are at most once: work that must happen even if the
//! process dies right after COMMIT needs an outbox row written in the same
//! transaction (see the README).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::{Commands, RedisResult};
use serde::{Deserialize, Serialize};

/// How long a hook may wait for Redis before it gives up (and is logged).
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle blocking connections kept for hooks.
const MAX_IDLE: usize = 16;

/// A job on the queue (a Redis list of JSON values). Jobs carry ids only:
/// the worker reads the committed rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Job {
    /// E-mail the customer the confirmation of a committed order.
    OrderConfirmation { order_id: i64 },
    /// Tell the requester that their friend request was accepted.
    FriendRequestAccepted { request_id: i64 },
}

/// The service's Redis key names, under a prefix (empty by default; tests
/// give each run its own).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The cached product: `product:{id}`.
    pub fn product(&self, id: i64) -> String {
        format!("{}product:{id}", self.prefix)
    }

    /// The cached list of a category's products: `category:{cid}:products`.
    pub fn category(&self, category_id: i64) -> String {
        format!("{}category:{category_id}:products", self.prefix)
    }

    /// The generation counter of a cache key, bumped by every invalidation
    /// (see [`crate::cache`]).
    pub fn generation(cache_key: &str) -> String {
        format!("{cache_key}:gen")
    }

    /// The job queue: a list, `LPUSH` by hooks, `BRPOP` by the worker.
    pub fn jobs(&self) -> String {
        format!("{}jobs", self.prefix)
    }

    /// Jobs the worker could not process.
    pub fn dead_jobs(&self) -> String {
        format!("{}jobs:dead", self.prefix)
    }
}

/// The hooks' handle on Redis: cheap to clone (an `Arc`), `Send + 'static`,
/// so an `on_commit!` closure can own one.
#[derive(Clone)]
pub struct Effects {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    keys: Keys,
    /// A tiny pool of blocking connections: a hook takes one, makes its
    /// round trip and puts it back.
    idle: Mutex<Vec<redis::Connection>>,
}

impl std::fmt::Debug for Effects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Effects")
            .field("keys", &self.inner.keys)
            .finish_non_exhaustive()
    }
}

impl Effects {
    /// Opens the client and checks that Redis answers (`PING`).
    pub fn connect(redis_url: &str, keys: Keys) -> RedisResult<Self> {
        let effects = Effects {
            inner: Arc::new(Inner {
                client: redis::Client::open(redis_url)?,
                keys,
                idle: Mutex::new(Vec::new()),
            }),
        };
        effects.with_conn(|conn| redis::cmd("PING").query::<String>(conn))?;
        Ok(effects)
    }

    pub fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    /// Queues a job (one `LPUSH`). Called from `on_commit!` hooks.
    pub fn enqueue(&self, job: &Job) -> RedisResult<()> {
        let payload = serde_json::to_string(job).expect("a Job serializes");
        let queue = self.inner.keys.jobs();
        self.with_conn(|conn| conn.lpush(&queue, payload))
    }

    /// Deletes cache keys and bumps their generations, atomically (one
    /// `MULTI`/`EXEC`). Called from `on_commit!` hooks, after COMMIT: a
    /// reader that misses now loads the committed row, and a reader that
    /// loaded the old row before COMMIT can no longer store it (its fill is
    /// checked against the generation it saw).
    pub fn invalidate(&self, cache_keys: &[String]) -> RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for key in cache_keys {
            pipe.incr(Keys::generation(key), 1).ignore();
            pipe.del(key).ignore();
        }
        self.with_conn(|conn| pipe.query::<()>(conn))
    }

    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> RedisResult<T>,
    ) -> RedisResult<T> {
        let idle = self
            .inner
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        let mut conn = match idle {
            Some(conn) => conn,
            None => {
                let conn = self
                    .inner
                    .client
                    .get_connection_with_timeout(REDIS_TIMEOUT)?;
                conn.set_read_timeout(Some(REDIS_TIMEOUT))?;
                conn.set_write_timeout(Some(REDIS_TIMEOUT))?;
                conn
            }
        };
        let result = f(&mut conn);
        // A connection that failed at the I/O level is dropped, not reused.
        let reusable = match &result {
            Ok(_) => true,
            Err(e) => !(e.is_io_error() || e.is_timeout() || e.is_connection_dropped()),
        };
        if reusable {
            let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
        result
    }
}
