//! Parsing: the item into an [`ItemFn`], the tokens inside `#[atomic(..)]`
//! into [`Options`]. Each option keeps the name it was written with, whose
//! span later errors (and the backend's trait checks) point at.
//!
//! A value that cannot stand for what its option means (an unknown
//! isolation level, `retry = 0`) is refused here, while the option is
//! parsed: the options are parsed in order and the first error wins, so
//! checking these later would report a different option first.

use proc_macro2::{Span, TokenStream};
use quote::{quote, ToTokens};
use syn::meta::ParseNestedMeta;
use syn::parse::{ParseStream, Parser};
use syn::{Ident, ItemFn, LitStr, Path, Token};

/// An option as written: its name (`read_only`, `isolation`, ..) and the
/// value it was given (`()` for a flag).
pub(super) struct Given<T> {
    pub(super) name: Ident,
    pub(super) value: T,
}

/// An option without a value: `durable`, `read_only`, ..
pub(super) type Flag = Given<()>;

/// The options of `#[atomic(..)]`, each `None` unless written.
#[derive(Default)]
pub(super) struct Options {
    /// `conn = name`: the connection parameter.
    pub(super) conn: Option<Given<Ident>>,
    /// `durable`: refuse to run inside a user transaction.
    pub(super) durable: Option<Flag>,
    /// `crate = path`: where the facade is, when the user renamed it.
    pub(super) krate: Option<Given<Path>>,
    /// The options about the transaction itself.
    pub(super) tx: TxOptions,
}

/// The transaction options: they pick `__private::atomic_with` (or
/// `atomic_with_retry`) instead of `__private::atomic`.
#[derive(Default)]
pub(super) struct TxOptions {
    /// `isolation = level`.
    pub(super) isolation: Option<Given<Level>>,
    /// `read_only`.
    pub(super) read_only: Option<Flag>,
    /// `deferrable`.
    pub(super) deferrable: Option<Flag>,
    /// `immediate`.
    pub(super) immediate: Option<Flag>,
    /// `retry = N` (or a `RetryPolicy` expression).
    pub(super) retry: Option<Given<syn::Expr>>,
}

impl TxOptions {
    pub(super) fn is_empty(&self) -> bool {
        self.isolation.is_none()
            && self.read_only.is_none()
            && self.deferrable.is_none()
            && self.immediate.is_none()
            && self.retry.is_none()
    }
}

/// A known isolation level: its name as written and the `IsolationLevel`
/// variant it stands for.
pub(super) struct Level {
    pub(super) ident: Ident,
    pub(super) variant: &'static str,
}

/// The isolation levels `isolation = ..` takes, and the `IsolationLevel`
/// variant each stands for.
const ISOLATION_LEVELS: [(&str, &str); 3] = [
    ("serializable", "Serializable"),
    ("repeatable_read", "RepeatableRead"),
    ("read_committed", "ReadCommitted"),
];

const LEVELS: &str = "`isolation = serializable`, `isolation = repeatable_read` or \
                      `isolation = read_committed`";

/// The item `#[atomic]` is on, which must be a function with a body.
pub(super) fn parse_item(item: &TokenStream) -> syn::Result<ItemFn> {
    syn::parse2::<ItemFn>(item.clone()).map_err(|_| not_a_function(item))
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

/// `args` are the tokens inside `#[atomic(..)]`.
pub(super) fn parse_options(args: TokenStream) -> syn::Result<Options> {
    let mut options = Options::default();
    let parser = syn::meta::parser(|meta| {
        let Some(name) = meta.path.get_ident() else {
            return Err(unknown_option(&meta));
        };
        let tx = &mut options.tx;
        match name.to_string().as_str() {
            "conn" => set_once(&mut options.conn, &meta, name, parse_conn),
            "durable" => set_once(&mut options.durable, &meta, name, flag),
            "crate" => set_once(&mut options.krate, &meta, name, parse_crate),
            "isolation" => set_once(&mut tx.isolation, &meta, name, parse_isolation),
            "read_only" => set_once(&mut tx.read_only, &meta, name, flag),
            "deferrable" => set_once(&mut tx.deferrable, &meta, name, flag),
            "immediate" => set_once(&mut tx.immediate, &meta, name, flag),
            "retry" => set_once(&mut tx.retry, &meta, name, parse_retry),
            _ => Err(unknown_option(&meta)),
        }
    });
    parser.parse2(args)?;
    Ok(options)
}

/// Parses one option into its slot, refusing it the second time.
///
/// The "given twice" check comes before the value is parsed: `meta.error`
/// underlines from the option's name to the last token read, so it must
/// run while only the name has been read.
fn set_once<T>(
    slot: &mut Option<Given<T>>,
    meta: &ParseNestedMeta,
    name: &Ident,
    parse: fn(&ParseNestedMeta, &Ident) -> syn::Result<T>,
) -> syn::Result<()> {
    if slot.is_some() {
        let hint = if name == "conn" {
            ": name one connection parameter"
        } else {
            ""
        };
        return Err(meta.error(format!("`{name}` is given twice{hint}")));
    }
    let value = parse(meta, name)?;
    *slot = Some(Given {
        name: name.clone(),
        value,
    });
    Ok(())
}

fn unknown_option(meta: &ParseNestedMeta) -> syn::Error {
    let name = match meta.path.get_ident() {
        Some(ident) => ident.to_string(),
        None => meta.path.to_token_stream().to_string().replace(' ', ""),
    };
    meta.error(format!(
        "unknown `#[atomic]` option `{name}`: the options are `conn = name`, \
         `durable`, `crate = path`, `isolation = serializable | repeatable_read | \
         read_committed`, `read_only`, `deferrable`, `immediate` and `retry = N`"
    ))
}

/// Written bare: `durable`, not `durable = ..` nor `durable(..)`.
fn is_bare(meta: &ParseNestedMeta) -> bool {
    meta.input.is_empty() || meta.input.peek(Token![,])
}

/// An option that takes no value.
fn flag(meta: &ParseNestedMeta, name: &Ident) -> syn::Result<()> {
    if !is_bare(meta) {
        return Err(meta.error(format!(
            "`{name}` takes no value: write `#[atomic({name})]`"
        )));
    }
    Ok(())
}

/// The value after `name =`; `missing` is the error when there is none.
fn value<'a>(meta: &ParseNestedMeta<'a>, missing: &str) -> syn::Result<ParseStream<'a>> {
    if is_bare(meta) {
        return Err(meta.error(missing));
    }
    meta.value()
}

/// A name as an option's value (`conn = db`, `isolation = serializable`).
/// A string is refused with the option written right, `unquote` turning
/// the string's text into the name; anything else that is not a name is
/// refused with `expected`.
fn name_value(
    value: ParseStream,
    option: &Ident,
    what: &str,
    unquote: fn(String) -> String,
    expected: &str,
) -> syn::Result<Ident> {
    if value.peek(LitStr) {
        let lit: LitStr = value.parse()?;
        return Err(syn::Error::new_spanned(
            &lit,
            format!(
                "`{option}` takes the {what}, not a string: `#[atomic({option} = {})]`",
                unquote(lit.value())
            ),
        ));
    }
    value
        .parse::<Ident>()
        .map_err(|e| syn::Error::new(e.span(), expected))
}

fn parse_conn(meta: &ParseNestedMeta, name: &Ident) -> syn::Result<Ident> {
    let value = value(
        meta,
        "`conn` needs the connection parameter's name: `#[atomic(conn = db)]`",
    )?;
    name_value(
        value,
        name,
        "parameter's name",
        |text| text,
        "`conn` takes the connection parameter's name: `#[atomic(conn = db)]`",
    )
}

fn parse_crate(meta: &ParseNestedMeta, _: &Ident) -> syn::Result<Path> {
    let value = value(
        meta,
        "`crate` needs the path of the renamed `diesel-on-commit` dependency: \
         `#[atomic(crate = my_on_commit)]`",
    )?;
    // serde and tokio take a string here; accept both spellings.
    if value.peek(LitStr) {
        value.parse::<LitStr>()?.parse_with(Path::parse_mod_style)
    } else {
        Path::parse_mod_style(value)
    }
}

fn parse_isolation(meta: &ParseNestedMeta, name: &Ident) -> syn::Result<Level> {
    let value = value(meta, &format!("`isolation` needs a level: {LEVELS}"))?;
    let ident = name_value(
        value,
        name,
        "level's name",
        // `"Read Committed"` is `read_committed`.
        |text| text.to_lowercase().replace(' ', "_"),
        &format!("`isolation` takes a level: {LEVELS}"),
    )?;
    let known = ident.to_string();
    match ISOLATION_LEVELS.iter().find(|(level, _)| *level == known) {
        Some(&(_, variant)) => Ok(Level { ident, variant }),
        None => {
            let hint = if known.eq_ignore_ascii_case("read_uncommitted") {
                " (READ UNCOMMITTED is not offered: PostgreSQL runs it as READ COMMITTED)"
            } else {
                ""
            };
            Err(syn::Error::new_spanned(
                &ident,
                format!("unknown isolation level `{known}`{hint}: write {LEVELS}"),
            ))
        }
    }
}

fn parse_retry(meta: &ParseNestedMeta, _: &Ident) -> syn::Result<syn::Expr> {
    let value: syn::Expr = value(
        meta,
        "`retry` needs the number of attempts: `#[atomic(retry = 5)]`",
    )?
    .parse()?;
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
    Ok(value)
}
