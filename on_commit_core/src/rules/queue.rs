//! The hook queue: levels, merge on release, discard on rollback, order
//! (rules 1, 3, 4, 13, 14).
//!
//! All queued hooks live in one `Vec`, in registration order. A hook
//! registered at user depth `d` belongs to level `d`; because a level can only
//! be entered after every deeper one was closed, the hooks of levels `>= k`
//! are always a suffix of that `Vec`. `starts` records where each level that
//! holds a hook begins, so every operation below is O(1) or touches only the
//! hooks it moves. A transaction that queues no hook never allocates: both
//! vectors stay empty.

use std::vec::Drain;

use crate::rules::failures::FirstPanic;
use crate::rules::label::HookLabel;

/// What the queue and the level rules (`levels.rs`) need to know of a hook.
/// The rules (levels, merge, discard, order, rule 2's placement, rule 9) are
/// written once, for any hook type: the sync wrapper's `Hook<C>` and the
/// async wrapper's `AsyncHook<C>`.
pub(crate) trait QueuedHook: Sized {
    /// The `on_commit`-kind hooks of this flavour (what a capture keeps).
    type Commit;
    /// `on_commit`, `on_rollback`, ...: for messages.
    fn kind(&self) -> &'static str;
    /// Whether this is a `before_commit` hook (they run at the outermost
    /// commit, before COMMIT, in order; rule 5.1).
    fn is_before_commit(&self) -> bool;
    /// Whether this is an `on_rollback`-kind hook.
    fn is_rollback(&self) -> bool;
    /// Whether this is an outbox row waiting for the flush (O1).
    #[cfg(feature = "outbox")]
    #[inline]
    fn is_outbox(&self) -> bool {
        false
    }
    /// Takes the hook out, leaving a spent marker in its queue slot.
    fn take(&mut self) -> Self;
    /// The `on_commit`-kind hook this is, or `self` back.
    fn into_commit(self) -> Result<Self::Commit, Self>;
    /// What the wrapper keeps for the hooks it runs later, beside the
    /// rules' state: `()` for the sync wrapper, which runs hooks at once.
    type Later;
    /// Its level rolled back (rule 4): an `on_rollback` hook runs now
    /// (sync, its panic recorded in `panics`) or is handed to `later` to be
    /// run afterwards, in order (async); any other hook is dropped.
    fn rolled_back(entry: Entry<Self>, later: &mut Self::Later, panics: &mut FirstPanic);
}

/// A hook and its label, as queued.
pub(crate) struct Entry<H> {
    pub(crate) label: HookLabel,
    pub(crate) hook: H,
}

/// Past this many queued hooks, the `Vec` is not kept for reuse after firing,
/// so a pooled connection does not hold a huge allocation forever.
const KEEP_CAPACITY: usize = 1024;

pub(crate) struct HookQueue<H> {
    entries: Vec<Entry<H>>,
    /// `(level, index of its first entry)`, strictly increasing in both; only
    /// levels that hold at least one entry appear.
    starts: Vec<(u32, usize)>,
    /// How many `before_commit` hooks are queued (so a commit without any
    /// skips looking for them).
    before_commit: usize,
    /// How many outbox rows are queued (so a commit without any skips the
    /// flush; O1). Only `push_outbox` raises it.
    #[cfg(feature = "outbox")]
    outbox: usize,
}

impl<H: QueuedHook> HookQueue<H> {
    pub(crate) const fn new() -> Self {
        Self {
            entries: Vec::new(),
            starts: Vec::new(),
            before_commit: 0,
            #[cfg(feature = "outbox")]
            outbox: 0,
        }
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends `entry` to level `level`. Every queued hook belongs to a level
    /// `<= level` (the caller passes the current user depth), so order is
    /// registration order within the level and across levels.
    // Inlined into every registration: it is the whole of a hook's
    // queueing cost (benches/, BENCHMARKS.md).
    #[inline(always)]
    pub(crate) fn push(&mut self, level: u32, entry: Entry<H>) {
        debug_assert!(level >= 1);
        match self.starts.last() {
            Some(&(last, _)) if last == level => {}
            last => {
                debug_assert!(last.is_none_or(|&(l, _)| l < level), "queue level order");
                self.starts.push((level, self.entries.len()));
            }
        }
        if entry.hook.is_before_commit() {
            self.before_commit += 1;
        }
        self.entries.push(entry);
    }

    /// Level `level` (`>= 2`) was released: its hooks become the last hooks
    /// of level `level - 1`, order kept. Nothing runs.
    pub(crate) fn release(&mut self, level: u32) {
        debug_assert!(level >= 2);
        let n = self.starts.len();
        match self.starts.last_mut() {
            Some(last) if last.0 == level => {
                if n >= 2 && self.starts[n - 2].0 == level - 1 {
                    self.starts.pop();
                } else {
                    self.starts[n - 1].0 = level - 1;
                }
            }
            _ => {}
        }
    }

    /// Removes the hooks of level `level` and of every level above it, in
    /// registration order: the caller runs the `on_rollback` ones among them
    /// and drops the rest (rule 4).
    pub(crate) fn take_from_level(&mut self, level: u32) -> Drain<'_, Entry<H>> {
        let mut from = self.entries.len();
        while let Some(&(l, start)) = self.starts.last() {
            if l < level {
                break;
            }
            from = start;
            self.starts.pop();
        }
        if self.before_commit > 0 {
            self.before_commit -= self.entries[from..]
                .iter()
                .filter(|e| e.hook.is_before_commit())
                .count();
        }
        #[cfg(feature = "outbox")]
        if self.outbox > 0 {
            self.outbox -= self.entries[from..]
                .iter()
                .filter(|e| e.hook.is_outbox())
                .count();
        }
        self.entries.drain(from..)
    }

    /// Whether a `before_commit` hook is queued.
    #[cfg(feature = "async")]
    #[inline]
    pub(crate) fn has_before_commit(&self) -> bool {
        self.before_commit > 0
    }

    /// Takes the next queued `before_commit` hook at or after `*cursor`,
    /// leaving the rest of the queue in place; hooks it registers are
    /// appended and are seen by later calls (rule 5.1).
    pub(crate) fn next_before_commit(&mut self, cursor: &mut usize) -> Option<Entry<H>> {
        if self.before_commit == 0 {
            return None;
        }
        while *cursor < self.entries.len() {
            let i = *cursor;
            *cursor += 1;
            if self.entries[i].hook.is_before_commit() {
                self.before_commit -= 1;
                let label = self.entries[i].label;
                let hook = self.entries[i].hook.take();
                return Some(Entry { label, hook });
            }
        }
        None
    }

    /// Takes every queued hook, for the outermost commit (all are level 1 by
    /// then). Hand the `Vec` back with [`HookQueue::recycle`] once it is
    /// drained, so the next transaction reuses its capacity.
    pub(crate) fn take_all(&mut self) -> Vec<Entry<H>> {
        self.starts.clear();
        self.before_commit = 0;
        #[cfg(feature = "outbox")]
        {
            self.outbox = 0;
        }
        std::mem::take(&mut self.entries)
    }

    /// Appends an outbox row (`entry.hook.is_outbox()`) to level `level`,
    /// counted, so the flush finds it (O1). A separate method, so that
    /// registering any other hook costs no extra test.
    #[cfg(feature = "outbox")]
    pub(crate) fn push_outbox(&mut self, level: u32, entry: Entry<H>) {
        debug_assert!(entry.hook.is_outbox());
        self.push(level, entry);
        self.outbox += 1;
    }

    /// How many outbox rows are queued.
    #[cfg(feature = "outbox")]
    #[inline]
    pub(crate) fn outbox_len(&self) -> usize {
        self.outbox
    }

    /// Takes every queued outbox row, in registration order, leaving spent
    /// markers in their slots (the flush, O1).
    #[cfg(feature = "outbox")]
    pub(crate) fn take_outbox(&mut self) -> Vec<Entry<H>> {
        let mut rows = Vec::with_capacity(self.outbox);
        if self.outbox > 0 {
            for entry in &mut self.entries {
                if entry.hook.is_outbox() {
                    rows.push(Entry {
                        label: entry.label,
                        hook: entry.hook.take(),
                    });
                }
            }
        }
        self.outbox = 0;
        rows
    }

    /// Gives back a drained `Vec` from [`HookQueue::take_all`] after `fired`
    /// hooks ran, so the next transaction reuses its capacity. A large
    /// buffer (past [`KEEP_CAPACITY`]) is kept only while transactions fill
    /// a quarter of it: a connection that keeps doing big transactions does
    /// not re-grow its queue each time, and one that did a single huge
    /// transaction gives the memory back at its next commit (rule 14).
    pub(crate) fn recycle(&mut self, mut spent: Vec<Entry<H>>, fired: usize) {
        spent.clear();
        let cap = spent.capacity();
        if self.entries.capacity() == 0 && (cap <= KEEP_CAPACITY || fired.saturating_mul(4) >= cap)
        {
            self.entries = spent;
        }
        if self.starts.is_empty() && self.starts.capacity() > 64 {
            self.starts = Vec::new();
        }
    }

    /// A commit with no hook: a large buffer left by an earlier transaction
    /// is given back (rule 14). One comparison in the common case.
    #[inline]
    pub(crate) fn release_idle_capacity(&mut self) {
        if self.entries.capacity() > KEEP_CAPACITY {
            self.entries = Vec::new();
            self.starts = Vec::new();
        }
    }
}
