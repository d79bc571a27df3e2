//! The service's error: what a transaction can fail with, and the HTTP
//! status each one answers.

use std::fmt;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use diesel::result::{DatabaseErrorKind, Error as DieselError};

/// Every `#[atomic]` function returns `Result<_, ShopError>`: Diesel's
/// errors convert into it (`?`), and returning any `Err` rolls back.
#[derive(Debug)]
pub enum ShopError {
    /// A cart asked for more than is left: the whole order rolls back.
    OutOfStock {
        product_id: i64,
        wanted: i32,
        left: i32,
    },
    NotFound(String),
    /// The request conflicts with the current state (a friend request that
    /// was already accepted, an e-mail address already taken).
    Conflict(String),
    /// The request is malformed (an empty cart, a negative price).
    Invalid(String),
    /// The database or the pool did not answer.
    Unavailable(String),
    Db(DieselError),
    Internal(String),
}

impl From<DieselError> for ShopError {
    fn from(e: DieselError) -> Self {
        match &e {
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
                ShopError::Conflict(info.message().to_owned())
            }
            DieselError::DatabaseError(DatabaseErrorKind::CheckViolation, info) => {
                ShopError::Invalid(info.message().to_owned())
            }
            DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, info) => {
                ShopError::NotFound(info.details().unwrap_or(info.message()).to_owned())
            }
            DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, _) => {
                ShopError::Unavailable(e.to_string())
            }
            _ => ShopError::Db(e),
        }
    }
}

impl fmt::Display for ShopError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShopError::OutOfStock {
                product_id,
                wanted,
                left,
            } => write!(
                f,
                "out of stock: product {product_id} (wanted {wanted}, {left} left)"
            ),
            ShopError::NotFound(what) => write!(f, "not found: {what}"),
            ShopError::Conflict(why) => write!(f, "conflict: {why}"),
            ShopError::Invalid(why) => write!(f, "invalid request: {why}"),
            ShopError::Unavailable(why) => write!(f, "service unavailable: {why}"),
            ShopError::Db(e) => write!(f, "database error: {e}"),
            ShopError::Internal(why) => write!(f, "internal error: {why}"),
        }
    }
}

impl std::error::Error for ShopError {}

impl ShopError {
    pub fn status(&self) -> StatusCode {
        match self {
            ShopError::OutOfStock { .. } | ShopError::Conflict(_) => StatusCode::CONFLICT,
            ShopError::NotFound(_) => StatusCode::NOT_FOUND,
            ShopError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ShopError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ShopError::Db(_) | ShopError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ShopError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!("{self}");
        }
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}
