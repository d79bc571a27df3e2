//! `#[atomic]`, in three stages:
//!
//! - [`parse`]: the item into a function, the tokens inside `#[atomic(..)]`
//!   into the options, each with the name it was written with;
//! - [`validate`]: the rules the function and its options must follow, into
//!   a [`Plan`](validate::Plan);
//! - [`expand`]: the function again, its body run in a transaction by
//!   `__private::atomic` (or `atomic_with`, `atomic_with_retry`, and
//!   `atomic_async` for an `async fn`).

use proc_macro2::TokenStream;

mod expand;
mod parse;
mod validate;

/// Entry point: `args` are the tokens inside `#[atomic(..)]`.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    // The item is checked before the options: on something that is not a
    // function, that is the one error worth reading.
    let func = match parse::parse_item(&item) {
        Ok(func) => func,
        Err(error) => return token_stream_with_error(item, error),
    };
    let plan = parse::parse_options(args).and_then(|options| validate::validate(options, &func));
    match plan {
        Ok(plan) => expand::emit(plan, func),
        Err(error) => token_stream_with_error(item, error),
    }
}

/// On an error, still emit the user's item, untouched: the user sees one
/// precise error (not a cascade about a missing function) and the IDE keeps
/// working.
fn token_stream_with_error(mut item: TokenStream, error: syn::Error) -> TokenStream {
    item.extend(error.into_compile_error());
    item
}
