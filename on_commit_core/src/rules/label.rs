//! A hook's label: where it was registered and what it is, for logs and
//! captures. Making one costs no allocation (rule 14).

use std::fmt;
use std::panic::Location;

/// The name of a hook in logs and captures: `file:line: text`.
///
/// The location is the registering call's (every registration method is
/// `#[track_caller]`); the text is the expression's source from
/// `on_commit!`, or [`std::any::type_name`] of a plain closure's type.
/// A label is two `&'static` references: making one costs no allocation.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct HookLabel {
    location: &'static Location<'static>,
    text: &'static str,
}

impl HookLabel {
    /// A label for a hook registered at `location` with the given text.
    pub const fn new(location: &'static Location<'static>, text: &'static str) -> Self {
        Self { location, text }
    }

    /// The source location of the registering call.
    pub fn location(&self) -> &'static Location<'static> {
        self.location
    }

    /// The text part: the expression given to `on_commit!`, or the closure's type name.
    pub fn text(&self) -> &'static str {
        self.text
    }
}

impl fmt::Display for HookLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}",
            self.location.file(),
            self.location.line(),
            self.text
        )
    }
}

impl fmt::Debug for HookLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
