//! `#[atomic]`: parse the options, validate the function into a [`Plan`],
//! emit the function with its body moved into `__private::atomic`.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::parse::Parser;
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{
    AttrStyle, FnArg, Ident, ItemFn, LitStr, Pat, PatIdent, PatType, Path, ReturnType, Token, Type,
    TypeImplTrait,
};

/// The options of `#[atomic(..)]`.
#[derive(Default)]
struct Options {
    /// `conn = name`: the connection parameter.
    conn: Option<Ident>,
    /// `durable`: refuse to run inside a user transaction.
    durable: bool,
    /// `crate = path`: where the facade is, when the user renamed it.
    krate: Option<Path>,
}

/// How the connection parameter is bound.
enum ConnKind {
    /// `conn: &mut C`, or `mut conn: &mut C` (the user's `mut`).
    Ref { mut_binding: Option<Token![mut]> },
    /// `mut conn: C`.
    Owned,
}

/// What to emit, once everything checked out.
struct Plan {
    krate: Path,
    durable: bool,
    /// Index of the connection parameter in `sig.inputs`.
    conn_index: usize,
    conn_ident: Ident,
    conn_kind: ConnKind,
    /// The connection type, for errors about it.
    conn_span: Span,
    ret: Type,
}

/// Entry point: `args` are the tokens inside `#[atomic(..)]`.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let func = match syn::parse2::<ItemFn>(item.clone()) {
        Ok(func) => func,
        Err(_) => {
            let error = not_a_function(&item);
            return with_error(item, error);
        }
    };
    let options = match parse_options(args) {
        Ok(options) => options,
        Err(e) => return with_error(item, e),
    };
    match validate(options, &func) {
        Ok(plan) => emit(plan, func),
        Err(e) => with_error(item, e),
    }
}

/// On an error, still emit the user's item, untouched: the user sees one
/// precise error (not a cascade about a missing function) and the IDE keeps
/// working.
fn with_error(item: TokenStream, error: syn::Error) -> TokenStream {
    let error = error.into_compile_error();
    quote!(#item #error)
}

fn not_a_function(item: &TokenStream) -> syn::Error {
    let text = "`#[atomic]` goes on a function that takes a Diesel connection: \
                `#[atomic] fn create_order(conn: &mut DbConn, ..) -> QueryResult<Order> { .. }`";
    // A method declared in a trait without a body parses as neither.
    if let Ok(decl) = syn::parse2::<syn::TraitItemFn>(item.clone()) {
        if decl.default.is_none() {
            return syn::Error::new_spanned(
                &decl.sig,
                "`#[atomic]` needs the function's body: put it on the trait method's \
                 implementation (or on a default body), not on its declaration",
            );
        }
    }
    match syn::parse2::<syn::Item>(item.clone()) {
        Ok(item) => syn::Error::new_spanned(item_head(&item), text),
        Err(_) => syn::Error::new(Span::call_site(), text),
    }
}

/// The tokens that introduce an item (`struct Order`, `enum State`): a
/// short underline rather than the whole item.
fn item_head(item: &syn::Item) -> TokenStream {
    match item {
        syn::Item::Struct(s) => {
            let (token, ident) = (&s.struct_token, &s.ident);
            quote!(#token #ident)
        }
        syn::Item::Enum(e) => {
            let (token, ident) = (&e.enum_token, &e.ident);
            quote!(#token #ident)
        }
        syn::Item::Impl(i) => {
            let (token, ty) = (&i.impl_token, &i.self_ty);
            quote!(#token #ty)
        }
        _ => item.to_token_stream(),
    }
}

fn parse_options(args: TokenStream) -> syn::Result<Options> {
    let mut options = Options::default();
    let parser = syn::meta::parser(|meta| {
        let name = meta
            .path
            .get_ident()
            .map(Ident::to_string)
            .unwrap_or_else(|| meta.path.to_token_stream().to_string().replace(' ', ""));
        let takes_no_value = meta.input.is_empty() || meta.input.peek(Token![,]);
        match name.as_str() {
            "conn" => {
                if options.conn.is_some() {
                    return Err(meta.error("`conn` is given twice: name one connection parameter"));
                }
                if takes_no_value {
                    return Err(meta.error(
                        "`conn` needs the connection parameter's name: `#[atomic(conn = db)]`",
                    ));
                }
                let value = meta.value()?;
                if value.peek(LitStr) {
                    let lit: LitStr = value.parse()?;
                    return Err(syn::Error::new_spanned(
                        &lit,
                        format!(
                            "`conn` takes the parameter's name, not a string: `#[atomic(conn = {})]`",
                            lit.value()
                        ),
                    ));
                }
                let ident = value.parse::<Ident>().map_err(|e| {
                    syn::Error::new(
                        e.span(),
                        "`conn` takes the connection parameter's name: `#[atomic(conn = db)]`",
                    )
                })?;
                options.conn = Some(ident);
            }
            "durable" => {
                if options.durable {
                    return Err(meta.error("`durable` is given twice"));
                }
                if !takes_no_value {
                    return Err(meta.error("`durable` takes no value: write `#[atomic(durable)]`"));
                }
                options.durable = true;
            }
            "crate" => {
                if options.krate.is_some() {
                    return Err(meta.error("`crate` is given twice"));
                }
                if takes_no_value {
                    return Err(meta.error(
                        "`crate` needs the path of the renamed `diesel-on-commit` dependency: \
                         `#[atomic(crate = my_on_commit)]`",
                    ));
                }
                let value = meta.value()?;
                // serde and tokio take a string here; accept both spellings.
                let path = if value.peek(LitStr) {
                    value.parse::<LitStr>()?.parse_with(Path::parse_mod_style)?
                } else {
                    Path::parse_mod_style(value)?
                };
                options.krate = Some(path);
            }
            _ => {
                return Err(meta.error(format!(
                    "unknown `#[atomic]` option `{name}`: the options are `conn = name`, \
                     `durable` and `crate = path`"
                )))
            }
        }
        Ok(())
    });
    parser.parse2(args)?;
    Ok(options)
}

fn validate(options: Options, func: &ItemFn) -> syn::Result<Plan> {
    let sig = &func.sig;
    if let Some(asyncness) = &sig.asyncness {
        return Err(syn::Error::new_spanned(
            asyncness,
            "`#[atomic]` on an `async fn` comes with diesel-async support \
             (`AsyncHookedConnection`); until then, use a sync `fn` (with a sync connection, \
             e.g. inside `spawn_blocking`)",
        ));
    }
    if let Some(constness) = &sig.constness {
        return Err(syn::Error::new_spanned(
            constness,
            "`#[atomic]` cannot go on a `const fn`: a transaction runs at run time; remove `const`",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        return Err(syn::Error::new_spanned(
            variadic,
            "`#[atomic]` cannot go on a variadic function",
        ));
    }
    let ret = match &sig.output {
        ReturnType::Default => {
            return Err(syn::Error::new(
                sig.paren_token.span.close(),
                "`#[atomic]` functions return `Result<T, E>` with \
                 `E: From<diesel::result::Error>`: add a return type, \
                 e.g. `-> diesel::QueryResult<()>`",
            ))
        }
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    if let Some(impl_trait) = find_impl_trait(&ret) {
        return Err(syn::Error::new_spanned(
            impl_trait,
            "`#[atomic]` needs the return type spelled out: an `impl Trait` return type cannot \
             be checked or named inside the transaction; return a concrete `Result<T, E>`, \
             e.g. `QueryResult<Vec<Order>>`",
        ));
    }
    let (conn_index, param, ident) = find_connection(options.conn.as_ref(), func)?;
    let conn_kind = connection_kind(param, ident)?;
    let conn_span = match peel(&param.ty) {
        Type::Reference(r) => r.elem.span(),
        ty => ty.span(),
    };
    Ok(Plan {
        krate: options
            .krate
            .unwrap_or_else(|| syn::parse_quote!(::diesel_on_commit)),
        durable: options.durable,
        conn_index,
        conn_ident: ident.ident.clone(),
        conn_kind,
        conn_span,
        ret,
    })
}

/// The first `impl Trait` anywhere in `ty` (`impl Iterator`,
/// `Result<impl Display, E>`): a closure's return type cannot contain one.
fn find_impl_trait(ty: &Type) -> Option<&TypeImplTrait> {
    struct Finder<'a>(Option<&'a TypeImplTrait>);
    impl<'a> Visit<'a> for Finder<'a> {
        fn visit_type_impl_trait(&mut self, node: &'a TypeImplTrait) {
            self.0.get_or_insert(node);
        }
    }
    let mut finder = Finder(None);
    finder.visit_type(ty);
    finder.0
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
        return by_name(name).ok_or_else(|| {
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
        });
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

fn emit(plan: Plan, mut func: ItemFn) -> TokenStream {
    let Plan {
        krate,
        durable,
        conn_index,
        conn_ident,
        conn_kind,
        conn_span,
        ret,
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
    let atomic_fn = quote_spanned!(ret_span=> #krate::__private::atomic::<#conn_ty, #ret, _, _>);
    let durable = if durable { quote!(true) } else { quote!(false) };
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = func;
    quote! {
        #(#attrs)*
        #vis #sig {
            #atomic_fn(#conn_arg, #durable, move |#closure_param| -> #ret #block)
        }
    }
}
