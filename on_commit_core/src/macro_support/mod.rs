//! What the macros' expansions call, behind `#[doc(hidden)] pub mod
//! __private`: not public API, no stability promise.
//!
//! | file | what |
//! |---|---|
//! | `atomic.rs` | `#[atomic]` on any Diesel connection: the panic guard (7), `durable`, the return-type check (M1) |
//! | `atomic_options.rs` | `#[atomic(isolation = .., retry = ..)]`: options checked per backend at compile time |
//! | `async_atomic.rs` | `#[atomic]` on an `async fn`: the panic and cancellation guards (7, C1–C3) |
//! | `async_atomic_options.rs` | `#[atomic(isolation = .., retry = ..)]` on an `async fn`: the same options, on the async wrapper |
//! | `conn_arg.rs` | `on_commit!(conn, ..)`: the connection as the user holds it, owned, `&mut` or a pool guard (M3) |
//! | `path_hook.rs` | `on_commit!(conn, path)`: a bare function or closure variable registered as it is (M4) |

#[cfg(feature = "async")]
pub(crate) mod async_atomic;
#[cfg(feature = "async")]
pub(crate) mod async_atomic_options;
pub(crate) mod atomic;
pub(crate) mod atomic_options;
pub(crate) mod conn_arg;
pub(crate) mod path_hook;
