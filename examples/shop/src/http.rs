//! The HTTP JSON API (axum).
//!
//! | route | what |
//! |---|---|
//! | `POST /users` | create a user |
//! | `POST /products` | create a product |
//! | `GET /products/{id}` | a product, read through the cache (`x-cache: hit`/`miss`) |
//! | `PUT /products/{id}` | change a product; its cache keys go after COMMIT |
//! | `GET /categories/{id}/products` | a category's products, read through the cache |
//! | `POST /orders` | place an order; 409 when a product is out of stock |
//! | `POST /friend-requests` | ask to be friends |
//! | `POST /friend-requests/{id}/accept` | accept; the requester is notified after COMMIT |
//! | `GET /health` | `ok` |
//!
//! Diesel is synchronous: every handler runs its transaction with
//! `pool.get().await?.interact(|conn| ...)`, on one of tokio's blocking
//! threads, and the hooks run there too, right after COMMIT.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use diesel_on_commit::HookPanics;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cache::{Cache, CacheStatus, Lookup};
use crate::models::*;
use crate::{services, DbConn, DbPool, Effects, ShopError};

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    pub pool: DbPool,
    pub fx: Effects,
    pub cache: Cache,
}

impl AppState {
    /// Runs `f` on a pooled connection, on a blocking thread.
    pub async fn db<T, F>(&self, f: F) -> Result<T, ShopError>
    where
        F: FnOnce(&mut DbConn) -> Result<T, ShopError> + Send + 'static,
        T: Send + 'static,
    {
        let conn = self
            .pool
            .get()
            .await
            .map_err(|e| ShopError::Unavailable(format!("database pool: {e}")))?;
        // A panic in a hook is logged, not resumed out of `transaction()`
        // (the work is committed; the connection stays in the pool).
        conn.interact(move |conn| {
            conn.set_hook_panics(HookPanics::Log);
            f(conn)
        })
        .await
        .map_err(|e| ShopError::Internal(format!("database task: {e}")))?
    }

    /// Read-through: the cached value, or `load` from the database and
    /// store it unless an invalidation happened meanwhile. `None` (not
    /// found) is not cached.
    async fn read_through<T, F>(
        &self,
        key: String,
        load: F,
    ) -> Result<(Option<T>, CacheStatus), ShopError>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        F: FnOnce(&mut DbConn) -> Result<Option<T>, ShopError> + Send + 'static,
    {
        let generation = match self.cache.lookup::<T>(&key).await {
            Ok(Lookup::Hit(value)) => return Ok((Some(value), CacheStatus::Hit)),
            Ok(Lookup::Miss { generation }) => Some(generation),
            Err(e) => {
                tracing::warn!("cache lookup of {key} failed, reading the database: {e}");
                None
            }
        };
        let value = self.db(load).await?;
        let Some(generation) = generation else {
            return Ok((value, CacheStatus::Bypass));
        };
        if let Some(value) = &value {
            if let Err(e) = self.cache.fill(&key, &generation, value).await {
                tracing::warn!("cache fill of {key} failed: {e}");
            }
        }
        Ok((value, CacheStatus::Miss))
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/users", post(create_user))
        .route("/products", post(create_product))
        .route("/products/{id}", get(get_product).put(update_product))
        .route("/categories/{id}/products", get(category_products))
        .route("/orders", post(place_order))
        .route("/friend-requests", post(create_friend_request))
        .route("/friend-requests/{id}/accept", post(accept_friend_request))
        .with_state(state)
}

fn cached<T: Serialize>(status: CacheStatus, value: T) -> Response {
    ([("x-cache", status.as_str())], Json(value)).into_response()
}

async fn create_user(
    State(s): State<AppState>,
    Json(new): Json<NewUser>,
) -> Result<Response, ShopError> {
    let user = s.db(move |conn| services::create_user(conn, &new)).await?;
    Ok((StatusCode::CREATED, Json(user)).into_response())
}

async fn create_product(
    State(s): State<AppState>,
    Json(new): Json<NewProduct>,
) -> Result<Response, ShopError> {
    let fx = s.fx.clone();
    let product = s
        .db(move |conn| services::create_product(conn, &fx, &new))
        .await?;
    Ok((StatusCode::CREATED, Json(product)).into_response())
}

async fn get_product(
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Response, ShopError> {
    let key = s.cache.keys().product(id);
    let (product, status) = s
        .read_through(key, move |conn| {
            Ok(services::find_product(conn.inner_mut(), id)?)
        })
        .await?;
    let product: Product = product.ok_or_else(|| ShopError::NotFound(format!("product {id}")))?;
    Ok(cached(status, product))
}

async fn update_product(
    State(s): State<AppState>,
    Path(id): Path<i64>,
    Json(change): Json<ProductChange>,
) -> Result<Json<Product>, ShopError> {
    let fx = s.fx.clone();
    let product = s
        .db(move |conn| services::update_product(conn, &fx, id, &change))
        .await?;
    Ok(Json(product))
}

async fn category_products(
    State(s): State<AppState>,
    Path(category_id): Path<i64>,
) -> Result<Response, ShopError> {
    let key = s.cache.keys().category(category_id);
    let (list, status) = s
        .read_through(key, move |conn| {
            Ok(Some(services::category_products(
                conn.inner_mut(),
                category_id,
            )?))
        })
        .await?;
    let list: Vec<Product> = list.unwrap_or_default();
    Ok(cached(status, list))
}

async fn place_order(
    State(s): State<AppState>,
    Json(cart): Json<Cart>,
) -> Result<Response, ShopError> {
    let fx = s.fx.clone();
    let placed = s
        .db(move |conn| services::place_order(conn, &fx, &cart))
        .await?;
    Ok((StatusCode::CREATED, Json(placed)).into_response())
}

async fn create_friend_request(
    State(s): State<AppState>,
    Json(new): Json<NewFriendRequest>,
) -> Result<Response, ShopError> {
    let request = s
        .db(move |conn| services::create_friend_request(conn, &new))
        .await?;
    Ok((StatusCode::CREATED, Json(request)).into_response())
}

async fn accept_friend_request(
    State(s): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<Friendship>, ShopError> {
    let fx = s.fx.clone();
    let friendship = s
        .db(move |conn| services::accept_friend_request(conn, &fx, id))
        .await?;
    Ok(Json(friendship))
}
