//! End to end: `shop serve` on a free localhost port and `shop worker`, as
//! child processes of the real binary, on PostgreSQL and Redis, driven over
//! HTTP. Checks that every committed order got exactly one confirmation
//! e-mail and no rolled-back one did, and that the cache never serves a
//! value older than the last committed update, one request at a time and
//! under a concurrent burst.
//!
//! `cargo test -p shop -- --nocapture` prints the figures.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Response, Service};
use diesel::prelude::*;
use serde_json::{json, Value};
use shop::schema::{order_items, orders, products};

fn id_of(r: &Response) -> i64 {
    r.json()["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no id in {} {}", r.status, r.body))
}

fn expect(r: &Response, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.body);
}

#[test]
fn the_three_use_cases_over_http() {
    let started = Instant::now();
    let mut shop = Service::start("e2e");
    shop.start_worker();

    let ada = shop.post(
        "/users",
        &json!({"email": "ada@example.com", "name": "Ada"}),
    );
    expect(&ada, 201, "create Ada");
    let bob = shop.post(
        "/users",
        &json!({"email": "bob@example.com", "name": "Bob"}),
    );
    expect(&bob, 201, "create Bob");
    let (ada, bob) = (id_of(&ada), id_of(&bob));
    let product = |category: i64, name: &str, price: i64, stock: i32| {
        let r = shop.post(
            "/products",
            &json!({"category_id": category, "name": name, "price_cents": price, "stock": stock}),
        );
        expect(&r, 201, "create a product");
        id_of(&r)
    };
    let lamp = product(1, "Lamp", 1999, 5);
    let book = product(1, "Book", 1250, 2);
    let pen = product(2, "Pen", 150, 10);
    let lamp_url = format!("/products/{lamp}");

    // Read-through: a miss fills the cache, the next read is a hit.
    let first = shop.get(&lamp_url);
    expect(&first, 200, "GET lamp");
    assert_eq!(first.cache(), "miss");
    let second = shop.get(&lamp_url);
    assert_eq!((second.cache(), second.json()), ("hit", first.json()));
    assert_eq!(shop.get("/categories/1/products").cache(), "miss");
    assert_eq!(shop.get("/categories/1/products").cache(), "hit");

    // 1a. A cart that fails halfway: the lamp (taken first) is in stock,
    // the book is not. Everything rolls back: the order, the lamp's stock,
    // the confirmation job and the lamp's invalidation.
    let r = shop.post(
        "/orders",
        &json!({"customer_email": "ada@example.com", "client_ref": "rolled-back-1",
                "items": [{"product_id": lamp, "quantity": 2}, {"product_id": book, "quantity": 3}]}),
    );
    expect(&r, 409, "out-of-stock order");
    assert_eq!(
        r.json()["error"],
        format!("out of stock: product {book} (wanted 3, 2 left)")
    );
    // No invalidation ran: still a hit, and still right.
    let r = shop.get(&lamp_url);
    assert_eq!(r.cache(), "hit");
    assert_eq!(
        (r.json()["stock"].as_i64(), r.json()["version"].as_i64()),
        (Some(5), Some(1))
    );
    // An unknown product rolls back too.
    let r = shop.post(
        "/orders",
        &json!({"customer_email": "ada@example.com", "client_ref": "rolled-back-2",
                "items": [{"product_id": lamp, "quantity": 1}, {"product_id": 999_999, "quantity": 1}]}),
    );
    expect(&r, 404, "order with an unknown product");

    // 1b. An order that commits: the hooks ran before the response, so the
    // product and its category's list are read anew.
    let r = shop.post(
        "/orders",
        &json!({"customer_email": "ada@example.com", "client_ref": "committed-1",
                "items": [{"product_id": lamp, "quantity": 2}, {"product_id": book, "quantity": 1}]}),
    );
    expect(&r, 201, "order");
    let order_id = r.json()["order"]["id"].as_i64().unwrap();
    assert_eq!(r.json()["order"]["total_cents"], 2 * 1999 + 1250);
    let r = shop.get(&lamp_url);
    assert_eq!(r.cache(), "miss");
    assert_eq!(
        (r.json()["stock"].as_i64(), r.json()["version"].as_i64()),
        (Some(3), Some(2))
    );
    assert_eq!(shop.get(&lamp_url).cache(), "hit");
    let list = shop.get("/categories/1/products");
    assert_eq!(list.cache(), "miss");
    let stocks: Vec<i64> = list
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["stock"].as_i64().unwrap())
        .collect();
    assert_eq!(stocks, [3, 1]);

    // 3. PUT under SELECT ... FOR UPDATE: after COMMIT, product:{id} and
    // category:{cid}:products are deleted.
    let r = shop.put(&lamp_url, &json!({"price_cents": 2500}));
    expect(&r, 200, "PUT lamp");
    assert_eq!(r.json()["version"], 3);
    let r = shop.get(&lamp_url);
    assert_eq!(
        (r.cache(), r.json()["price_cents"].as_i64()),
        ("miss", Some(2500))
    );
    let r = shop.get(&lamp_url);
    assert_eq!(
        (r.cache(), r.json()["price_cents"].as_i64()),
        ("hit", Some(2500))
    );
    let list = shop.get("/categories/1/products");
    assert_eq!(
        (list.cache(), list.json()[0]["price_cents"].as_i64()),
        ("miss", Some(2500))
    );
    // Moving a product invalidates both categories' lists.
    assert_eq!(shop.get("/categories/2/products").cache(), "miss");
    assert_eq!(shop.get("/categories/2/products").cache(), "hit");
    expect(
        &shop.put(&format!("/products/{book}"), &json!({"category_id": 2})),
        200,
        "move the book",
    );
    let list = shop.get("/categories/2/products");
    assert_eq!(list.cache(), "miss");
    let ids: Vec<i64> = list
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [book, pen]);
    assert_eq!(
        shop.get("/categories/1/products")
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // A rejected change commits nothing and invalidates nothing.
    expect(
        &shop.put(&lamp_url, &json!({"price_cents": -1})),
        422,
        "negative price",
    );
    expect(
        &shop.put("/products/999999", &json!({"price_cents": 1})),
        404,
        "unknown product",
    );
    assert_eq!(shop.get(&lamp_url).cache(), "hit");

    // 2. Friend requests: accept, create the friendship, notify after COMMIT.
    let r = shop.post(
        "/friend-requests",
        &json!({"from_user_id": ada, "to_user_id": bob}),
    );
    expect(&r, 201, "friend request");
    let request = id_of(&r);
    let r = shop.post(&format!("/friend-requests/{request}/accept"), &json!({}));
    expect(&r, 200, "accept");
    assert_eq!(
        r.json(),
        json!({"user_a": ada.min(bob), "user_b": ada.max(bob)})
    );
    expect(
        &shop.post(&format!("/friend-requests/{request}/accept"), &json!({})),
        409,
        "accept twice",
    );
    expect(
        &shop.post("/friend-requests/999999/accept", &json!({})),
        404,
        "accept unknown",
    );

    // The worker sent exactly two e-mails: the committed order's
    // confirmation and Ada's notification. None for the rolled-back orders.
    let emails = shop.wait_for_emails(2, Duration::from_secs(60));
    assert_eq!(emails.len(), 2, "{emails:#?}");
    let confirmation = emails
        .iter()
        .find(|e| e.order_id().is_some())
        .expect("a confirmation");
    assert_eq!(confirmation.order_id(), Some(order_id));
    assert_eq!(confirmation.to, "ada@example.com");
    assert_eq!(confirmation.reference(), Some("committed-1"));
    assert!(
        confirmation.body.contains("2 x Lamp"),
        "{}",
        confirmation.body
    );
    let note = emails.iter().find(|e| e.order_id().is_none()).unwrap();
    assert_eq!(
        (note.to.as_str(), note.subject.as_str()),
        ("ada@example.com", "Bob accepted your friend request")
    );
    assert!(emails.iter().all(|e| !e.body.contains("rolled-back")));
    let keys = shop.redis.keys();
    assert!(shop.redis.list(&keys.jobs()).is_empty());
    assert!(
        shop.redis.list(&keys.dead_jobs()).is_empty(),
        "{}",
        shop.log("worker.log")
    );
    let mut db = shop.schema.conn();
    let committed: Vec<i64> = orders::table.select(orders::id).load(&mut db).unwrap();
    assert_eq!(committed, [order_id]);

    println!(
        "use cases: 1 order committed, 2 rolled back (out of stock, unknown product), \
         1 friend request accepted; 2 e-mails sent (1 confirmation, 1 notification), none for a \
         rolled-back order; cache: every read after a committed write was a miss with the new \
         value, every read after a rollback a hit with the old one; {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------
// The burst

const CLIENTS: usize = 20;
const ORDERS_PER_CLIENT: usize = 10;
const READERS: usize = 4;
/// Products that orders buy (and PUTs change).
const ORDERABLE: usize = 6;
/// All products: the others are only read and changed by PUTs, so reads
/// also hit between invalidations.
const PRODUCTS: usize = 10;

/// xorshift64*: deterministic carts without a dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

/// A committed write of a product: it has `version` from `done` on.
struct Write {
    product: i64,
    version: i64,
    done: Instant,
}

struct Read {
    product: i64,
    start: Instant,
    version: i64,
    cache: String,
}

struct Placed {
    reference: String,
    status: u16,
    order_id: Option<i64>,
    lines: Vec<(i64, i64)>,
    latency: Duration,
}

#[test]
fn a_burst_of_orders_keeps_emails_and_cache_right() {
    let mut shop = Service::start("burst");
    shop.start_worker();

    // Orders buy the first ORDERABLE products. Product 0 is scarce: carts
    // compete for it. The last orderable one (highest id among them, so
    // locked last) is what forced failures ask too much of.
    let mut ids = Vec::new();
    let mut initial = BTreeMap::new();
    for i in 0..PRODUCTS {
        let stock = match i {
            0 => 40,
            _ if i < ORDERABLE => 150,
            _ => 10,
        };
        let r = shop.post(
            "/products",
            &json!({"category_id": i % 2 + 1, "name": format!("Item {i}"), "price_cents": 100 + i, "stock": stock}),
        );
        expect(&r, 201, "create a product");
        ids.push(id_of(&r));
        initial.insert(id_of(&r), i64::from(stock));
    }
    let last = ids[ORDERABLE - 1];

    let writes = Mutex::new(Vec::<Write>::new());
    let reads = Mutex::new(Vec::<Read>::new());
    let orders_done = AtomicBool::new(false);
    let started = Instant::now();
    let placed: Vec<Placed> = std::thread::scope(|s| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (shop, ids, writes) = (&shop, &ids, &writes);
                s.spawn(move || {
                    let mut rng = Rng::new(c as u64 + 1);
                    let mut placed = Vec::new();
                    for k in 0..ORDERS_PER_CLIENT {
                        let n = c * ORDERS_PER_CLIENT + k;
                        let mut cart: BTreeMap<i64, i64> = BTreeMap::new();
                        for _ in 0..1 + rng.below(3) {
                            cart.insert(ids[rng.below(ORDERABLE)], 1 + rng.below(3) as i64);
                        }
                        if n % 8 == 3 {
                            cart.insert(last, 1000); // out of stock, after the others
                        }
                        if n % 25 == 7 {
                            cart.insert(999_999, 1); // unknown, after the others
                        }
                        let reference = format!("burst-{c}-{k}");
                        let items: Vec<Value> = cart
                            .iter()
                            .map(|(p, q)| json!({"product_id": p, "quantity": q}))
                            .collect();
                        let sent = Instant::now();
                        let r = shop.post(
                            "/orders",
                            &json!({"customer_email": format!("client{c}@example.com"),
                                    "client_ref": reference, "items": items}),
                        );
                        let done = Instant::now();
                        let mut order_id = None;
                        let mut lines = Vec::new();
                        if r.status == 201 {
                            let body = r.json();
                            order_id = body["order"]["id"].as_i64();
                            let mut writes = writes.lock().unwrap();
                            for item in body["items"].as_array().unwrap() {
                                let product = item["product_id"].as_i64().unwrap();
                                lines.push((product, item["quantity"].as_i64().unwrap()));
                                writes.push(Write {
                                    product,
                                    version: item["product_version"].as_i64().unwrap(),
                                    done,
                                });
                            }
                        }
                        placed.push(Placed {
                            reference,
                            status: r.status,
                            order_id,
                            lines,
                            latency: done - sent,
                        });
                    }
                    placed
                })
            })
            .collect();
        let updater = {
            let (shop, ids, writes, orders_done) = (&shop, &ids, &writes, &orders_done);
            s.spawn(move || {
                let mut rng = Rng::new(99);
                let mut n = 0;
                while !orders_done.load(Ordering::Relaxed) && n < 1000 {
                    let product = ids[rng.below(PRODUCTS)];
                    let r = shop.put(
                        &format!("/products/{product}"),
                        &json!({"price_cents": 200 + n}),
                    );
                    let done = Instant::now();
                    expect(&r, 200, "PUT during the burst");
                    writes.lock().unwrap().push(Write {
                        product,
                        version: r.json()["version"].as_i64().unwrap(),
                        done,
                    });
                    n += 1;
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        let readers: Vec<_> = (0..READERS)
            .map(|r| {
                let (shop, ids, reads, orders_done) = (&shop, &ids, &reads, &orders_done);
                s.spawn(move || {
                    let mut rng = Rng::new(1000 + r as u64);
                    let mut n = 0;
                    while !orders_done.load(Ordering::Relaxed) && n < 20_000 {
                        let product = ids[rng.below(PRODUCTS)];
                        let start = Instant::now();
                        let resp = shop.get(&format!("/products/{product}"));
                        expect(&resp, 200, "GET during the burst");
                        reads.lock().unwrap().push(Read {
                            product,
                            start,
                            version: resp.json()["version"].as_i64().unwrap(),
                            cache: resp.cache().to_owned(),
                        });
                        n += 1;
                    }
                })
            })
            .collect();
        let placed: Vec<Placed> = clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect();
        orders_done.store(true, Ordering::Relaxed);
        updater.join().unwrap();
        for r in readers {
            r.join().unwrap();
        }
        placed
    });
    let burst = started.elapsed();

    // Every order answered 201, 409 (out of stock) or 404 (unknown product).
    let count = |status| placed.iter().filter(|p| p.status == status).count();
    let (committed, out_of_stock, unknown) = (count(201), count(409), count(404));
    assert_eq!(
        committed + out_of_stock + unknown,
        CLIENTS * ORDERS_PER_CLIENT,
        "other statuses"
    );
    assert!(
        committed > 0 && out_of_stock > 0 && unknown > 0,
        "{committed}/{out_of_stock}/{unknown}"
    );

    // The database agrees: the committed orders exist, nothing else does,
    // and the stock taken is the committed orders' lines, no more.
    let mut db = shop.schema.conn();
    let in_db: BTreeSet<i64> = orders::table
        .select(orders::id)
        .load(&mut db)
        .unwrap()
        .into_iter()
        .collect();
    let answered: BTreeSet<i64> = placed.iter().filter_map(|p| p.order_id).collect();
    assert_eq!(in_db, answered);
    let mut taken: BTreeMap<i64, i64> = BTreeMap::new();
    for (product, quantity) in placed.iter().flat_map(|p| &p.lines) {
        *taken.entry(*product).or_default() += quantity;
    }
    let stock: Vec<(i64, i32)> = products::table
        .select((products::id, products::stock))
        .order(products::id)
        .load(&mut db)
        .unwrap();
    for (product, left) in &stock {
        assert_eq!(
            i64::from(*left),
            initial[product] - taken.get(product).copied().unwrap_or(0),
            "product {product}"
        );
    }
    let lines: i64 = order_items::table.count().get_result(&mut db).unwrap();
    assert_eq!(
        lines as usize,
        placed.iter().map(|p| p.lines.len()).sum::<usize>()
    );

    // The cache never served a value older than the last committed write
    // that had answered before the read started.
    let writes = writes.into_inner().unwrap();
    let reads = reads.into_inner().unwrap();
    let mut stale = Vec::new();
    for read in &reads {
        let newest = writes
            .iter()
            .filter(|w| w.product == read.product && w.done < read.start)
            .map(|w| w.version)
            .max()
            .unwrap_or(1);
        if read.version < newest {
            stale.push(format!(
                "product {}: read version {} ({}) after version {newest} was committed",
                read.product, read.version, read.cache
            ));
        }
    }
    assert!(
        stale.is_empty(),
        "{} stale reads: {:#?}",
        stale.len(),
        &stale[..stale.len().min(10)]
    );
    let hits = reads.iter().filter(|r| r.cache == "hit").count();
    let misses = reads.iter().filter(|r| r.cache == "miss").count();
    assert_eq!(hits + misses, reads.len(), "a read bypassed the cache");
    assert!(hits > 0 && misses > 0, "{hits} hits, {misses} misses");
    // Once everything settled, the cache and the database agree.
    for &product in &ids {
        let url = format!("/products/{product}");
        let (first, second) = (shop.get(&url), shop.get(&url));
        assert_eq!(second.cache(), "hit");
        let row: (i32, i64, i64) = products::table
            .find(product)
            .select((products::stock, products::price_cents, products::version))
            .first(&mut db)
            .unwrap();
        for r in [&first, &second] {
            let v = r.json();
            assert_eq!(
                (
                    v["stock"].as_i64().unwrap() as i32,
                    v["price_cents"].as_i64().unwrap(),
                    v["version"].as_i64().unwrap()
                ),
                row,
                "product {product}"
            );
        }
    }

    // Every committed order got exactly one confirmation, with its own
    // reference; no rolled-back order got one.
    let drain_started = Instant::now();
    let emails = shop.wait_for_emails(committed, Duration::from_secs(120));
    let drained = drain_started
        .elapsed()
        .saturating_sub(Duration::from_millis(500));
    let mut per_order: HashMap<i64, Vec<&str>> = HashMap::new();
    for email in &emails {
        let id = email
            .order_id()
            .unwrap_or_else(|| panic!("not a confirmation: {email:?}"));
        per_order
            .entry(id)
            .or_default()
            .push(email.reference().unwrap_or("?"));
    }
    let refs: HashMap<i64, &str> = placed
        .iter()
        .filter_map(|p| Some((p.order_id?, p.reference.as_str())))
        .collect();
    for (id, reference) in &refs {
        assert_eq!(
            per_order.get(id).map(Vec::as_slice),
            Some(&[*reference][..]),
            "order {id}"
        );
    }
    assert_eq!(
        emails.len(),
        committed,
        "e-mails for orders that did not commit"
    );
    let failed: BTreeSet<&str> = placed
        .iter()
        .filter(|p| p.status != 201)
        .map(|p| p.reference.as_str())
        .collect();
    assert!(emails
        .iter()
        .all(|e| !failed.contains(e.reference().unwrap_or("?"))));
    let keys = shop.redis.keys();
    assert!(shop.redis.list(&keys.jobs()).is_empty());
    assert!(
        shop.redis.list(&keys.dead_jobs()).is_empty(),
        "{}",
        shop.log("worker.log")
    );

    let mut latencies: Vec<Duration> = placed.iter().map(|p| p.latency).collect();
    latencies.sort();
    let pct =
        |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
    let forced = (0..CLIENTS * ORDERS_PER_CLIENT)
        .filter(|n| n % 8 == 3)
        .count();
    println!(
        "burst: {} orders from {CLIENTS} clients in {:.2} s ({:.0} orders/s; latency p50 {:.1} ms, p99 {:.1} ms): \
         {committed} committed, {out_of_stock} rolled back out of stock ({forced} of them forced), \
         {unknown} rolled back for an unknown product",
        placed.len(),
        burst.as_secs_f64(),
        placed.len() as f64 / burst.as_secs_f64(),
        pct(0.5),
        pct(0.99),
    );
    println!(
        "concurrently: {} PUTs, {} GETs ({hits} hits, {misses} misses), 0 stale reads; \
         final cache = database for all {PRODUCTS} products",
        writes.len() - placed.iter().map(|p| p.lines.len()).sum::<usize>(),
        reads.len(),
    );
    println!(
        "worker: {} confirmation e-mails, one per committed order, none for the {} rolled-back ones; \
         queue drained {:.2} s after the burst",
        emails.len(),
        out_of_stock + unknown,
        drained.as_secs_f64(),
    );
}
