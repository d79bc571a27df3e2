//! Capture (rule 12, Django's `captureOnCommitCallbacks`): the state of an
//! open capture, for either wrapper, and how an `on_commit`-kind hook about
//! to run passes through it.

use crate::rules::label::HookLabel;
use crate::rules::levels::HookState;
use crate::rules::queue::QueuedHook;

/// How [`HookedConnection::capture_on_commit`](crate::HookedConnection::capture_on_commit) treats the `on_commit`-kind
/// hooks that would run during its body.
///
/// ```
/// use diesel::prelude::*;
/// use diesel_on_commit::{Capture, HookedConnection};
/// use std::sync::mpsc;
///
/// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
/// let (tx, rx) = mpsc::channel();
/// // Execute: the hooks run as usual, and their labels are recorded.
/// let ((), hooks) = conn.capture_on_commit(Capture::Execute, |conn| {
///     conn.transaction::<_, diesel::result::Error, _>(|conn| {
///         conn.on_commit(move || tx.send("email"));
///         Ok(())
///     })
///     .unwrap();
/// });
/// assert_eq!(rx.try_recv(), Ok("email")); // already ran
/// assert_eq!(hooks.len(), 1);
/// hooks.run(&mut conn); // nothing left to run
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// Keep them without running them; [`CapturedHooks::run`](crate::CapturedHooks::run) runs them later.
    Collect,
    /// Run them when they normally would and record their labels (including
    /// hooks registered by hooks, each exactly once).
    Execute,
}

/// An open capture (rule 12), for either wrapper: `K` is its
/// `on_commit`-kind hook type.
pub(crate) struct CaptureState<K> {
    pub(crate) mode: Capture,
    pub(crate) labels: Vec<HookLabel>,
    pub(crate) hooks: Vec<K>,
    /// The outbox rows written while the capture is open (O11).
    #[cfg(feature = "outbox")]
    pub(crate) outbox: Vec<crate::outbox::CapturedOutbox>,
}

impl<K> CaptureState<K> {
    pub(crate) const fn new(mode: Capture) -> Self {
        Self {
            mode,
            labels: Vec::new(),
            hooks: Vec::new(),
            #[cfg(feature = "outbox")]
            outbox: Vec::new(),
        }
    }

    /// An `on_commit`-kind hook is about to run: record its label, and keep
    /// it (`None`) under [`Capture::Collect`] or hand it back to be run
    /// (`Some`) under [`Capture::Execute`].
    #[inline]
    pub(crate) fn capture(&mut self, label: HookLabel, hook: K) -> Option<K> {
        self.labels.push(label);
        match self.mode {
            Capture::Collect => {
                self.hooks.push(hook);
                None
            }
            Capture::Execute => Some(hook),
        }
    }
}

impl<H: QueuedHook> HookState<H> {
    /// Opens a capture (rule 12) at user depth `user_depth`.
    ///
    /// # Panics
    ///
    /// Inside a user transaction or inside another capture.
    pub(crate) fn open_capture(&mut self, mode: Capture, user_depth: u32) {
        assert!(
            user_depth == 0,
            "capture_on_commit must be called outside a transaction (a test transaction is fine)"
        );
        assert!(
            self.capture.is_none(),
            "capture_on_commit cannot be nested inside another capture_on_commit"
        );
        self.capture = Some(CaptureState::new(mode));
    }

    /// Closes the open capture: the labels in capture order and the hooks
    /// kept under [`Capture::Collect`] (none under `Execute`). A capture
    /// that is already closed yields nothing.
    pub(crate) fn close_capture(&mut self) -> (Vec<HookLabel>, Vec<H::Commit>) {
        self.capture
            .take()
            .map(|state| (state.labels, state.hooks))
            .unwrap_or_default()
    }

    /// Whether a capture is open.
    #[cfg(feature = "async")]
    #[inline]
    pub(crate) fn capturing(&self) -> bool {
        self.capture.is_some()
    }

    /// An `on_commit`-kind hook is about to run: with no capture open it is
    /// handed back; an open capture records its label and keeps it (`None`,
    /// [`Capture::Collect`]) or hands it back to run (`Capture::Execute`).
    #[inline]
    pub(crate) fn capture_or_pass(
        &mut self,
        label: HookLabel,
        hook: H::Commit,
    ) -> Option<H::Commit> {
        match &mut self.capture {
            Some(capture) => capture.capture(label, hook),
            None => Some(hook),
        }
    }
}
