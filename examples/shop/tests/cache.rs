//! The read-through cache's generation check: a reader that loaded the old
//! row before COMMIT cannot store it after the invalidation (the race that
//! deleting after COMMIT alone does not close).

mod common;

use common::{redis_url, RedisPrefix};
use serde_json::{json, Value};
use shop::cache::{Cache, Lookup};
use shop::Effects;

#[tokio::test]
async fn a_fill_that_lost_the_race_with_an_invalidation_is_refused() {
    let redis = RedisPrefix::new("cache");
    let cache = Cache::connect(&redis_url(), redis.keys()).await.unwrap();
    let fx = Effects::connect(&redis_url(), redis.keys()).unwrap();
    let key = redis.keys().product(1);

    // A reader misses and loads version 1 from the database...
    let Lookup::Miss { generation } = cache.lookup::<Value>(&key).await.unwrap() else {
        panic!("an empty cache hit");
    };
    // ...meanwhile a writer commits version 2 and its hook invalidates...
    fx.invalidate(std::slice::from_ref(&key)).unwrap();
    // ...so the reader's late fill with version 1 is refused.
    let stored = cache
        .fill(&key, &generation, &json!({"version": 1}))
        .await
        .unwrap();
    assert!(!stored, "a stale fill was stored");
    assert!(matches!(
        cache.lookup::<Value>(&key).await.unwrap(),
        Lookup::Miss { .. }
    ));

    // The next reader misses, loads version 2 and stores it.
    let Lookup::Miss { generation } = cache.lookup::<Value>(&key).await.unwrap() else {
        panic!("hit after an invalidation");
    };
    assert!(cache
        .fill(&key, &generation, &json!({"version": 2}))
        .await
        .unwrap());
    match cache.lookup::<Value>(&key).await.unwrap() {
        Lookup::Hit(v) => assert_eq!(v, json!({"version": 2})),
        Lookup::Miss { .. } => panic!("the fill was not stored"),
    }
}
