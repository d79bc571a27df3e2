//! `on_commit!`: parse `[crate = path;] conn, [robust,] hook [,]`, classify
//! the hook (closure, bare path, other expression), emit one call of the
//! `TransactionHooks` entry point that fits, by its full path, on
//! `(conn).__diesel_on_commit_conn()` (the connection as it is held, M3).

use proc_macro2::{Delimiter, LineColumn, Span, TokenStream, TokenTree};
use quote::{quote, quote_spanned};
use syn::parse::{ParseStream, Parser};
use syn::{Expr, ExprClosure, Ident, Path, Token};

/// Longest label text, in characters, before it is cut with an ellipsis.
const LABEL_MAX: usize = 60;

/// The parsed invocation.
struct Input {
    krate: Path,
    conn: Expr,
    robust: bool,
    hook: Expr,
    /// The hook's own tokens, as written (for the label).
    hook_tokens: TokenStream,
}

/// What the hook expression is, which decides the entry point.
enum Kind<'a> {
    /// `|| ..` / `move || ..`.
    NoArgClosure,
    /// `|conn| ..`: an `on_commit_with` hook.
    ConnClosure(&'a ExprClosure),
    /// `async move || ..`: called once for its future (an async hook).
    AsyncNoArgClosure,
    /// `async move |conn| ..`: an async `on_commit_with` hook.
    AsyncConnClosure,
    /// `async move { .. }`: the future is the hook.
    AsyncBlock,
    /// An expression with `.await` in it (outside nested closures and
    /// `async` blocks): wrapped in `async move { expr }`.
    Awaits,
    /// `send_email`, `hook`: registered as it is; plain or `with` is decided
    /// by its type.
    Path,
    /// Anything else: wrapped in `move || expr`.
    Expr,
}

/// Whether `expr` awaits something itself (not in a closure or an `async`
/// block of its own, whose `.await`s are theirs).
fn awaits(expr: &Expr) -> bool {
    struct Finder(bool);
    impl<'ast> syn::visit::Visit<'ast> for Finder {
        fn visit_expr_await(&mut self, _: &'ast syn::ExprAwait) {
            self.0 = true;
        }
        fn visit_expr_async(&mut self, _: &'ast syn::ExprAsync) {}
        fn visit_expr_closure(&mut self, _: &'ast ExprClosure) {}
        fn visit_item(&mut self, _: &'ast syn::Item) {}
    }
    let mut finder = Finder(false);
    syn::visit::Visit::visit_expr(&mut finder, expr);
    finder.0
}

/// Entry point.
pub(crate) fn expand(input: TokenStream) -> TokenStream {
    match parse.parse2(input).and_then(|input| emit(&input)) {
        Ok(tokens) => tokens,
        Err(e) => e.into_compile_error(),
    }
}

const USAGE: &str =
    "`on_commit!(conn, send_email(id))` or `on_commit!(conn, move || send_email(id))`";

fn parse(input: ParseStream) -> syn::Result<Input> {
    let krate = if input.peek(Token![crate]) && input.peek2(Token![=]) {
        input.parse::<Token![crate]>()?;
        input.parse::<Token![=]>()?;
        let path = Path::parse_mod_style(input)?;
        input.parse::<Token![;]>().map_err(|e| {
            syn::Error::new(
                e.span(),
                "end the crate path with `;`: `on_commit!(crate = my_on_commit; conn, hook)`",
            )
        })?;
        path
    } else {
        syn::parse_quote!(::diesel_on_commit)
    };
    if input.is_empty() {
        return Err(syn::Error::new(
            Span::call_site(),
            format!("`on_commit!` takes the connection and a hook: {USAGE}"),
        ));
    }
    let conn: Expr = input.parse()?;
    if input.is_empty() {
        // One argument: either the connection or the hook was left out.
        let message = if matches!(peel(&conn), Expr::Closure(_)) {
            format!("`on_commit!` needs the connection first: {USAGE}")
        } else {
            format!("`on_commit!` needs a hook after the connection: {USAGE}")
        };
        return Err(syn::Error::new_spanned(&conn, message));
    }
    let comma = input.parse::<Token![,]>().map_err(|e| {
        syn::Error::new(
            e.span(),
            format!("expected `,` after the connection: {USAGE}"),
        )
    })?;
    let robust = input.peek(Ident) && input.peek2(Token![,]) && {
        let fork = input.fork();
        fork.parse::<Ident>().is_ok_and(|ident| ident == "robust")
    };
    if robust {
        input.parse::<Ident>()?;
        input.parse::<Token![,]>()?;
    }
    if input.is_empty() {
        return Err(syn::Error::new_spanned(
            comma,
            format!("`on_commit!` needs a hook after the connection: {USAGE}"),
        ));
    }
    let start = input.cursor();
    let hook: Expr = input.parse()?;
    let hook_tokens = tokens_between(start, input.cursor());
    if input.peek(Token![,]) {
        input.parse::<Token![,]>()?;
    }
    if !input.is_empty() {
        return Err(input.error(
            "`on_commit!` registers one hook: put several calls in a block \
             (`on_commit!(conn, { a(); b() })`) or register each with its own `on_commit!`",
        ));
    }
    Ok(Input {
        krate,
        conn,
        robust,
        hook,
        hook_tokens,
    })
}

/// The tokens from `start` up to `end`, exactly as the user wrote them.
fn tokens_between(start: syn::buffer::Cursor, end: syn::buffer::Cursor) -> TokenStream {
    let mut tokens = TokenStream::new();
    let mut cursor = start;
    while cursor < end {
        match cursor.token_tree() {
            Some((tree, next)) => {
                tokens.extend([tree]);
                cursor = next;
            }
            None => break,
        }
    }
    tokens
}

/// Looks through `( .. )` and the invisible groups `macro_rules!` leaves.
fn peel(expr: &Expr) -> &Expr {
    match expr {
        Expr::Paren(p) if p.attrs.is_empty() => peel(&p.expr),
        Expr::Group(g) if g.attrs.is_empty() => peel(&g.expr),
        _ => expr,
    }
}

fn classify(hook: &Expr) -> syn::Result<Kind<'_>> {
    Ok(match peel(hook) {
        Expr::Closure(closure) => {
            let is_async = closure.asyncness.is_some();
            match closure.inputs.len() {
                0 if is_async => Kind::AsyncNoArgClosure,
                1 if is_async => Kind::AsyncConnClosure,
                0 => Kind::NoArgClosure,
                1 => Kind::ConnClosure(closure),
                _ => {
                    return Err(syn::Error::new_spanned(
                        &closure.inputs,
                        "a hook closure takes nothing (`move || ..`) or the connection \
                         (`move |conn| ..`)",
                    ))
                }
            }
        }
        Expr::Async(_) => Kind::AsyncBlock,
        Expr::Path(path) if path.qself.is_none() && path.attrs.is_empty() => Kind::Path,
        expr if awaits(expr) => Kind::Awaits,
        _ => Kind::Expr,
    })
}

fn emit(input: &Input) -> syn::Result<TokenStream> {
    let Input {
        krate,
        conn,
        robust,
        hook,
        hook_tokens,
    } = input;
    let text = label_text(hook_tokens);
    let hooks = quote!(#krate::TransactionHooks);
    let async_hooks = quote!(#krate::__private::AsyncTransactionHooks);
    let conn = conn_arg(conn);
    // The registration: always the trait's full path, never method syntax:
    // Diesel's next release adds `SqliteConnection::on_commit`, SQLite's own
    // commit hook, which method syntax would pick on a plain connection.
    let call = register(&hooks, &async_hooks, krate, &conn, &text, hook, *robust)?;
    // The connection goes through a uniquely named method (M3), of
    // `TransactionHooks` or of `OnCommitConnection` (which only makes misuse
    // read well): both must be in scope.
    Ok(quote! {{
        use #hooks as _;
        use #krate::__private::OnCommitConnection as _;
        #call
    }})
}

/// `(conn).__diesel_on_commit_conn()`: a method call, so that the compiler
/// borrows an owned binding, reborrows a `&mut` reference and follows
/// `DerefMut` through pool guards to the wrapper (M3). Its tokens carry the
/// spans of the user's expression (the opening parenthesis its first
/// token's, the rest its last token's), so an error about the connection
/// points at the expression as written.
///
/// `&mut x` is emitted as `x`: the method call borrows it the same way, and
/// `(&mut x).method()` in the user's crate would trip clippy's
/// `needless_borrow`.
fn conn_arg(conn: &Expr) -> TokenStream {
    let written = quote!(#conn);
    let mut spans = written.into_iter().map(|tree| tree.span());
    let first = spans.next().unwrap_or_else(Span::call_site);
    let last = spans.last().unwrap_or(first);
    let receiver = match peel(conn) {
        Expr::Reference(r) if r.mutability.is_some() && r.attrs.is_empty() => &*r.expr,
        _ => conn,
    };
    let mut parens = proc_macro2::Group::new(Delimiter::Parenthesis, quote!(#receiver));
    parens.set_span(first);
    let method = quote_spanned!(last=> .__diesel_on_commit_conn());
    quote!(#parens #method)
}

/// The call of the entry point that fits the hook, on `conn` (the `&mut`
/// wrapper).
fn register(
    hooks: &TokenStream,
    async_hooks: &TokenStream,
    krate: &Path,
    conn: &TokenStream,
    text: &str,
    hook: &Expr,
    robust: bool,
) -> syn::Result<TokenStream> {
    Ok(match (classify(hook)?, robust) {
        (Kind::NoArgClosure, false) => quote!(#hooks::__on_commit_labeled(#conn, #text, #hook)),
        (Kind::NoArgClosure | Kind::Path, true) => {
            quote!(#hooks::__on_commit_robust_labeled(#conn, #text, #hook))
        }
        (Kind::ConnClosure(_), false) => {
            quote!(#hooks::__on_commit_with_labeled(#conn, #text, #hook))
        }
        (Kind::ConnClosure(closure), true) => return Err(syn::Error::new_spanned(
            &closure.inputs,
            "a `robust` hook takes no connection: write `on_commit!(conn, robust, move || ..)`, \
                 or drop `robust` to register an `on_commit_with` hook",
        )),
        (Kind::Path, false) => quote!(#krate::__private::on_commit_path(#conn, #text, #hook)),
        (Kind::Expr, false) => quote!(#hooks::__on_commit_labeled(#conn, #text, move || #hook)),
        (Kind::Expr, true) => {
            quote!(#hooks::__on_commit_robust_labeled(#conn, #text, move || #hook))
        }
        (Kind::AsyncBlock, false) => {
            quote!(#async_hooks::__on_commit_async_labeled(#conn, #text, #hook))
        }
        (Kind::Awaits, false) => {
            quote!(#async_hooks::__on_commit_async_labeled(#conn, #text, async move { #hook }))
        }
        (Kind::AsyncNoArgClosure, false) => {
            // Called inside the block: its future borrows the closure.
            quote!(#async_hooks::__on_commit_async_labeled(#conn, #text, async move {
                let hook = #hook;
                hook().await
            }))
        }
        (Kind::AsyncConnClosure, false) => {
            quote!(#async_hooks::__on_commit_with_async_labeled(#conn, #text, #hook))
        }
        (
            Kind::AsyncBlock | Kind::Awaits | Kind::AsyncNoArgClosure | Kind::AsyncConnClosure,
            true,
        ) => {
            return Err(syn::Error::new_spanned(
                hook,
                "`robust` is for sync hooks: drop `robust` (an async hook's panic does not \
                 stop the other hooks; `set_hook_panics(HookPanics::Log)` keeps it from being \
                 resumed), or catch the panic inside the hook",
            ))
        }
    })
}

/// The expression's text, whitespace collapsed, cut to [`LABEL_MAX`]
/// characters with an ellipsis.
fn label_text(tokens: &TokenStream) -> String {
    // `TokenStream::to_string` spaces tokens its own way
    // (`Err ::< (), _ > (e)`); the source text reads as the user wrote it.
    let text = source_text(tokens).unwrap_or_else(|| tokens.to_string());
    shorten(&text)
}

/// The tokens' text as written, one space where the source had any: the
/// text of each token tree (a group's covers all of it), joined by their
/// positions. `None` where the compiler does not tell (before Rust 1.88,
/// or tokens made by another macro).
fn source_text(tokens: &TokenStream) -> Option<String> {
    let mut text = String::new();
    let mut previous_end: Option<LineColumn> = None;
    for tree in tokens.clone() {
        if matches!(&tree, TokenTree::Group(g) if g.delimiter() == Delimiter::None) {
            return None;
        }
        let span = tree.span();
        let (start, end) = (span.start(), span.end());
        if start.line == 0 {
            return None;
        }
        if previous_end.is_some_and(|previous| previous != start) {
            text.push(' ');
        }
        text.push_str(&span.source_text()?);
        previous_end = Some(end);
    }
    Some(text)
}

fn shorten(text: &str) -> String {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() <= LABEL_MAX {
        return text;
    }
    let mut short: String = text.chars().take(LABEL_MAX - 1).collect();
    short.truncate(short.trim_end().len());
    short.push('…');
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_and_whitespace_collapsed() {
        assert_eq!(shorten("send( id )"), "send( id )");
        assert_eq!(shorten("a\n    b\tc"), "a b c");
    }

    #[test]
    fn long_text_is_cut_with_an_ellipsis() {
        let long = "x".repeat(100);
        let short = shorten(&long);
        assert_eq!(short.chars().count(), LABEL_MAX);
        assert!(short.ends_with('…'));
        let exact = "y".repeat(LABEL_MAX);
        assert_eq!(shorten(&exact), exact);
    }

    #[test]
    fn cutting_respects_char_boundaries() {
        let long = "é".repeat(100);
        assert_eq!(shorten(&long).chars().count(), LABEL_MAX);
    }
}
