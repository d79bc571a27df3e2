//! Emitting: the function again, its body moved into a closure that
//! `__private::atomic` (or `atomic_with`, `atomic_with_retry`; for an
//! `async fn` `atomic_async`, `atomic_async_with`, `atomic_async_with_retry`)
//! runs in a transaction.
//!
//! The generated calls name their type parameters in a turbofish whose
//! `_`s are spanned on the user's tokens: rustc then reports an
//! unsatisfied bound of the runtime where the user can fix it.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{AttrStyle, FnArg, Ident, ItemFn, Pat, Path, Type};

use super::parse::TxOptions;
use super::validate::{ConnKind, Plan};

pub(super) fn emit(plan: Plan, mut func: ItemFn) -> TokenStream {
    let Plan {
        krate,
        durable,
        conn_index,
        conn_ident,
        conn_kind,
        conn_span,
        ret,
        options,
        is_async,
    } = plan;

    // For a `fn`, `#![attr]` in the body means `#[attr]` on it; the body
    // becomes a closure, where inner attributes are not allowed.
    for attr in &mut func.attrs {
        attr.style = AttrStyle::Outer;
    }

    // The parameter as the generated call uses it: the user's location, but
    // marked as macro-made, so that lints about *using* a binding (clippy's
    // `used_underscore_binding` on `_db`) stay quiet.
    let mut used = conn_ident.clone();
    used.set_span(conn_ident.span().resolved_at(Span::call_site()));
    let (conn_arg, closure_param) = match conn_kind {
        ConnKind::Ref { mut_binding } => {
            // `mut conn: &mut C`: the `mut` is about the binding the body
            // uses, which is now the closure's; on the outer parameter it
            // would be an unused `mut`.
            if mut_binding.is_some() {
                if let Some(FnArg::Typed(param)) = func.sig.inputs.iter_mut().nth(conn_index) {
                    if let Pat::Ident(ident) = &mut *param.pat {
                        ident.mutability = None;
                    }
                }
            }
            let closure_param = quote!(#mut_binding #conn_ident);
            (quote!(#used), closure_param)
        }
        ConnKind::Owned => (quote!(&mut #used), quote!(#conn_ident)),
    };

    // The return type is given in a turbofish spanned on the user's return
    // type: rustc then reports an unsatisfied `AtomicReturn` (not a Result)
    // or `AtomicError` (no `From<diesel::result::Error>`) right there.
    // Likewise, a parameter that is not a Diesel connection is reported on
    // its type.
    let ret_span = ret.span();
    let conn_ty = quote_spanned!(conn_span=> _);
    let durable = if durable { quote!(true) } else { quote!(false) };
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = func;
    let call = if is_async && !options.is_empty() {
        let body = quote!(async move |#closure_param| -> #ret #block);
        emit_with_options(
            &krate, &options, &conn_ty, &ret, conn_arg, &durable, body, true,
        )
    } else if is_async {
        let body = quote!(async move |#closure_param| -> #ret #block);
        let atomic_fn =
            quote_spanned!(ret_span=> #krate::__private::atomic_async::<#conn_ty, #ret, _, _>);
        quote!(#atomic_fn(#conn_arg, #durable, #body).await)
    } else if options.is_empty() {
        let body = quote!(move |#closure_param| -> #ret #block);
        let atomic_fn =
            quote_spanned!(ret_span=> #krate::__private::atomic::<#conn_ty, #ret, _, _>);
        quote!(#atomic_fn(#conn_arg, #durable, #body))
    } else {
        let body = quote!(move |#closure_param| -> #ret #block);
        emit_with_options(
            &krate, &options, &conn_ty, &ret, conn_arg, &durable, body, false,
        )
    };
    quote! {
        #(#attrs)*
        #vis #sig {
            #call
        }
    }
}

/// The call with options: `__private::atomic_with` (or
/// `atomic_with_retry`), with each option's marker type in the turbofish
/// spanned on the option as written (the flag's name, the isolation level,
/// `retry`), so that an option the connection's backend lacks is reported
/// on it.
#[allow(clippy::too_many_arguments)]
fn emit_with_options(
    krate: &Path,
    options: &TxOptions,
    conn_ty: &TokenStream,
    ret: &Type,
    conn_arg: TokenStream,
    durable: &TokenStream,
    body: TokenStream,
    is_async: bool,
) -> TokenStream {
    let private = quote!(#krate::__private);
    // An `async fn` calls the async twins and awaits them.
    let (with, with_retry, await_) = if is_async {
        (
            quote!(atomic_async_with),
            quote!(atomic_async_with_retry),
            quote!(.await),
        )
    } else {
        (quote!(atomic_with), quote!(atomic_with_retry), quote!())
    };
    let ret_span = ret.span();
    let marker = |name: Option<&Ident>, value: TokenStream| match name {
        Some(name) => (quote_spanned!(name.span()=> _), value),
        None => (quote!(_), quote!(#private::Unset)),
    };
    let (isolation_ty, isolation) = match &options.isolation {
        Some(isolation) => {
            let level = &isolation.value;
            let variant = Ident::new(level.variant, level.ident.span());
            // On the level (`serializable`), not on `isolation`: a backend
            // without it is reported under the level the user chose.
            marker(
                Some(&level.ident),
                quote!(#private::Isolation(#krate::IsolationLevel::#variant)),
            )
        }
        None => marker(None, TokenStream::new()),
    };
    let flag = |flag: &Option<super::parse::Flag>, value: TokenStream| {
        marker(flag.as_ref().map(|flag| &flag.name), value)
    };
    let (read_only_ty, read_only) = flag(&options.read_only, quote!(#private::ReadOnly));
    let (deferrable_ty, deferrable) = flag(&options.deferrable, quote!(#private::Deferrable));
    let (immediate_ty, immediate) = flag(&options.immediate, quote!(#private::Immediate));
    let tx_options = quote! {
        #private::AtomicOptions {
            isolation: #isolation,
            read_only: #read_only,
            deferrable: #deferrable,
            immediate: #immediate,
        }
    };
    let result = quote_spanned!(ret_span=> #ret);
    let (error_ty, closure_ty) = (quote_spanned!(ret_span=> _), quote_spanned!(ret_span=> _));
    match &options.retry {
        None => {
            let atomic_fn = quote_spanned! {ret_span=>
                #private::#with::<
                    #conn_ty, _, #result, #error_ty, #closure_ty,
                    #isolation_ty, #read_only_ty, #deferrable_ty, #immediate_ty
                >
            };
            quote!(#atomic_fn(#conn_arg, #durable, #tx_options, #body)#await_)
        }
        Some(retry) => {
            let value = &retry.value;
            // `retry = 5` is `5u32`: an untyped literal would default to
            // `i32`, which is not a number of attempts.
            let policy = match value {
                syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Int(n),
                    ..
                }) if n.suffix().is_empty() => {
                    syn::LitInt::new(&format!("{}u32", n.base10_digits()), n.span())
                        .into_token_stream()
                }
                other => other.to_token_stream(),
            };
            let retryable_ty = quote_spanned!(retry.name.span()=> _);
            let policy_ty = quote_spanned!(value.span()=> _);
            let atomic_fn = quote_spanned! {ret_span=>
                #private::#with_retry::<
                    #conn_ty, _, #result, #error_ty, #retryable_ty, #closure_ty,
                    #isolation_ty, #read_only_ty, #deferrable_ty, #immediate_ty, #policy_ty
                >
            };
            quote!(#atomic_fn(#conn_arg, #durable, #tx_options, #policy, #body)#await_)
        }
    }
}
