//! How to test your own hooks: unit-level, without HTTP, on a real
//! PostgreSQL and Redis.
//!
//! Two tools from diesel-on-commit:
//! - the **test transaction** as baseline (`begin_test_transaction()`, like
//!   Django's `TestCase`): everything the test writes is rolled back at the
//!   end, yet the code under test still commits "for real" inside it (its
//!   outermost `#[atomic]` commit is a `RELEASE SAVEPOINT`), so its hooks
//!   fire as in production;
//! - **`capture_on_commit`** (Django's `captureOnCommitCallbacks`):
//!   `Capture::Collect` shows which hooks a committed transaction registered,
//!   without running them, and `run` runs them when the test wants;
//!   `Capture::Execute` runs them as usual and records them.
//!
//! A test transaction cannot show what only a real COMMIT checks (deferred
//! constraints, serialization failures): the end-to-end test covers those
//! paths with real commits.

mod common;

use common::{redis_url, PgSchema, RedisPrefix};
use diesel::prelude::*;
use diesel_on_commit::prelude::*;
use shop::models::{Cart, CartItem, NewFriendRequest, NewProduct, NewUser, ProductChange};
use shop::services::{
    accept_friend_request, create_friend_request, create_product, create_user, find_product,
    place_order, update_product,
};
use shop::{Effects, Job, ShopError};

fn jobs(redis: &RedisPrefix) -> Vec<Job> {
    let mut jobs: Vec<Job> = redis
        .list(&redis.keys().jobs())
        .iter()
        .map(|j| serde_json::from_str(j).unwrap())
        .collect();
    jobs.reverse(); // LPUSH: the newest is first
    jobs
}

fn product(conn: &mut shop::DbConn, fx: &Effects, name: &str, stock: i32) -> i64 {
    create_product(
        conn,
        fx,
        &NewProduct {
            category_id: 1,
            name: name.into(),
            price_cents: 1000,
            stock,
        },
    )
    .unwrap()
    .id
}

fn cart(items: &[(i64, i32)]) -> Cart {
    Cart {
        customer_email: "ada@example.com".into(),
        client_ref: None,
        items: items
            .iter()
            .map(|&(product_id, quantity)| CartItem {
                product_id,
                quantity,
            })
            .collect(),
    }
}

#[test]
fn an_order_registers_its_job_and_invalidations_and_they_run_only_if_it_commits() {
    // Declared first, dropped last: the connection (and its test
    // transaction) must be gone before the schema is dropped.
    let schema = PgSchema::new("hooks");
    let redis = RedisPrefix::new("hooks");
    let fx = Effects::connect(&redis_url(), redis.keys()).unwrap();
    let mut conn = schema.migrated();
    conn.begin_test_transaction().unwrap();
    // Inside a test transaction, the baseline: no user transaction is open.
    assert!(!conn.in_transaction());

    let lamp = product(&mut conn, &fx, "Lamp", 5);
    let book = product(&mut conn, &fx, "Book", 2);

    // Collect: the order commits (RELEASE SAVEPOINT), its hooks are
    // captured, not run.
    let (placed, hooks) = conn.capture_on_commit(Capture::Collect, |conn| {
        place_order(conn, &fx, &cart(&[(lamp, 2), (book, 1)]))
    });
    let placed = placed.unwrap();
    let labels: Vec<String> = hooks.labels().iter().map(|l| l.to_string()).collect();
    println!("captured: {labels:#?}");
    assert_eq!(labels.len(), 3, "{labels:#?}");
    // In registration order: the job, then one invalidation per product.
    // A label is `file:line: expression`.
    assert!(labels[0].ends_with("queue.enqueue(&job)"), "{}", labels[0]);
    assert!(labels[0].contains("services.rs"), "{}", labels[0]);
    assert!(
        labels[1].ends_with("cache.invalidate(&stale)"),
        "{}",
        labels[1]
    );
    assert!(
        labels[2].ends_with("cache.invalidate(&stale)"),
        "{}",
        labels[2]
    );
    assert!(jobs(&redis).is_empty(), "collected hooks do not run");

    // Run them now: the job is queued.
    hooks.run(&mut conn);
    assert_eq!(
        jobs(&redis),
        [Job::OrderConfirmation {
            order_id: placed.order.id
        }]
    );

    // A cart that fails halfway: the lamp is taken (and its invalidation
    // registered), then the book is out of stock. The rollback drops the
    // order, the lamp's stock and every hook: nothing is captured.
    let (result, hooks) = conn.capture_on_commit(Capture::Collect, |conn| {
        place_order(conn, &fx, &cart(&[(lamp, 1), (book, 5)]))
    });
    match result {
        Err(ShopError::OutOfStock {
            product_id,
            wanted: 5,
            left: 1,
        }) => assert_eq!(product_id, book),
        other => panic!("expected out of stock, got {other:?}"),
    }
    assert!(hooks.is_empty(), "{:?}", hooks.labels());
    let lamp_now = find_product(conn.inner_mut(), lamp).unwrap().unwrap();
    assert_eq!(lamp_now.stock, 3, "the rolled-back order took nothing");
    assert_eq!(jobs(&redis).len(), 1);

    // Without capture, the hooks run at the RELEASE SAVEPOINT, as after a
    // real COMMIT.
    let second = place_order(&mut conn, &fx, &cart(&[(lamp, 1)])).unwrap();
    assert_eq!(
        jobs(&redis).last(),
        Some(&Job::OrderConfirmation {
            order_id: second.order.id
        })
    );
}

#[test]
fn accepting_a_friend_request_notifies_the_requester_once() {
    let schema = PgSchema::new("hooks");
    let redis = RedisPrefix::new("hooks");
    let fx = Effects::connect(&redis_url(), redis.keys()).unwrap();
    let mut conn = schema.migrated();
    conn.begin_test_transaction().unwrap();

    let user = |conn: &mut shop::DbConn, email: &str| {
        create_user(
            conn,
            &NewUser {
                email: email.into(),
                name: email.into(),
            },
        )
        .unwrap()
        .id
    };
    let (ada, bob) = (
        user(&mut conn, "ada@example.com"),
        user(&mut conn, "bob@example.com"),
    );
    let request = create_friend_request(
        &mut conn,
        &NewFriendRequest {
            from_user_id: ada,
            to_user_id: bob,
        },
    )
    .unwrap();

    // Execute: the hooks run as usual, and are recorded.
    let (friendship, hooks) = conn.capture_on_commit(Capture::Execute, |conn| {
        accept_friend_request(conn, &fx, request.id)
    });
    assert_eq!(friendship.unwrap().user_a, ada.min(bob));
    assert_eq!(hooks.len(), 1);
    assert_eq!(
        jobs(&redis),
        [Job::FriendRequestAccepted {
            request_id: request.id
        }]
    );

    // Accepting again is a conflict: rolled back, no second notification.
    let (again, hooks) = conn.capture_on_commit(Capture::Execute, |conn| {
        accept_friend_request(conn, &fx, request.id)
    });
    assert!(matches!(again, Err(ShopError::Conflict(_))), "{again:?}");
    assert!(hooks.is_empty());
    assert_eq!(jobs(&redis).len(), 1);
}

#[test]
fn updating_a_product_deletes_its_cache_keys_after_commit_only() {
    let schema = PgSchema::new("hooks");
    let redis = RedisPrefix::new("hooks");
    let fx = Effects::connect(&redis_url(), redis.keys()).unwrap();
    let mut conn = schema.migrated();
    conn.begin_test_transaction().unwrap();
    let lamp = product(&mut conn, &fx, "Lamp", 5);
    let keys = redis.keys();
    let (product_key, category_key) = (keys.product(lamp), keys.category(1));
    let mut r = redis.conn();
    let cached = |r: &mut redis::Connection, key: &str| -> bool {
        redis::cmd("EXISTS").arg(key).query::<i64>(r).unwrap() == 1
    };
    for key in [&product_key, &category_key] {
        redis::cmd("SET")
            .arg(key)
            .arg("{}")
            .query::<()>(&mut r)
            .unwrap();
    }

    // Inside the transaction (before COMMIT) the keys are still there: a
    // reader that misses now would load the old row.
    let change = ProductChange {
        price_cents: Some(2500),
        ..Default::default()
    };
    let (updated, hooks) = conn.capture_on_commit(Capture::Collect, |conn| {
        conn.transaction(|conn| {
            let updated = update_product(conn, &fx, lamp, &change)?;
            // A nested #[atomic] is a savepoint: its hook waits for the
            // outer commit.
            assert!(cached(&mut redis.conn(), &product_key));
            Ok::<_, ShopError>(updated)
        })
    });
    assert_eq!(updated.unwrap().version, 2);
    assert!(cached(&mut r, &product_key) && cached(&mut r, &category_key));
    hooks.run(&mut conn);
    assert!(!cached(&mut r, &product_key) && !cached(&mut r, &category_key));
    // Each invalidation bumped the key's generation (see shop::cache).
    let generation: i64 = redis::cmd("GET")
        .arg(shop::Keys::generation(&product_key))
        .query(&mut r)
        .unwrap();
    assert_eq!(generation, 1);

    // A change that fails validation deletes nothing.
    redis::cmd("SET")
        .arg(&product_key)
        .arg("{}")
        .query::<()>(&mut r)
        .unwrap();
    let bad = ProductChange {
        stock: Some(-1),
        ..Default::default()
    };
    let (result, hooks) = conn.capture_on_commit(Capture::Collect, |conn| {
        update_product(conn, &fx, lamp, &bad)
    });
    assert!(matches!(result, Err(ShopError::Invalid(_))), "{result:?}");
    assert!(hooks.is_empty());
    assert!(cached(&mut r, &product_key));
}
