//! `#[atomic]`: parse the options, validate the function into a [`Plan`],
//! emit the function with its body moved into `__private::atomic` (or
//! `atomic_with`, `atomic_with_retry`, and `atomic_async` for an `async fn`).

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
    /// `isolation = level`: the level's name as written, checked.
    isolation: Option<Ident>,
    /// The `isolation` of `isolation = level`, for errors about the option.
    isolation_name: Option<Ident>,
    /// `read_only`.
    read_only: Option<Ident>,
    /// `deferrable`.
    deferrable: Option<Ident>,
    /// `immediate`.
    immediate: Option<Ident>,
    /// `retry = N` (or a `RetryPolicy` expression): the option's name and
    /// its value.
    retry: Option<(Ident, syn::Expr)>,
}

/// The isolation levels `isolation = ..` takes, and the `IsolationLevel`
/// variant each stands for.
const ISOLATION_LEVELS: [(&str, &str); 3] = [
    ("serializable", "Serializable"),
    ("repeatable_read", "RepeatableRead"),
    ("read_committed", "ReadCommitted"),
];

/// The transaction options, each with the span of its name in the
/// attribute (where an option the backend lacks is reported).
struct TxOptions {
    /// The `IsolationLevel` variant, and the option's name.
    isolation: Option<(Ident, Ident)>,
    read_only: Option<Ident>,
    deferrable: Option<Ident>,
    immediate: Option<Ident>,
    retry: Option<(Ident, syn::Expr)>,
}

impl TxOptions {
    fn is_empty(&self) -> bool {
        self.isolation.is_none()
            && self.read_only.is_none()
            && self.deferrable.is_none()
            && self.immediate.is_none()
            && self.retry.is_none()
    }
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
    options: TxOptions,
    /// An `async fn`: the body runs in `__private::atomic_async`.
    is_async: bool,
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
            "isolation" => {
                if options.isolation.is_some() {
                    return Err(meta.error("`isolation` is given twice"));
                }
                let levels = "`isolation = serializable`, `isolation = repeatable_read` or \
                              `isolation = read_committed`";
                if takes_no_value {
                    return Err(meta.error(format!("`isolation` needs a level: {levels}")));
                }
                let value = meta.value()?;
                let level = if value.peek(LitStr) {
                    let lit: LitStr = value.parse()?;
                    return Err(syn::Error::new_spanned(
                        &lit,
                        format!(
                            "`isolation` takes the level's name, not a string: \
                             `#[atomic(isolation = {})]`",
                            lit.value().to_lowercase().replace(' ', "_")
                        ),
                    ));
                } else {
                    value.parse::<Ident>().map_err(|e| {
                        syn::Error::new(e.span(), format!("`isolation` takes a level: {levels}"))
                    })?
                };
                let known = level.to_string();
                if !ISOLATION_LEVELS.iter().any(|(name, _)| *name == known) {
                    let hint = if known.eq_ignore_ascii_case("read_uncommitted") {
                        " (READ UNCOMMITTED is not offered: PostgreSQL runs it as READ COMMITTED)"
                    } else {
                        ""
                    };
                    return Err(syn::Error::new_spanned(
                        &level,
                        format!("unknown isolation level `{known}`{hint}: write {levels}"),
                    ));
                }
                options.isolation = Some(level);
                options.isolation_name = meta.path.get_ident().cloned();
            }
            "read_only" | "deferrable" | "immediate" => {
                let slot = match name.as_str() {
                    "read_only" => &mut options.read_only,
                    "deferrable" => &mut options.deferrable,
                    _ => &mut options.immediate,
                };
                if slot.is_some() {
                    return Err(meta.error(format!("`{name}` is given twice")));
                }
                if !takes_no_value {
                    return Err(meta.error(format!(
                        "`{name}` takes no value: write `#[atomic({name})]`"
                    )));
                }
                *slot = meta.path.get_ident().cloned();
            }
            "retry" => {
                if options.retry.is_some() {
                    return Err(meta.error("`retry` is given twice"));
                }
                if takes_no_value {
                    return Err(
                        meta.error("`retry` needs the number of attempts: `#[atomic(retry = 5)]`")
                    );
                }
                let ident = meta.path.get_ident().cloned();
                let value: syn::Expr = meta.value()?.parse()?;
                if let syn::Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Int(n),
                    ..
                }) = &value
                {
                    if n.base10_parse::<u32>().ok() == Some(0) {
                        return Err(syn::Error::new_spanned(
                            n,
                            "`retry = 0` would never run the body: `retry = N` runs it at most \
                             N times, e.g. `#[atomic(retry = 3)]`",
                        ));
                    }
                }
                if let Some(ident) = ident {
                    options.retry = Some((ident, value));
                }
            }
            _ => {
                return Err(meta.error(format!(
                    "unknown `#[atomic]` option `{name}`: the options are `conn = name`, \
                     `durable`, `crate = path`, `isolation = serializable | repeatable_read | \
                     read_committed`, `read_only`, `deferrable`, `immediate` and `retry = N`"
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
    let is_async = sig.asyncness.is_some();
    if is_async {
        refuse_options_on_async_fn(&options)?;
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
    let tx_options = tx_options(&options)?;
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
        options: tx_options,
        is_async,
    })
}

/// The transaction options and `retry` need the sync runtime (the
/// wrapper's builders and retry loop): on an `async fn`, each is an error
/// on the option that says what to write instead.
fn refuse_options_on_async_fn(options: &Options) -> syn::Result<()> {
    let not_yet = |option: TokenStream, written: String, instead: &str| {
        Err(syn::Error::new_spanned(
            option,
            format!(
                "`#[atomic({written})]` is not supported on an `async fn` yet: remove it and \
                 {instead}, or make the function a sync `fn`"
            ),
        ))
    };
    let builder = |methods: &str| {
        format!(
            "open the transaction with diesel-async's builder on a plain `AsyncPgConnection`, \
             `conn.build_transaction(){methods}.run(async |conn| ..).await`"
        )
    };
    if let Some(level) = &options.isolation {
        let name = options.isolation_name.as_ref().unwrap_or(level);
        return not_yet(
            quote!(#name = #level),
            format!("isolation = {level}"),
            &builder(&format!(".{level}()")),
        );
    }
    if let Some(read_only) = &options.read_only {
        return not_yet(
            read_only.to_token_stream(),
            "read_only".into(),
            &builder(".read_only()"),
        );
    }
    if let Some(deferrable) = &options.deferrable {
        return not_yet(
            deferrable.to_token_stream(),
            "deferrable".into(),
            &builder(".serializable().read_only().deferrable()"),
        );
    }
    if let Some(immediate) = &options.immediate {
        return not_yet(
            immediate.to_token_stream(),
            "immediate".into(),
            "open the transaction with diesel-async's \
             `conn.immediate_transaction(async |conn| ..).await` on a plain \
             `SyncConnectionWrapper<SqliteConnection>`",
        );
    }
    if let Some((retry, value)) = &options.retry {
        return not_yet(
            quote!(#retry = #value),
            "retry = ..".into(),
            "call the function again while its error is retryable \
             (`diesel_on_commit::is_retryable(&e)`)",
        );
    }
    Ok(())
}

/// The transaction options, checked for combinations that cannot work on
/// any backend (the backend's own support is the compiler's check).
fn tx_options(options: &Options) -> syn::Result<TxOptions> {
    if let Some(immediate) = &options.immediate {
        let other = [&options.isolation, &options.read_only, &options.deferrable]
            .into_iter()
            .flatten()
            .next();
        if let Some(other) = other {
            return Err(syn::Error::new_spanned(
                immediate,
                format!(
                    "`immediate` is SQLite's `BEGIN IMMEDIATE`, `{other}` is for PostgreSQL and \
                     MySQL: no backend has both; keep the one for your database"
                ),
            ));
        }
    }
    if let Some(deferrable) = &options.deferrable {
        let serializable = options
            .isolation
            .as_ref()
            .is_some_and(|level| level == "serializable");
        if !serializable || options.read_only.is_none() {
            return Err(syn::Error::new_spanned(
                deferrable,
                "`deferrable` only has an effect on a serializable read-only transaction \
                 (PostgreSQL's `SERIALIZABLE READ ONLY DEFERRABLE` waits for a snapshot that \
                 cannot fail): write `#[atomic(isolation = serializable, read_only, deferrable)]`",
            ));
        }
    }
    let isolation = options.isolation.as_ref().map(|level| {
        let variant = ISOLATION_LEVELS
            .iter()
            .find(|(name, _)| level == name)
            .map_or("Serializable", |(_, variant)| variant);
        (Ident::new(variant, level.span()), level.clone())
    });
    Ok(TxOptions {
        isolation,
        read_only: options.read_only.clone(),
        deferrable: options.deferrable.clone(),
        immediate: options.immediate.clone(),
        retry: options.retry.clone(),
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
    let call = if is_async {
        // `async fn`: options other than `conn`, `durable` and `crate`
        // were refused in `validate`.
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
        emit_with_options(&krate, &options, &conn_ty, &ret, conn_arg, &durable, body)
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
/// spanned on the option's name, so that an option the connection's backend
/// lacks is reported on it.
fn emit_with_options(
    krate: &Path,
    options: &TxOptions,
    conn_ty: &TokenStream,
    ret: &Type,
    conn_arg: TokenStream,
    durable: &TokenStream,
    body: TokenStream,
) -> TokenStream {
    let private = quote!(#krate::__private);
    let ret_span = ret.span();
    let marker = |name: Option<&Ident>, value: TokenStream| match name {
        Some(name) => (quote_spanned!(name.span()=> _), value),
        None => (quote!(_), quote!(#private::Unset)),
    };
    let (isolation_ty, isolation) = match &options.isolation {
        Some((variant, name)) => marker(
            Some(name),
            quote!(#private::Isolation(#krate::IsolationLevel::#variant)),
        ),
        None => marker(None, TokenStream::new()),
    };
    let (read_only_ty, read_only) = marker(options.read_only.as_ref(), quote!(#private::ReadOnly));
    let (deferrable_ty, deferrable) =
        marker(options.deferrable.as_ref(), quote!(#private::Deferrable));
    let (immediate_ty, immediate) = marker(options.immediate.as_ref(), quote!(#private::Immediate));
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
                #private::atomic_with::<
                    #conn_ty, _, #result, #error_ty, #closure_ty,
                    #isolation_ty, #read_only_ty, #deferrable_ty, #immediate_ty
                >
            };
            quote!(#atomic_fn(#conn_arg, #durable, #tx_options, #body))
        }
        Some((retry, value)) => {
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
            let retryable_ty = quote_spanned!(retry.span()=> _);
            let policy_ty = quote_spanned!(value.span()=> _);
            let atomic_fn = quote_spanned! {ret_span=>
                #private::atomic_with_retry::<
                    #conn_ty, _, #result, #error_ty, #retryable_ty, #closure_ty,
                    #isolation_ty, #read_only_ty, #deferrable_ty, #immediate_ty, #policy_ty
                >
            };
            quote!(#atomic_fn(#conn_arg, #durable, #tx_options, #policy, #body))
        }
    }
}
