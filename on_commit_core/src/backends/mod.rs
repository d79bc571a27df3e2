//! Backend-specific code, one file per backend: each backend's transaction
//! builder and the `#[atomic]` options it accepts, together.

#[cfg(feature = "mysql")]
pub(crate) mod mysql;
#[cfg(feature = "postgres")]
pub(crate) mod pg;
#[cfg(feature = "sqlite")]
pub(crate) mod sqlite;
