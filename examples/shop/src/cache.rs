//! The read-through cache of products and category lists (async Redis).
//!
//! Deleting a key after COMMIT (an `on_commit!` hook, see
//! [`crate::services`]) fixes the classic race: deleting it *before* COMMIT
//! lets a reader refill it with the old row while the transaction is still
//! open. One race is left, which no hook can fix: a slow reader that loaded
//! the old row before COMMIT and stores it after the delete. So every cache
//! key has a generation counter (`{key}:gen`), bumped by each invalidation
//! together with the delete. A reader notes the generation when it misses
//! and stores what it loaded only if the generation is still the same (a
//! small Lua script, atomic in Redis). The cache then never serves a value
//! older than the last committed update whose hooks have run.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, RedisResult, Script};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::effects::Keys;

/// How long a cached value lives, at most.
const TTL_SECONDS: u64 = 300;

/// Stores `ARGV[2]` under `KEYS[1]` only if the generation `KEYS[2]` still
/// is `ARGV[1]` (what the reader saw when it missed).
const FILL_IF_GENERATION: &str = r"
local current = redis.call('GET', KEYS[2]) or '0'
if current == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
    return 1
end
return 0
";

/// Was the value served from the cache? (The `x-cache` response header.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    /// Redis failed: the value came from the database and was not stored.
    Bypass,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Bypass => "bypass",
        }
    }
}

/// A cache lookup: the value if it was there, else the generation to fill
/// with.
#[derive(Debug)]
pub enum Lookup<T> {
    Hit(T),
    Miss { generation: String },
}

#[derive(Clone)]
pub struct Cache {
    conn: MultiplexedConnection,
    keys: Keys,
    fill: Script,
}

impl Cache {
    /// Connects (one multiplexed connection, shared by all handlers).
    pub async fn connect(redis_url: &str, keys: Keys) -> RedisResult<Self> {
        let client = redis::Client::open(redis_url)?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok(Cache {
            conn,
            keys,
            fill: Script::new(FILL_IF_GENERATION),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Reads `key` and its generation in one round trip.
    pub async fn lookup<T: DeserializeOwned>(&self, key: &str) -> RedisResult<Lookup<T>> {
        let mut conn = self.conn.clone();
        let (value, generation): (Option<String>, Option<String>) =
            conn.mget(&[key, &Keys::generation(key)]).await?;
        if let Some(value) = value {
            match serde_json::from_str(&value) {
                Ok(value) => return Ok(Lookup::Hit(value)),
                // Written by another version of the service: treat as a miss.
                Err(e) => {
                    tracing::warn!("cache key {key} holds unreadable JSON ({e}); ignoring it")
                }
            }
        }
        Ok(Lookup::Miss {
            generation: generation.unwrap_or_else(|| "0".to_owned()),
        })
    }

    /// Stores `value` under `key` unless an invalidation happened since the
    /// lookup that returned `generation`. Returns whether it was stored.
    pub async fn fill<T: Serialize>(
        &self,
        key: &str,
        generation: &str,
        value: &T,
    ) -> RedisResult<bool> {
        let json = serde_json::to_string(value).expect("cached values serialize");
        let mut conn = self.conn.clone();
        let stored: i64 = self
            .fill
            .key(key)
            .key(Keys::generation(key))
            .arg(generation)
            .arg(json)
            .arg(TTL_SECONDS)
            .invoke_async(&mut conn)
            .await?;
        Ok(stored == 1)
    }
}
