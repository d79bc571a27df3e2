//! What `#[atomic]` on an `async fn` expands to call.
