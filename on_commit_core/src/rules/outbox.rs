//! Outbox rows in the hook queue (O1, O2, O11): counted, so that a commit
//! without any skips the flush; taken out at the flush; rule 2's policy
//! outside a transaction; and what a capture records of them.

use crate::outbox::CapturedOutbox;
use crate::rules::label::HookLabel;
use crate::rules::levels::HookState;
use crate::rules::placement::OutsideTransaction;
use crate::rules::queue::{Entry, QueuedHook};

impl<H: QueuedHook> HookState<H> {
    /// How many outbox rows the open transaction holds (all levels).
    #[inline]
    pub(crate) fn outbox_rows(&self) -> usize {
        self.queue.outbox_len()
    }

    /// Queues an outbox row at `level` (rule 1): it moves and is discarded
    /// with its level like any hook (rules 3, 4).
    pub(crate) fn queue_outbox_at(&mut self, level: u32, entry: Entry<H>) {
        self.queue.push_outbox(level, entry);
    }

    /// Takes the queued outbox rows out for the flush, in registration order.
    pub(crate) fn take_outbox(&mut self) -> Vec<Entry<H>> {
        self.queue.take_outbox()
    }

    /// Rule 2's policy for an outbox row registered at `d == 0` (O2):
    /// `Panic` panics, `WarnAndRun` warns, `Run` says nothing; a running
    /// `on_commit`-kind hook's registrations are exempt.
    pub(crate) fn outbox_outside_policy(&self, label: HookLabel) {
        if self.running_commit_hooks > 0 {
            return;
        }
        match self.outside {
            OutsideTransaction::Run => {}
            OutsideTransaction::WarnAndRun => tracing::warn!(
                hook = %label,
                "on_commit_outbox hook {label} registered outside a transaction: \
                 its row is written at once, in its own autocommitted INSERT"
            ),
            OutsideTransaction::Panic => panic!(
                "on_commit_outbox hook {label} registered outside a transaction \
                 (OutsideTransaction::Panic): open a transaction first"
            ),
        }
    }

    /// Whether a capture is open: the flush then reports what it wrote.
    #[inline]
    pub(crate) fn capture_open(&self) -> bool {
        self.capture.is_some()
    }

    /// Rows that were written and committed while a capture is open (O11).
    pub(crate) fn capture_outbox(&mut self, rows: Vec<CapturedOutbox>) {
        if let Some(capture) = &mut self.capture {
            capture.outbox.extend(rows);
        }
    }

    /// The rows the open capture recorded; call before closing it.
    pub(crate) fn take_captured_outbox(&mut self) -> Vec<CapturedOutbox> {
        self.capture
            .as_mut()
            .map(|capture| std::mem::take(&mut capture.outbox))
            .unwrap_or_default()
    }
}
