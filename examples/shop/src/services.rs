//! The transactions: the seed's three use cases, each an `#[atomic]`
//! function whose side effects are `on_commit!` hooks.
//!
//! `#[atomic]` runs the body in `conn.transaction(..)`; any `Err` (an `?` on
//! a Diesel error, or our own `ShopError`) rolls everything back, including
//! the hooks registered so far. Called inside another transaction, it is a
//! savepoint and its hooks join the outer transaction's.

use std::collections::BTreeMap;

use diesel::prelude::*;
use diesel_on_commit::prelude::*;

use crate::effects::{Effects, Job};
use crate::models::*;
use crate::schema::{friend_requests, friendships, order_items, orders, products, users};
use crate::{DbConn, ShopError};

/// `POST /orders`: creates an order from a cart, taking the stock.
///
/// After COMMIT: the confirmation e-mail job is queued, and the cached
/// products (and their categories' lists) are invalidated. A cart that fails
/// halfway (a product out of stock or unknown) rolls back: the order row,
/// the stock already taken, the job and the invalidations registered so far
/// are all gone.
#[atomic]
pub fn place_order(conn: &mut DbConn, fx: &Effects, cart: &Cart) -> Result<PlacedOrder, ShopError> {
    if cart.items.is_empty() {
        return Err(ShopError::Invalid("the cart is empty".into()));
    }
    if lettre::Address::try_from(cart.customer_email.clone()).is_err() {
        return Err(ShopError::Invalid(format!(
            "not an e-mail address: {:?}",
            cart.customer_email
        )));
    }
    // One line per product, in product id order: concurrent orders lock
    // their products in the same order, so they cannot deadlock.
    let mut wanted: BTreeMap<i64, i32> = BTreeMap::new();
    for item in &cart.items {
        if item.quantity <= 0 {
            return Err(ShopError::Invalid(format!(
                "quantity {} for product {}",
                item.quantity, item.product_id
            )));
        }
        *wanted.entry(item.product_id).or_default() += item.quantity;
    }

    let order: Order = diesel::insert_into(orders::table)
        .values((
            orders::customer_email.eq(&cart.customer_email),
            orders::client_ref.eq(&cart.client_ref),
        ))
        .returning(Order::as_returning())
        .get_result(conn)?;

    // Registered now, runs only if everything below succeeds and commits.
    let job = Job::OrderConfirmation { order_id: order.id };
    let queue = fx.clone();
    on_commit!(conn, queue.enqueue(&job));

    let mut total = 0;
    let mut placed = Vec::with_capacity(wanted.len());
    for (&product_id, &quantity) in &wanted {
        let product: Product = products::table
            .find(product_id)
            .for_update()
            .select(Product::as_select())
            .first(conn)
            .optional()?
            .ok_or_else(|| ShopError::NotFound(format!("product {product_id}")))?;
        if product.stock < quantity {
            // Rolls back the order, the stock taken for the lines before
            // this one, and every hook registered above.
            return Err(ShopError::OutOfStock {
                product_id,
                wanted: quantity,
                left: product.stock,
            });
        }
        let updated: Product = diesel::update(products::table.find(product_id))
            .set((
                products::stock.eq(products::stock - quantity),
                products::version.eq(products::version + 1),
            ))
            .returning(Product::as_returning())
            .get_result(conn)?;
        diesel::insert_into(order_items::table)
            .values(OrderItem {
                order_id: order.id,
                product_id,
                quantity,
                unit_price_cents: product.price_cents,
            })
            .execute(conn)?;
        // The stock changed: the cached product and its category's list
        // are stale once this commits (not before: see `update_product`).
        let stale = vec![
            fx.keys().product(product_id),
            fx.keys().category(product.category_id),
        ];
        let cache = fx.clone();
        on_commit!(conn, cache.invalidate(&stale));

        total += product.price_cents * i64::from(quantity);
        placed.push(PlacedItem {
            product_id,
            quantity,
            unit_price_cents: product.price_cents,
            stock_left: updated.stock,
            product_version: updated.version,
        });
    }

    let order: Order = diesel::update(orders::table.find(order.id))
        .set(orders::total_cents.eq(total))
        .returning(Order::as_returning())
        .get_result(conn)?;
    Ok(PlacedOrder {
        order,
        items: placed,
    })
}

/// `POST /friend-requests/{id}/accept`: accepts the request and creates the
/// friendship; after COMMIT, the requester is notified (a job for the
/// worker).
#[atomic]
pub fn accept_friend_request(
    conn: &mut DbConn,
    fx: &Effects,
    request_id: i64,
) -> Result<Friendship, ShopError> {
    let request: FriendRequest = friend_requests::table
        .find(request_id)
        .for_update()
        .select(FriendRequest::as_select())
        .first(conn)
        .optional()?
        .ok_or_else(|| ShopError::NotFound(format!("friend request {request_id}")))?;
    if request.status != "pending" {
        return Err(ShopError::Conflict(format!(
            "friend request {request_id} is already {}",
            request.status
        )));
    }
    diesel::update(friend_requests::table.find(request_id))
        .set(friend_requests::status.eq("accepted"))
        .execute(conn)?;
    let friendship = Friendship {
        user_a: request.from_user_id.min(request.to_user_id),
        user_b: request.from_user_id.max(request.to_user_id),
    };
    // Already friends (through the request the other way round): fine.
    diesel::insert_into(friendships::table)
        .values(&friendship)
        .on_conflict_do_nothing()
        .execute(conn)?;

    let job = Job::FriendRequestAccepted { request_id };
    let queue = fx.clone();
    on_commit!(conn, queue.enqueue(&job));
    Ok(friendship)
}

/// `PUT /products/{id}`: changes a product under `SELECT … FOR UPDATE`;
/// after COMMIT, deletes `product:{id}` and `category:{cid}:products` (both
/// categories if it moved) from the cache.
///
/// Deleting the keys inside the transaction instead would let a reader
/// that misses in between load the old row (not committed yet) and cache it
/// for the key's whole lifetime.
#[atomic]
pub fn update_product(
    conn: &mut DbConn,
    fx: &Effects,
    id: i64,
    change: &ProductChange,
) -> Result<Product, ShopError> {
    let current: Product = products::table
        .find(id)
        .for_update()
        .select(Product::as_select())
        .first(conn)
        .optional()?
        .ok_or_else(|| ShopError::NotFound(format!("product {id}")))?;
    if change.price_cents.is_some_and(|p| p < 0) || change.stock.is_some_and(|s| s < 0) {
        return Err(ShopError::Invalid(
            "price and stock must not be negative".into(),
        ));
    }
    let updated: Product = diesel::update(products::table.find(id))
        .set((change, products::version.eq(products::version + 1)))
        .returning(Product::as_returning())
        .get_result(conn)?;

    let mut stale = vec![
        fx.keys().product(id),
        fx.keys().category(current.category_id),
    ];
    if updated.category_id != current.category_id {
        stale.push(fx.keys().category(updated.category_id));
    }
    let cache = fx.clone();
    on_commit!(conn, cache.invalidate(&stale));
    Ok(updated)
}

/// `POST /products`: after COMMIT, its category's cached list is stale.
#[atomic]
pub fn create_product(
    conn: &mut DbConn,
    fx: &Effects,
    new: &NewProduct,
) -> Result<Product, ShopError> {
    if new.price_cents < 0 || new.stock < 0 {
        return Err(ShopError::Invalid(
            "price and stock must not be negative".into(),
        ));
    }
    let product: Product = diesel::insert_into(products::table)
        .values(new)
        .returning(Product::as_returning())
        .get_result(conn)?;
    let stale = vec![fx.keys().category(product.category_id)];
    let cache = fx.clone();
    on_commit!(conn, cache.invalidate(&stale));
    Ok(product)
}

/// `POST /users`.
#[atomic]
pub fn create_user(conn: &mut DbConn, new: &NewUser) -> Result<User, ShopError> {
    if lettre::Address::try_from(new.email.clone()).is_err() {
        return Err(ShopError::Invalid(format!(
            "not an e-mail address: {:?}",
            new.email
        )));
    }
    Ok(diesel::insert_into(users::table)
        .values(new)
        .returning(User::as_returning())
        .get_result(conn)?)
}

/// `POST /friend-requests`.
#[atomic]
pub fn create_friend_request(
    conn: &mut DbConn,
    new: &NewFriendRequest,
) -> Result<FriendRequest, ShopError> {
    if new.from_user_id == new.to_user_id {
        return Err(ShopError::Invalid(
            "a friend request needs two users".into(),
        ));
    }
    Ok(diesel::insert_into(friend_requests::table)
        .values((
            friend_requests::from_user_id.eq(new.from_user_id),
            friend_requests::to_user_id.eq(new.to_user_id),
        ))
        .returning(FriendRequest::as_returning())
        .get_result(conn)?)
}

// ---------------------------------------------------------------------------
// Reads: no transaction, no hooks. Helpers that only run queries take the
// plain connection (`conn.inner_mut()` from the pool's wrapper).

pub fn find_product(conn: &mut PgConnection, id: i64) -> QueryResult<Option<Product>> {
    products::table
        .find(id)
        .select(Product::as_select())
        .first(conn)
        .optional()
}

pub fn category_products(conn: &mut PgConnection, category_id: i64) -> QueryResult<Vec<Product>> {
    products::table
        .filter(products::category_id.eq(category_id))
        .order(products::id)
        .select(Product::as_select())
        .load(conn)
}

/// An order's lines, each with its product's name.
pub type OrderLines = Vec<(OrderItem, String)>;

/// An order with its lines and product names, for the confirmation e-mail.
pub fn order_with_lines(
    conn: &mut PgConnection,
    order_id: i64,
) -> QueryResult<Option<(Order, OrderLines)>> {
    let Some(order) = orders::table
        .find(order_id)
        .select(Order::as_select())
        .first(conn)
        .optional()?
    else {
        return Ok(None);
    };
    let lines = order_items::table
        .inner_join(products::table)
        .filter(order_items::order_id.eq(order_id))
        .order(order_items::product_id)
        .select((OrderItem::as_select(), products::name))
        .load(conn)?;
    Ok(Some((order, lines)))
}

/// A friend request with both users, for the notification e-mail.
pub fn friend_request_with_users(
    conn: &mut PgConnection,
    request_id: i64,
) -> QueryResult<Option<(FriendRequest, User, User)>> {
    let Some(request) = friend_requests::table
        .find(request_id)
        .select(FriendRequest::as_select())
        .first(conn)
        .optional()?
    else {
        return Ok(None);
    };
    let from = users::table
        .find(request.from_user_id)
        .select(User::as_select())
        .first(conn)?;
    let to = users::table
        .find(request.to_user_id)
        .select(User::as_select())
        .first(conn)?;
    Ok(Some((request, from, to)))
}
