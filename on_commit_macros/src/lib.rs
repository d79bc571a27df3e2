//! Procedural macros of [diesel-on-commit](https://docs.rs/diesel-on-commit):
//! [`#[atomic]`](macro@atomic), Django's `@transaction.atomic`, and
//! [`on_commit!`], Django's `transaction.on_commit`.
//!
//! Use them through the facade crate, `diesel-on-commit`:
//! `use diesel_on_commit::{atomic, on_commit};` (or its prelude). The code
//! they generate names the facade by its absolute path, `::diesel_on_commit`;
//! a user who renamed the dependency says where it is with
//! `#[atomic(crate = path)]` and `on_commit!(crate = path; conn, hook)`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use proc_macro::TokenStream;

mod atomic;
mod on_commit;

#[doc = include_str!("../docs/atomic.md")]
#[proc_macro_attribute]
pub fn atomic(args: TokenStream, item: TokenStream) -> TokenStream {
    atomic::expand(args.into(), item.into()).into()
}

#[doc = include_str!("../docs/on_commit.md")]
#[proc_macro]
pub fn on_commit(input: TokenStream) -> TokenStream {
    on_commit::expand(input.into()).into()
}
