//! Rows and request bodies.

use diesel::prelude::*;
use serde::{Deserialize, Serialize};

use crate::schema::{friend_requests, friendships, order_items, orders, products, users};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Queryable, Selectable)]
#[diesel(table_name = users)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub name: String,
}

#[derive(Debug, Clone, Deserialize, Insertable)]
#[diesel(table_name = users)]
pub struct NewUser {
    pub email: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Queryable, Selectable)]
#[diesel(table_name = products)]
pub struct Product {
    pub id: i64,
    pub category_id: i64,
    pub name: String,
    pub price_cents: i64,
    pub stock: i32,
    pub version: i64,
}

#[derive(Debug, Clone, Deserialize, Insertable)]
#[diesel(table_name = products)]
pub struct NewProduct {
    pub category_id: i64,
    pub name: String,
    pub price_cents: i64,
    pub stock: i32,
}

/// The body of `PUT /products/{id}`: the fields to change.
#[derive(Debug, Clone, Default, Deserialize, AsChangeset)]
#[diesel(table_name = products)]
pub struct ProductChange {
    pub category_id: Option<i64>,
    pub name: Option<String>,
    pub price_cents: Option<i64>,
    pub stock: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Queryable, Selectable)]
#[diesel(table_name = orders)]
pub struct Order {
    pub id: i64,
    pub customer_email: String,
    pub client_ref: Option<String>,
    pub total_cents: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Queryable, Selectable, Insertable)]
#[diesel(table_name = order_items)]
pub struct OrderItem {
    pub order_id: i64,
    pub product_id: i64,
    pub quantity: i32,
    pub unit_price_cents: i64,
}

/// The body of `POST /orders`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cart {
    pub customer_email: String,
    #[serde(default)]
    pub client_ref: Option<String>,
    pub items: Vec<CartItem>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CartItem {
    pub product_id: i64,
    pub quantity: i32,
}

/// What `POST /orders` answers: the order, and for each product what is
/// left and its new version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlacedOrder {
    pub order: Order,
    pub items: Vec<PlacedItem>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlacedItem {
    pub product_id: i64,
    pub quantity: i32,
    pub unit_price_cents: i64,
    pub stock_left: i32,
    pub product_version: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Queryable, Selectable)]
#[diesel(table_name = friend_requests)]
pub struct FriendRequest {
    pub id: i64,
    pub from_user_id: i64,
    pub to_user_id: i64,
    pub status: String,
}

/// The body of `POST /friend-requests`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewFriendRequest {
    pub from_user_id: i64,
    pub to_user_id: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Queryable, Selectable, Insertable)]
#[diesel(table_name = friendships)]
pub struct Friendship {
    pub user_a: i64,
    pub user_b: i64,
}
