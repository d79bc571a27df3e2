//! Transaction options and retries, for any backend: the builder, isolation
//! levels, and the retry loop (`async_builder.rs`: the async wrapper's).
//! Each backend's own options are in `backends/`.

#[cfg(feature = "async")]
pub(crate) mod async_builder;
pub(crate) mod builder;
pub(crate) mod retry;
