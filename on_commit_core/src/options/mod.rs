//! Transaction options and retries, for any backend: the builder, isolation
//! levels, and the retry loop. Each backend's own options are in
//! `backends/`.

pub(crate) mod builder;
pub(crate) mod retry;
