//! The counters of `HookState` that go up and down around a scope (rule 2's
//! exemption while hooks run, rule 6's "never resume" while a panic is
//! handled): changed only through a scoped guard, or a `raise`/`lower` pair
//! held by a guard of its own (the async wrapper's hook runs), so every
//! scope that raises one lowers it, also on unwinding or a dropped future.

use std::ops::{Deref, DerefMut};

use crate::rules::levels::HookState;
use crate::rules::queue::QueuedHook;

/// The counters of [`HookState`] that are raised around a scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counter {
    /// `on_commit`-kind hooks are running (rule 2's exemption).
    CommitHooksRunning,
    /// A panic of the transaction body is being handled (rule 6).
    Unwinding,
}

/// A wrapper whose [`HookState`] a [`Raised`] guard can reach.
pub(crate) trait HasHookState {
    /// The wrapper's hook type.
    type Hook: QueuedHook;
    /// The wrapper's state.
    fn hook_state(&mut self) -> &mut HookState<Self::Hook>;
}

/// A counter raised for as long as this guard lives, lowered when it goes
/// (also by unwinding, or when an async wrapper's future is dropped). It
/// derefs to the wrapper, so the scope keeps using the connection.
pub(crate) struct Raised<'a, W: HasHookState> {
    conn: &'a mut W,
    counter: Counter,
}

impl<'a, W: HasHookState> Raised<'a, W> {
    pub(crate) fn new(conn: &'a mut W, counter: Counter) -> Self {
        *conn.hook_state().counter_mut(counter) += 1;
        Self { conn, counter }
    }
}

impl<W: HasHookState> Deref for Raised<'_, W> {
    type Target = W;
    fn deref(&self) -> &W {
        self.conn
    }
}

impl<W: HasHookState> DerefMut for Raised<'_, W> {
    fn deref_mut(&mut self) -> &mut W {
        self.conn
    }
}

impl<W: HasHookState> Drop for Raised<'_, W> {
    fn drop(&mut self) {
        *self.conn.hook_state().counter_mut(self.counter) -= 1;
    }
}

impl<H: QueuedHook> HookState<H> {
    fn counter_mut(&mut self, counter: Counter) -> &mut u32 {
        match counter {
            Counter::CommitHooksRunning => &mut self.running_commit_hooks,
            Counter::Unwinding => &mut self.unwinding,
        }
    }

    #[cfg(feature = "async")]
    /// Raises a counter until [`lower`](Self::lower): for guards that hold
    /// the connection themselves (the async wrapper's hook runs).
    pub(crate) fn raise(&mut self, counter: Counter) {
        *self.counter_mut(counter) += 1;
    }

    #[cfg(feature = "async")]
    /// Lowers a counter [`raise`](Self::raise)d before.
    pub(crate) fn lower(&mut self, counter: Counter) {
        *self.counter_mut(counter) -= 1;
    }
}
