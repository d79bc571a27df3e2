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
///
/// Labels come from [`CapturedHooks::labels`](crate::CapturedHooks::labels)
/// and appear in the wrapper's `tracing` events:
///
/// ```
/// use diesel::prelude::*;
/// use diesel_on_commit::{Capture, HookLabel, HookedConnection};
///
/// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
/// let ((), hooks) = conn.capture_on_commit(Capture::Collect, |conn| {
///     conn.transaction::<_, diesel::result::Error, _>(|conn| {
///         conn.on_commit(|| println!("email"));
///         Ok(())
///     })
///     .unwrap();
/// });
/// let label: HookLabel = hooks.labels()[0];
/// assert!(label.text().contains("{{closure}}")); // a closure's type name
/// let expected = format!("{}:{}: {}", label.location().file(), label.location().line(), label.text());
/// assert_eq!(label.to_string(), expected);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct HookLabel {
    location: &'static Location<'static>,
    text: &'static str,
}

impl HookLabel {
    /// A label for a hook registered at `location` with the given text.
    ///
    /// ```
    /// use diesel_on_commit::HookLabel;
    /// use std::panic::Location;
    ///
    /// let label = HookLabel::new(Location::caller(), "outbox.send(id)");
    /// assert_eq!(label.text(), "outbox.send(id)");
    /// assert_eq!(label.location().line(), line!() - 2);
    /// assert!(label.to_string().ends_with(": outbox.send(id)"));
    /// ```
    pub const fn new(location: &'static Location<'static>, text: &'static str) -> Self {
        Self { location, text }
    }

    /// The source location of the registering call.
    ///
    /// ```
    /// use diesel_on_commit::HookLabel;
    /// use std::panic::Location;
    ///
    /// let here = Location::caller();
    /// let label = HookLabel::new(here, "text");
    /// assert_eq!(label.location(), here);
    /// assert_eq!(label.location().file(), file!());
    /// ```
    pub fn location(&self) -> &'static Location<'static> {
        self.location
    }

    /// The text part: the expression given to `on_commit!`, or the closure's type name.
    ///
    /// ```
    /// use diesel_on_commit::HookLabel;
    /// use std::panic::Location;
    ///
    /// let label = HookLabel::new(Location::caller(), "publish(order_id)");
    /// assert_eq!(label.text(), "publish(order_id)");
    /// ```
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
