//! Validation: the rules a function and its options must follow, each one
//! function whose error points at the offending tokens. What passes is a
//! [`Plan`], all that emitting needs.

use proc_macro2::{Span, TokenStream};
use quote::{quote, ToTokens};
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{
    FnArg, Ident, ItemFn, Pat, PatIdent, PatType, Path, ReturnType, Signature, Token, Type,
    TypeImplTrait,
};

use super::parse::{Options, TxOptions};

/// How the connection parameter is bound.
pub(super) enum ConnKind {
    /// `conn: &mut C`, or `mut conn: &mut C` (the user's `mut`).
    Ref { mut_binding: Option<Token![mut]> },
    /// `mut conn: C`.
    Owned,
}

/// What to emit, once everything checked out.
pub(super) struct Plan {
    pub(super) krate: Path,
    pub(super) durable: bool,
    /// Index of the connection parameter in `sig.inputs`.
    pub(super) conn_index: usize,
    pub(super) conn_ident: Ident,
    pub(super) conn_kind: ConnKind,
    /// The connection type, for errors about it.
    pub(super) conn_span: Span,
    pub(super) ret: Type,
    pub(super) options: TxOptions,
    /// An `async fn`: the body runs in `__private::atomic_async`.
    pub(super) is_async: bool,
}

/// The rules, in the order they are checked: the first broken one is the
/// error reported.
pub(super) fn validate(options: Options, func: &ItemFn) -> syn::Result<Plan> {
    let sig = &func.sig;
    refuse_const(sig)?;
    refuse_variadic(sig)?;
    // Options on an `async fn` run on the async wrapper; the backend's
    // support of each is the compiler's check, as for a sync `fn`.
    let is_async = sig.asyncness.is_some();
    let ret = return_type(sig)?;
    refuse_impl_trait(&ret)?;
    let named = options.conn.as_ref().map(|conn| &conn.value);
    let (conn_index, param, ident) = find_connection(named, func)?;
    let conn_kind = connection_kind(param, ident)?;
    let conn_span = match peel(&param.ty) {
        Type::Reference(r) => r.elem.span(),
        ty => ty.span(),
    };
    // The backend's own support of each option is the compiler's check
    // (see `expand`); these are the combinations no backend has.
    refuse_immediate_with_others(&options.tx)?;
    require_serializable_read_only_for_deferrable(&options.tx)?;
    Ok(Plan {
        krate: options.krate.map_or_else(
            || syn::parse_quote!(::diesel_on_commit),
            |krate| krate.value,
        ),
        durable: options.durable.is_some(),
        conn_index,
        conn_ident: ident.ident.clone(),
        conn_kind,
        conn_span,
        ret,
        options: options.tx,
        is_async,
    })
}

/// An error on `tokens`, if the function has them.
fn refuse<T: ToTokens>(tokens: Option<&T>, message: &str) -> syn::Result<()> {
    tokens.map_or(Ok(()), |tokens| {
        Err(syn::Error::new_spanned(tokens, message))
    })
}

fn refuse_const(sig: &Signature) -> syn::Result<()> {
    refuse(
        sig.constness.as_ref(),
        "`#[atomic]` cannot go on a `const fn`: a transaction runs at run time; remove `const`",
    )
}

fn refuse_variadic(sig: &Signature) -> syn::Result<()> {
    refuse(
        sig.variadic.as_ref(),
        "`#[atomic]` cannot go on a variadic function",
    )
}

fn return_type(sig: &Signature) -> syn::Result<Type> {
    match &sig.output {
        // No return type has no tokens: the error goes just after the
        // parameters, where it would be written.
        ReturnType::Default => Err(syn::Error::new(
            sig.paren_token.span.close(),
            "`#[atomic]` functions return `Result<T, E>` with \
             `E: From<diesel::result::Error>`: add a return type, \
             e.g. `-> diesel::QueryResult<()>`",
        )),
        ReturnType::Type(_, ty) => Ok((**ty).clone()),
    }
}

/// The return type becomes the closure's, and a closure's return type
/// cannot contain an `impl Trait` (`impl Iterator`,
/// `Result<impl Display, E>`).
fn refuse_impl_trait(ret: &Type) -> syn::Result<()> {
    struct Finder<'a>(Option<&'a TypeImplTrait>);
    impl<'a> Visit<'a> for Finder<'a> {
        fn visit_type_impl_trait(&mut self, node: &'a TypeImplTrait) {
            self.0.get_or_insert(node);
        }
    }
    let mut finder = Finder(None);
    finder.visit_type(ret);
    refuse(
        finder.0,
        "`#[atomic]` needs the return type spelled out: an `impl Trait` return type cannot \
         be checked or named inside the transaction; return a concrete `Result<T, E>`, \
         e.g. `QueryResult<Vec<Order>>`",
    )
}

/// A parameter bound to a plain name (`conn`, `mut conn`).
fn simple_ident(pat: &Pat) -> Option<&PatIdent> {
    match pat {
        Pat::Ident(ident) if ident.by_ref.is_none() && ident.subpat.is_none() => Some(ident),
        _ => None,
    }
}

/// Looks through `(T)` and the invisible groups `macro_rules!` leaves.
fn peel(ty: &Type) -> &Type {
    match ty {
        Type::Paren(p) => peel(&p.elem),
        Type::Group(g) => peel(&g.elem),
        _ => ty,
    }
}

fn is_mut_ref(ty: &Type) -> bool {
    matches!(peel(ty), Type::Reference(r) if r.mutability.is_some())
}

/// The connection: the parameter named by `conn = name`, else the one
/// named `conn`, else the only `&mut` parameter (`self` never counts).
fn find_connection<'f>(
    named: Option<&Ident>,
    func: &'f ItemFn,
) -> syn::Result<(usize, &'f PatType, &'f PatIdent)> {
    let sig = &func.sig;
    let typed: Vec<(usize, &PatType)> = sig
        .inputs
        .iter()
        .enumerate()
        .filter_map(|(i, arg)| match arg {
            FnArg::Typed(pat_type) => Some((i, pat_type)),
            FnArg::Receiver(_) => None,
        })
        .collect();
    let by_name = |name: &Ident| {
        typed.iter().find_map(|&(i, param)| {
            simple_ident(&param.pat)
                .filter(|p| p.ident == *name)
                .map(|p| (i, param, p))
        })
    };
    if let Some(name) = named {
        return by_name(name).ok_or_else(|| no_parameter_named(name, &typed));
    }
    if let Some(found) = by_name(&Ident::new("conn", Span::call_site())) {
        return Ok(found);
    }
    let refs: Vec<&(usize, &PatType)> = typed.iter().filter(|(_, p)| is_mut_ref(&p.ty)).collect();
    match refs.as_slice() {
        [] => Err(syn::Error::new_spanned(
            no_connection_span(func),
            "`#[atomic]` needs the connection as a parameter: take `conn: &mut DbConn` \
             (a parameter named `conn`, or the only `&mut` parameter), or name it with \
             `#[atomic(conn = name)]`",
        )),
        [(i, param)] => match simple_ident(&param.pat) {
            Some(ident) => Ok((*i, param, ident)),
            None => Err(syn::Error::new_spanned(
                &param.pat,
                "`#[atomic]` needs the connection parameter bound to a name: \
                 write `conn: &mut DbConn`",
            )),
        },
        several => {
            let names: Vec<String> = several
                .iter()
                .map(|(_, p)| format!("`{}`", p.pat.to_token_stream()))
                .collect();
            let first = several[0].1.pat.to_token_stream();
            Err(syn::Error::new_spanned(
                &sig.inputs,
                format!(
                    "`#[atomic]` cannot tell which parameter is the connection: {} are all \
                     `&mut`; name the connection `conn`, or say which with \
                     `#[atomic(conn = {first})]`",
                    names.join(", ")
                ),
            ))
        }
    }
}

/// `conn = name` names no parameter: list the ones there are.
fn no_parameter_named(name: &Ident, typed: &[(usize, &PatType)]) -> syn::Error {
    let names: Vec<String> = typed
        .iter()
        .filter_map(|(_, p)| simple_ident(&p.pat))
        .map(|p| format!("`{}`", p.ident))
        .collect();
    let have = if names.is_empty() {
        "it has no named parameter".to_string()
    } else {
        format!("its parameters are {}", names.join(", "))
    };
    syn::Error::new_spanned(
        name,
        format!(
            "`#[atomic(conn = {name})]`: this function has no parameter named `{name}` \
             ({have}); write the connection parameter's name, e.g. \
             `#[atomic(conn = db)]` for `db: &mut DbConn`"
        ),
    )
}

/// Underline `fn name(..)`: where a connection parameter would go.
fn no_connection_span(func: &ItemFn) -> TokenStream {
    let sig = &func.sig;
    let fn_token = &sig.fn_token;
    let ident = &sig.ident;
    let mut tokens = quote!(#fn_token #ident);
    sig.paren_token
        .surround(&mut tokens, |tokens| sig.inputs.to_tokens(tokens));
    tokens
}

fn connection_kind(param: &PatType, ident: &PatIdent) -> syn::Result<ConnKind> {
    let name = &ident.ident;
    match peel(&param.ty) {
        Type::Reference(r) if r.mutability.is_some() => Ok(ConnKind::Ref {
            mut_binding: ident.mutability,
        }),
        Type::Reference(r) => {
            let elem = &r.elem;
            Err(syn::Error::new_spanned(
                &param.ty,
                format!(
                    "the connection parameter `{name}` must be `&mut`: a transaction needs \
                     `{name}: &mut {}`",
                    elem.to_token_stream()
                ),
            ))
        }
        _ if ident.mutability.is_some() => Ok(ConnKind::Owned),
        ty => Err(syn::Error::new_spanned(
            param,
            format!(
                "the connection parameter `{name}` is taken by value but not `mut`: write \
                 `mut {name}: {ty}`, or take `{name}: &mut {ty}`",
                ty = ty.to_token_stream()
            ),
        )),
    }
}

/// `immediate` is SQLite's; the other transaction options are PostgreSQL's
/// and MySQL's.
fn refuse_immediate_with_others(options: &TxOptions) -> syn::Result<()> {
    let Some(immediate) = &options.immediate else {
        return Ok(());
    };
    let other = [
        options
            .isolation
            .as_ref()
            .map(|isolation| &isolation.value.ident),
        options.read_only.as_ref().map(|read_only| &read_only.name),
        options
            .deferrable
            .as_ref()
            .map(|deferrable| &deferrable.name),
    ]
    .into_iter()
    .flatten()
    .next();
    match other {
        Some(other) => Err(syn::Error::new_spanned(
            &immediate.name,
            format!(
                "`immediate` is SQLite's `BEGIN IMMEDIATE`, `{other}` is for PostgreSQL and \
                 MySQL: no backend has both; keep the one for your database"
            ),
        )),
        None => Ok(()),
    }
}

fn require_serializable_read_only_for_deferrable(options: &TxOptions) -> syn::Result<()> {
    let Some(deferrable) = &options.deferrable else {
        return Ok(());
    };
    let serializable = options
        .isolation
        .as_ref()
        .is_some_and(|isolation| isolation.value.ident == "serializable");
    if serializable && options.read_only.is_some() {
        return Ok(());
    }
    Err(syn::Error::new_spanned(
        &deferrable.name,
        "`deferrable` only has an effect on a serializable read-only transaction \
         (PostgreSQL's `SERIALIZABLE READ ONLY DEFERRABLE` waits for a snapshot that \
         cannot fail): write `#[atomic(isolation = serializable, read_only, deferrable)]`",
    ))
}
