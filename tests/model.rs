//! Model-based property tests (RELIABILITY.md): random programs of
//! nested transactions, hooks of every kind (some failing, some panicking,
//! some registering more hooks or opening transactions), inserts, failing
//! statements, failing COMMITs (a deferred foreign key), test transactions
//! and captures run against `HookedConnection` on a real database AND
//! against a small pure reference model of the rules written below. The log of
//! everything that happened (which hooks ran, in what order; what every
//! `transaction()` returned or which panic left it; what every statement
//! did; how many hooks a capture took) and the rows in the database at the
//! end must be identical.
//!
//! Counts: `MODEL_CASES_SQLITE` (default 256), `MODEL_CASES_PG` and
//! `MODEL_CASES_MYSQL` (default 64). Failing seeds are kept in
//! `tests/model.proptest-regressions` and replayed first; divergences found
//! are also kept as the explicit `regression_*` tests at the end.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

use common::{panic_text, Log};
use diesel::connection::{Connection, SimpleConnection};
use diesel::prelude::*;
use diesel::query_builder::SqlQuery;
use diesel::query_dsl::methods::LoadQuery;
use diesel::result::Error;
use diesel_on_commit::{Capture, HookPanics, HookedConnection, OutsideTransaction};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};

// ---------------------------------------------------------------- programs

/// What a hook does at its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ret {
    Ok,
    Err,
    Panic,
}

/// How a transaction body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Commit,
    Err,
    Panic,
}

#[derive(Clone, Debug)]
enum Hook {
    OnCommit(Ret),
    Robust(Ret),
    /// `on_commit_with`: runs its steps at `d == 0`, then ends.
    With(Vec<Step>, Ret),
    Rollback(Ret),
    /// `before_commit`: runs its steps inside the transaction, then ends
    /// (`Err` vetoes the commit).
    Before(Vec<Step>, Ret),
}

#[derive(Clone, Debug)]
enum Step {
    /// INSERT a row; an error is propagated with `?`.
    Insert(u32),
    /// INSERT a row that violates a deferred foreign key: COMMIT fails.
    Orphan(u32),
    /// A statement that fails (duplicate key); the error is swallowed.
    Fail(u32),
    /// Register an outbox hook (feature `outbox`): its row exists at the
    /// end exactly when an INSERT in its place would (O1, O2); an error is
    /// propagated with `?`.
    Outbox(u32),
    /// Register a hook.
    Reg(u32, Hook),
    /// `conn.transaction(..)`: its `Err` is swallowed; its panic is caught
    /// right there when `catch`, else it unwinds the enclosing body.
    Tx {
        id: u32,
        body: Vec<Step>,
        end: End,
        catch: bool,
    },
}

/// A step at the top of the program (`d == 0`), each run under
/// `catch_unwind`.
#[derive(Clone, Debug)]
enum Top {
    Step(Step),
    /// `conn.test_transaction(|conn| ..)`.
    TestTx(Vec<Top>),
    /// `conn.capture_on_commit(..)`, then `CapturedHooks::run` or drop.
    Capture {
        collect: bool,
        body: Vec<Step>,
        run: bool,
    },
}

#[derive(Clone, Debug)]
struct Program {
    outside: OutsideTransaction,
    panics: HookPanics,
    /// `begin_test_transaction()` first: everything runs on that baseline.
    begin_test: bool,
    top: Vec<Top>,
}

/// Gives every step, hook and transaction a distinct id, in program order.
fn number(p: &mut Program) {
    fn steps(ss: &mut [Step], n: &mut u32) {
        for s in ss {
            *n += 1;
            match s {
                Step::Insert(id) | Step::Orphan(id) | Step::Fail(id) | Step::Outbox(id) => *id = *n,
                Step::Reg(id, h) => {
                    *id = *n;
                    if let Hook::With(body, _) | Hook::Before(body, _) = h {
                        steps(body, n);
                    }
                }
                Step::Tx { id, body, .. } => {
                    *id = *n;
                    steps(body, n);
                }
            }
        }
    }
    fn tops(ts: &mut [Top], n: &mut u32) {
        for t in ts {
            match t {
                Top::Step(s) => steps(std::slice::from_mut(s), n),
                Top::TestTx(items) => tops(items, n),
                Top::Capture { body, .. } => steps(body, n),
            }
        }
    }
    let mut n = 0;
    tops(&mut p.top, &mut n);
}

// -------------------------------------------------------------- generation

#[derive(Clone, Copy)]
struct Gen {
    /// Deferred foreign keys exist (not on MySQL/InnoDB, which checks at once).
    orphans: bool,
}

fn ret() -> impl Strategy<Value = Ret> + Clone {
    prop_oneof![6 => Just(Ret::Ok), 2 => Just(Ret::Err), 1 => Just(Ret::Panic)]
}

fn end() -> impl Strategy<Value = End> + Clone {
    prop_oneof![5 => Just(End::Commit), 2 => Just(End::Err), 1 => Just(End::Panic)]
}

/// A hook to register; `in_tx` as for [`step`] (at `d == 0`, `on_rollback`
/// and `before_commit` are mostly pointless, so rarer).
fn hook(g: Gen, depth: u32, in_tx: bool) -> BoxedStrategy<Hook> {
    let with_body = if depth > 0 {
        steps(g, depth - 1, false)
    } else {
        Just(vec![]).boxed()
    };
    let before_body = if depth > 0 {
        steps(g, depth - 1, true)
    } else {
        Just(vec![]).boxed()
    };
    let (rollback, before) = if in_tx { (3, 2) } else { (1, 1) };
    prop_oneof![
        4 => ret().prop_map(Hook::OnCommit),
        1 => ret().prop_map(Hook::Robust),
        2 => (with_body, ret()).prop_map(|(b, r)| Hook::With(b, r)),
        rollback => ret().prop_map(Hook::Rollback),
        before => (before_body, ret()).prop_map(|(b, r)| Hook::Before(b, r)),
    ]
    .boxed()
}

/// A step; `in_tx`: the context is inside a transaction (`d >= 1`), where
/// failing statements and orphans may be generated.
fn step(g: Gen, depth: u32, in_tx: bool) -> BoxedStrategy<Step> {
    let (insert, reg, tx) = if in_tx { (3, 7, 3) } else { (2, 3, 6) };
    let mut options: Vec<(u32, BoxedStrategy<Step>)> = vec![
        (insert, Just(Step::Insert(0)).boxed()),
        (
            reg,
            hook(g, depth, in_tx).prop_map(|h| Step::Reg(0, h)).boxed(),
        ),
    ];
    if cfg!(feature = "outbox") {
        options.push((2, Just(Step::Outbox(0)).boxed()));
    }
    if in_tx {
        options.push((1, Just(Step::Fail(0)).boxed()));
        if g.orphans {
            options.push((1, Just(Step::Orphan(0)).boxed()));
        }
    }
    if depth > 0 {
        options.push((
            tx,
            (steps(g, depth - 1, true), end(), prop::bool::weighted(0.3))
                .prop_map(|(body, end, catch)| Step::Tx {
                    id: 0,
                    body,
                    end,
                    catch,
                })
                .boxed(),
        ));
    }
    proptest::strategy::Union::new_weighted(options).boxed()
}

fn steps(g: Gen, depth: u32, in_tx: bool) -> BoxedStrategy<Vec<Step>> {
    prop::collection::vec(step(g, depth, in_tx), 0..6).boxed()
}

fn top(g: Gen, in_test: bool) -> BoxedStrategy<Top> {
    let mut options: Vec<(u32, BoxedStrategy<Top>)> = vec![
        (8, step(g, 3, false).prop_map(Top::Step).boxed()),
        (
            1,
            (any::<bool>(), steps(g, 3, false), prop::bool::weighted(0.7))
                .prop_map(|(collect, body, run)| Top::Capture { collect, body, run })
                .boxed(),
        ),
    ];
    if !in_test {
        options.push((
            1,
            prop::collection::vec(top(g, true), 0..4)
                .prop_map(Top::TestTx)
                .boxed(),
        ));
    }
    proptest::strategy::Union::new_weighted(options).boxed()
}

fn program(g: Gen) -> BoxedStrategy<Program> {
    let outside = prop_oneof![
        3 => Just(OutsideTransaction::Run),
        1 => Just(OutsideTransaction::WarnAndRun),
        1 => Just(OutsideTransaction::Panic),
    ];
    let panics = prop_oneof![2 => Just(HookPanics::Resume), 1 => Just(HookPanics::Log)];
    (outside, panics, prop::bool::weighted(0.2))
        .prop_flat_map(move |(outside, panics, begin_test)| {
            prop::collection::vec(top(g, begin_test), 1..8).prop_map(move |top| {
                let mut p = Program {
                    outside,
                    panics,
                    begin_test,
                    top,
                };
                number(&mut p);
                p
            })
        })
        .boxed()
}

// ------------------------------------------------------- the reference model

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Pg,
    Mysql,
}

/// A row: `('r', id)` in the rows table, `('c', id)` in the child table.
type Row = (char, u32);

/// An exception in the model: a returned error (its kind) or a panic.
#[derive(Debug)]
enum Exc {
    Err(String),
    Panic(String),
}

type Flow = Result<(), Exc>;

struct QEntry {
    level: u32,
    id: u32,
    hook: Hook,
    spent: bool,
}

struct Cap {
    collect: bool,
    count: usize,
    hooks: Vec<(u32, Hook)>,
}

/// The rules as a pure interpreter: no database, no real panics.
struct Model {
    backend: Backend,
    outside: OutsideTransaction,
    panics: HookPanics,
    /// User levels open (`d`).
    levels: u32,
    /// A test transaction is the baseline (rule 11).
    baseline: bool,
    /// Every queued hook, in registration order, with its level (rule 1).
    queue: Vec<QEntry>,
    /// Rows written by open levels.
    pending: Vec<(u32, Row)>,
    durable: Vec<Row>,
    /// Rows committed onto the test transaction: gone when it ends.
    test_rows: Vec<Row>,
    /// PostgreSQL: the level whose statement failed; the transaction is
    /// aborted until that level is rolled back.
    aborted: Option<u32>,
    /// The first database error in the open user transaction (rule 5.3).
    cause: Option<(u32, String)>,
    /// Above 0 while on_commit-kind hooks run (rule 2's exemption).
    running: u32,
    /// Above 0 while a panic is being handled (rule 6: rollback-hook
    /// panics are only logged then).
    unwinding: u32,
    capture: Option<Cap>,
    log: Vec<String>,
}

impl Model {
    fn new(backend: Backend, p: &Program) -> Self {
        Self {
            backend,
            outside: p.outside,
            panics: p.panics,
            levels: 0,
            baseline: p.begin_test,
            queue: Vec::new(),
            pending: Vec::new(),
            durable: vec![('r', 0)],
            test_rows: Vec::new(),
            aborted: None,
            cause: None,
            running: 0,
            unwinding: 0,
            capture: None,
            log: Vec::new(),
        }
    }

    fn run(mut self, p: &Program) -> (Vec<String>, Vec<Row>) {
        for t in &p.top {
            self.top(t);
        }
        let mut rows = self.durable;
        rows.extend(self.test_rows);
        rows.sort();
        (self.log, rows)
    }

    fn caught(&mut self, r: Flow) {
        match r {
            Ok(()) => {}
            Err(Exc::Err(k)) => self.log.push(format!("top=err:{k}")),
            Err(Exc::Panic(p)) => self.log.push(format!("top=panic:{p}")),
        }
    }

    fn top(&mut self, t: &Top) {
        match t {
            Top::Step(s) => {
                let r = self.step(s);
                self.caught(r);
            }
            Top::TestTx(items) => {
                self.baseline = true;
                for it in items {
                    self.top(it);
                }
                self.baseline = false;
                self.test_rows.clear();
            }
            Top::Capture { collect, body, run } => {
                self.capture = Some(Cap {
                    collect: *collect,
                    count: 0,
                    hooks: Vec::new(),
                });
                for s in body {
                    let r = self.step(s);
                    self.caught(r);
                }
                let cap = self.capture.take().unwrap();
                self.log.push(format!("cap={}", cap.count));
                if *run {
                    let first = self.run_commit_hooks(cap.hooks);
                    if let Err(Exc::Panic(p)) = self.finish(first, false) {
                        self.log.push(format!("run=panic:{p}"));
                    }
                }
            }
        }
    }

    fn steps(&mut self, ss: &[Step]) -> Flow {
        for s in ss {
            self.step(s)?;
        }
        Ok(())
    }

    /// One statement: its outcome, and what the wrapper records of it.
    fn sql(&mut self, row: Option<Row>) -> Result<(), String> {
        if self.backend == Backend::Pg && self.aborted.is_some() {
            self.observe("Unknown");
            return Err("Unknown".into());
        }
        match row {
            None => {
                // Diesel's MySQL `batch_execute` reports every server error
                // as `Unknown`; the others name the duplicate key.
                let kind = if self.backend == Backend::Mysql {
                    "Unknown"
                } else {
                    "UniqueViolation"
                };
                self.observe(kind);
                if self.backend == Backend::Pg && self.levels >= 1 {
                    self.aborted = Some(self.levels);
                }
                Err(kind.into())
            }
            Some(row) => {
                if self.levels >= 1 {
                    self.pending.push((self.levels, row));
                } else if self.baseline {
                    self.test_rows.push(row);
                } else {
                    self.durable.push(row);
                }
                Ok(())
            }
        }
    }

    fn observe(&mut self, kind: &str) {
        if self.levels > 0 && self.cause.is_none() {
            self.cause = Some((self.levels, kind.to_owned()));
        }
    }

    fn step(&mut self, s: &Step) -> Flow {
        match s {
            Step::Insert(id) | Step::Orphan(id) => {
                let (tag, t) = if matches!(s, Step::Insert(_)) {
                    ('i', 'r')
                } else {
                    ('o', 'c')
                };
                match self.sql(Some((t, *id))) {
                    Ok(()) => {
                        self.log.push(format!("{tag}{id}=ok"));
                        Ok(())
                    }
                    Err(k) => {
                        self.log.push(format!("{tag}{id}=err:{k}"));
                        Err(Exc::Err(k))
                    }
                }
            }
            Step::Outbox(id) => {
                // No I/O at the call inside a transaction (O1): the row is
                // queued with its level, so it shares an INSERT's fate but
                // never fails here, even in an aborted transaction.
                let row = ('x', *id);
                if self.levels >= 1 {
                    self.pending.push((self.levels, row));
                } else if self.running == 0 && self.outside == OutsideTransaction::Panic {
                    return Err(Exc::Panic("outside".into()));
                } else if self.baseline {
                    self.test_rows.push(row);
                } else {
                    self.durable.push(row);
                }
                self.log.push(format!("x{id}=ok"));
                Ok(())
            }
            Step::Fail(id) => {
                let k = self.sql(None).unwrap_err();
                self.log.push(format!("f{id}=err:{k}"));
                Ok(())
            }
            Step::Reg(id, h) => self.register(*id, h),
            Step::Tx {
                id,
                body,
                end,
                catch,
            } => {
                match self.tx(*id, body, *end) {
                    Ok(()) => self.log.push(format!("t{id}=ok")),
                    Err(Exc::Err(k)) => self.log.push(format!("t{id}=err:{k}")),
                    Err(Exc::Panic(p)) if *catch => self.log.push(format!("t{id}=panic:{p}")),
                    Err(panic) => return Err(panic),
                }
                Ok(())
            }
        }
    }

    /// Rules 1 and 2.
    fn register(&mut self, id: u32, h: &Hook) -> Flow {
        if self.levels >= 1 {
            self.queue.push(QEntry {
                level: self.levels,
                id,
                hook: h.clone(),
                spent: false,
            });
            return Ok(());
        }
        match h {
            Hook::OnCommit(_) | Hook::Robust(_) | Hook::With(..) => {
                if self.running == 0 && self.outside == OutsideTransaction::Panic {
                    return Err(Exc::Panic("outside".into()));
                }
                let first = self.run_commit_hooks(vec![(id, h.clone())]);
                self.finish(first, false)
            }
            Hook::Rollback(_) => match self.outside {
                OutsideTransaction::Panic => Err(Exc::Panic("outside".into())),
                _ => Ok(()),
            },
            Hook::Before(..) => Err(Exc::Panic("veto".into())),
        }
    }

    fn run_commit_hooks(&mut self, hooks: Vec<(u32, Hook)>) -> Option<String> {
        let mut first = None;
        self.running += 1;
        for (id, h) in hooks {
            self.dispatch(id, h, &mut first);
        }
        self.running -= 1;
        first
    }

    /// Runs one on_commit-kind hook, or captures it (rule 12).
    fn dispatch(&mut self, id: u32, h: Hook, first: &mut Option<String>) {
        if let Some(cap) = &mut self.capture {
            cap.count += 1;
            if cap.collect {
                cap.hooks.push((id, h));
                return;
            }
        }
        self.log.push(format!("h{id}"));
        let panic = match h {
            Hook::OnCommit(r) => (r == Ret::Panic).then(|| format!("h{id}")),
            Hook::Robust(_) => None,
            Hook::With(body, r) => match self.steps(&body) {
                Ok(()) => (r == Ret::Panic).then(|| format!("h{id}")),
                Err(Exc::Err(_)) => None,
                Err(Exc::Panic(p)) => Some(p),
            },
            Hook::Rollback(_) | Hook::Before(..) => unreachable!(),
        };
        if first.is_none() {
            *first = panic;
        }
    }

    /// Rule 6: the first panic of a batch, resumed or only logged.
    fn finish(&self, first: Option<String>, never_resume: bool) -> Flow {
        match first {
            Some(p) if self.panics == HookPanics::Resume && !never_resume => Err(Exc::Panic(p)),
            _ => Ok(()),
        }
    }

    fn tx(&mut self, id: u32, body: &[Step], end: End) -> Flow {
        if self.backend == Backend::Pg && self.aborted.is_some() {
            // SAVEPOINT in an aborted transaction fails; nothing opens.
            return Err(Exc::Err("Unknown".into()));
        }
        self.levels += 1;
        if self.levels == 1 {
            self.cause = None;
        }
        let level = self.levels;
        let r = self.steps(body).and_then(|()| match end {
            End::Commit => Ok(()),
            End::Err => Err(Exc::Err("RollbackTransaction".into())),
            End::Panic => Err(Exc::Panic(format!("b{id}"))),
        });
        match r {
            Ok(()) => self.commit(level),
            Err(Exc::Err(k)) => {
                self.rollback(level)?;
                Err(Exc::Err(k))
            }
            Err(Exc::Panic(p)) => {
                self.unwinding += 1;
                let _ = self.rollback(level);
                self.unwinding -= 1;
                Err(Exc::Panic(p))
            }
        }
    }

    /// Rule 4: the innermost level `level` rolled back.
    fn rollback(&mut self, level: u32) -> Flow {
        assert_eq!(
            level, self.levels,
            "model: only the innermost level rolls back"
        );
        self.levels -= 1;
        if matches!(self.cause, Some((l, _)) if l >= level) {
            self.cause = None;
        }
        if matches!(self.aborted, Some(a) if a >= level) {
            self.aborted = None;
        }
        self.pending.retain(|(l, _)| *l < level);
        let split = self
            .queue
            .iter()
            .position(|e| e.level >= level)
            .unwrap_or(self.queue.len());
        let gone: Vec<QEntry> = self.queue.drain(split..).collect();
        let mut first = None;
        for e in gone {
            if let Hook::Rollback(r) = e.hook {
                self.log.push(format!("h{}", e.id));
                if r == Ret::Panic && first.is_none() {
                    first = Some(format!("h{}", e.id));
                }
            }
        }
        self.finish(first, self.unwinding > 0)
    }

    /// Rules 3 and 5.
    fn commit(&mut self, level: u32) -> Flow {
        if level == 1 {
            let mut i = 0;
            while i < self.queue.len() {
                if matches!(self.queue[i].hook, Hook::Before(..)) && !self.queue[i].spent {
                    self.queue[i].spent = true;
                    let id = self.queue[i].id;
                    let Hook::Before(body, r) = self.queue[i].hook.clone() else {
                        unreachable!()
                    };
                    self.log.push(format!("h{id}"));
                    let res = self.steps(&body).and_then(|()| match r {
                        Ret::Ok => Ok(()),
                        Ret::Err => Err(Exc::Err("NotFound".into())),
                        Ret::Panic => Err(Exc::Panic(format!("h{id}"))),
                    });
                    match res {
                        Ok(()) => {}
                        Err(Exc::Err(k)) => {
                            self.rollback(self.levels)?;
                            return Err(Exc::Err(k));
                        }
                        Err(Exc::Panic(p)) => {
                            self.unwinding += 1;
                            let _ = self.rollback(self.levels);
                            self.unwinding -= 1;
                            return Err(Exc::Panic(p));
                        }
                    }
                }
                i += 1;
            }
        }
        if self.backend == Backend::Pg && self.aborted.is_some() {
            // Rule 5.3: the database aborted it; roll back, return the cause.
            let k = self
                .cause
                .take()
                .map_or_else(|| "Unknown".to_owned(), |c| c.1);
            self.rollback(self.levels)?;
            return Err(Exc::Err(k));
        }
        if level == 1 {
            if !self.baseline && self.pending.iter().any(|(_, r)| r.0 == 'c') {
                // The deferred foreign key fails the real COMMIT (rule 5.3).
                self.rollback(1)?;
                return Err(Exc::Err("ForeignKeyViolation".into()));
            }
            self.levels = 0;
            self.cause = None;
            let rows = self.pending.drain(..).map(|(_, r)| r);
            if self.baseline {
                self.test_rows.extend(rows);
            } else {
                self.durable.extend(rows);
            }
            let hooks = std::mem::take(&mut self.queue)
                .into_iter()
                .filter(|e| matches!(e.hook, Hook::OnCommit(_) | Hook::Robust(_) | Hook::With(..)))
                .map(|e| (e.id, e.hook))
                .collect();
            let first = self.run_commit_hooks(hooks);
            self.finish(first, false)
        } else {
            self.levels -= 1;
            for e in &mut self.queue {
                if e.level == level {
                    e.level = level - 1;
                }
            }
            for (l, _) in &mut self.pending {
                if *l == level {
                    *l = level - 1;
                }
            }
            if let Some((l, _)) = &mut self.cause {
                *l = (*l).min(level - 1);
            }
            Ok(())
        }
    }
}

// --------------------------------------------------- the real implementation

/// Where the real run writes.
#[derive(Clone)]
struct Cx {
    log: Log,
    rows: &'static str,
    child: &'static str,
    /// Registers the outbox hook of `Step::Outbox` on the wrapper (given
    /// as `dyn Any`: `run_step` knows no backend), and reads the outbox
    /// rows' ids back (feature `outbox`).
    outbox: OutboxFns,
}

type OutboxFns = (
    fn(&mut dyn std::any::Any, u32) -> Result<(), Error>,
    fn(&mut dyn std::any::Any) -> Vec<u32>,
);

/// The payload of `Step::Outbox`.
#[cfg(feature = "outbox")]
#[derive(serde::Serialize, serde::Deserialize)]
struct ModelJob {
    id: u32,
}

#[cfg(feature = "outbox")]
impl diesel_on_commit::outbox::OutboxHook for ModelJob {
    const KIND: &'static str = "model.job";
}

#[cfg(feature = "outbox")]
fn outbox_fns<C>() -> OutboxFns
where
    C: Connection + diesel::connection::LoadConnection + 'static,
    C::Backend: diesel_on_commit::outbox::OutboxBackend,
{
    fn register<C>(conn: &mut dyn std::any::Any, id: u32) -> Result<(), Error>
    where
        C: Connection + 'static,
        C::Backend: diesel_on_commit::outbox::OutboxBackend,
    {
        let conn = conn.downcast_mut::<HookedConnection<C>>().unwrap();
        conn.on_commit_outbox(ModelJob { id }).map(drop)
    }
    fn ids<C>(conn: &mut dyn std::any::Any) -> Vec<u32>
    where
        C: Connection + diesel::connection::LoadConnection + 'static,
        C::Backend: diesel_on_commit::outbox::OutboxBackend,
    {
        let conn = conn.downcast_mut::<HookedConnection<C>>().unwrap();
        diesel_on_commit::outbox::OutboxAdmin::rows(conn)
            .unwrap()
            .iter()
            .map(|r| serde_json::from_str::<ModelJob>(&r.payload).unwrap().id)
            .collect()
    }
    (register::<C>, ids::<C>)
}

#[cfg(not(feature = "outbox"))]
#[allow(clippy::extra_unused_type_parameters)] // the same call as with the feature
fn outbox_fns<C>() -> OutboxFns {
    fn register(_: &mut dyn std::any::Any, _: u32) -> Result<(), Error> {
        unreachable!("Step::Outbox is generated only with the outbox feature")
    }
    fn ids(_: &mut dyn std::any::Any) -> Vec<u32> {
        Vec::new()
    }
    (register, ids)
}

fn kind(e: &Error) -> String {
    match e {
        Error::DatabaseError(k, _) => format!("{k:?}"),
        Error::RollbackTransaction => "RollbackTransaction".into(),
        Error::NotFound => "NotFound".into(),
        other => format!("{other:?}"),
    }
}

/// A panic's message, as the model names it.
fn class(payload: &(dyn std::any::Any + Send)) -> String {
    let msg = panic_text(payload);
    let ours = msg.len() > 1
        && (msg.starts_with('h') || msg.starts_with('b'))
        && msg[1..].bytes().all(|b| b.is_ascii_digit());
    if ours {
        msg
    } else if msg.contains("nothing to veto") {
        "veto".into()
    } else if msg.contains("outside a transaction") {
        "outside".into()
    } else {
        format!("other:{msg}")
    }
}

fn ret_plain(r: Ret, id: u32) -> Result<(), String> {
    match r {
        Ret::Ok => Ok(()),
        Ret::Err => Err(format!("hook {id} failed")),
        Ret::Panic => panic!("h{id}"),
    }
}

fn ret_db(r: Ret, id: u32) -> Result<(), Error> {
    match r {
        Ret::Ok => Ok(()),
        Ret::Err => Err(Error::NotFound),
        Ret::Panic => panic!("h{id}"),
    }
}

fn run_steps<C: Connection + 'static>(
    conn: &mut HookedConnection<C>,
    ss: &[Step],
    cx: &Cx,
) -> Result<(), Error> {
    for s in ss {
        run_step(conn, s, cx)?;
    }
    Ok(())
}

fn run_step<C: Connection + 'static>(
    conn: &mut HookedConnection<C>,
    s: &Step,
    cx: &Cx,
) -> Result<(), Error> {
    match s {
        Step::Insert(id) | Step::Orphan(id) => {
            let (tag, sql) = match s {
                Step::Insert(_) => ('i', format!("INSERT INTO {} (id) VALUES ({id})", cx.rows)),
                _ => (
                    'o',
                    format!("INSERT INTO {} (id, parent_id) VALUES ({id}, 1)", cx.child),
                ),
            };
            let r = conn.batch_execute(&sql);
            cx.log.push(match &r {
                Ok(()) => format!("{tag}{id}=ok"),
                Err(e) => format!("{tag}{id}=err:{}", kind(e)),
            });
            r
        }
        Step::Outbox(id) => {
            let r = (cx.outbox.0)(conn as &mut dyn std::any::Any, *id);
            cx.log.push(match &r {
                Ok(()) => format!("x{id}=ok"),
                Err(e) => format!("x{id}=err:{}", kind(e)),
            });
            r
        }
        Step::Fail(id) => {
            let r = conn.batch_execute(&format!("INSERT INTO {} (id) VALUES (0)", cx.rows));
            cx.log.push(match &r {
                Ok(()) => format!("f{id}=ok"),
                Err(e) => format!("f{id}=err:{}", kind(e)),
            });
            Ok(())
        }
        Step::Reg(id, h) => {
            register(conn, *id, h.clone(), cx);
            Ok(())
        }
        Step::Tx {
            id,
            body,
            end,
            catch,
        } => {
            let id = *id;
            let end = *end;
            let run = |conn: &mut HookedConnection<C>| {
                conn.transaction(|conn| -> Result<(), Error> {
                    run_steps(conn, body, cx)?;
                    match end {
                        End::Commit => Ok(()),
                        End::Err => Err(Error::RollbackTransaction),
                        End::Panic => panic!("b{id}"),
                    }
                })
            };
            let r = if *catch {
                match catch_unwind(AssertUnwindSafe(|| run(conn))) {
                    Ok(r) => r,
                    Err(p) => {
                        cx.log.push(format!("t{id}=panic:{}", class(&*p)));
                        return Ok(());
                    }
                }
            } else {
                run(conn)
            };
            cx.log.push(match &r {
                Ok(()) => format!("t{id}=ok"),
                Err(e) => format!("t{id}=err:{}", kind(e)),
            });
            Ok(())
        }
    }
}

fn register<C: Connection + 'static>(conn: &mut HookedConnection<C>, id: u32, h: Hook, cx: &Cx) {
    let log = cx.log.clone();
    match h {
        Hook::OnCommit(r) => conn.on_commit(move || {
            log.push(format!("h{id}"));
            ret_plain(r, id)
        }),
        Hook::Robust(r) => conn.on_commit_robust(move || {
            log.push(format!("h{id}"));
            ret_plain(r, id)
        }),
        Hook::Rollback(r) => conn.on_rollback(move || {
            log.push(format!("h{id}"));
            ret_plain(r, id)
        }),
        Hook::With(body, r) => {
            let cx = cx.clone();
            conn.on_commit_with(move |conn: &mut HookedConnection<C>| -> Result<(), Error> {
                cx.log.push(format!("h{id}"));
                run_steps(conn, &body, &cx)?;
                ret_db(r, id)
            })
        }
        Hook::Before(body, r) => {
            let cx = cx.clone();
            conn.before_commit(move |conn: &mut HookedConnection<C>| {
                cx.log.push(format!("h{id}"));
                run_steps(conn, &body, &cx)?;
                ret_db(r, id)
            })
        }
    }
}

fn caught(cx: &Cx, f: impl FnOnce() -> Result<(), Error>) {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => cx.log.push(format!("top=err:{}", kind(&e))),
        Err(p) => cx.log.push(format!("top=panic:{}", class(&*p))),
    }
}

fn run_top<C: Connection + 'static>(conn: &mut HookedConnection<C>, t: &Top, cx: &Cx) {
    match t {
        Top::Step(s) => caught(cx, || run_step(conn, s, cx)),
        Top::TestTx(items) => conn.test_transaction(|conn| -> Result<(), Error> {
            for it in items {
                run_top(conn, it, cx);
            }
            Ok(())
        }),
        Top::Capture { collect, body, run } => {
            let mode = if *collect {
                Capture::Collect
            } else {
                Capture::Execute
            };
            let ((), hooks) = conn.capture_on_commit(mode, |conn| {
                for s in body {
                    caught(cx, || run_step(conn, s, cx));
                }
            });
            cx.log.push(format!("cap={}", hooks.len()));
            if *run {
                if let Err(p) = catch_unwind(AssertUnwindSafe(|| hooks.run(conn))) {
                    cx.log.push(format!("run=panic:{}", class(&*p)));
                }
            } else {
                drop(hooks);
            }
        }
    }
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
}

fn ids<C>(conn: &mut HookedConnection<C>, table: &str) -> Vec<u32>
where
    C: Connection + 'static,
    for<'a> SqlQuery: LoadQuery<'a, HookedConnection<C>, Id>,
{
    diesel::sql_query(format!("SELECT id FROM {table}"))
        .load::<Id>(conn)
        .unwrap_or_else(|e| panic!("reading {table}: {e}"))
        .into_iter()
        .map(|r| r.id as u32)
        .collect()
}

/// Runs `p` on `conn` (prepared: empty tables, row 0 present) and returns
/// the log and the rows it sees at the end.
fn run_real<C>(mut conn: HookedConnection<C>, p: &Program, cx: &Cx) -> (Vec<String>, Vec<Row>)
where
    C: Connection + 'static,
    for<'a> SqlQuery: LoadQuery<'a, HookedConnection<C>, Id>,
{
    conn.set_outside_transaction(p.outside);
    conn.set_hook_panics(p.panics);
    if p.begin_test {
        conn.begin_test_transaction().unwrap();
    }
    for t in &p.top {
        run_top(&mut conn, t, cx);
    }
    assert!(!conn.in_transaction(), "a user transaction was left open");
    let mut rows: Vec<Row> = ids(&mut conn, cx.rows)
        .into_iter()
        .map(|i| ('r', i))
        .collect();
    rows.extend(ids(&mut conn, cx.child).into_iter().map(|i| ('c', i)));
    rows.extend(
        (cx.outbox.1)(&mut conn as &mut dyn std::any::Any)
            .into_iter()
            .map(|i| ('x', i)),
    );
    rows.sort();
    (cx.log.take(), rows)
}

// ------------------------------------------------------------------ driving

/// Panics the programs raise on purpose are expected: keep them off stderr
/// (tens of thousands of them), but print every other panic as usual.
fn quiet_expected_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = panic_text(info.payload());
            let ours = msg.len() > 1
                && (msg.starts_with('h') || msg.starts_with('b'))
                && msg[1..].bytes().all(|b| b.is_ascii_digit());
            if !(ours || msg.contains("outside a transaction")) {
                default(info);
            }
        }));
    });
}

fn cases(var: &str, default: u32) -> u32 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn check<C>(
    backend: Backend,
    var: &str,
    default_cases: u32,
    g: Gen,
    fresh: impl Fn() -> HookedConnection<C>,
    cx: &Cx,
) where
    C: Connection + 'static,
    for<'a> SqlQuery: LoadQuery<'a, HookedConnection<C>, Id>,
{
    quiet_expected_panics();
    let n = cases(var, default_cases);
    let config = Config {
        cases: n,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/model.proptest-regressions"
        )))),
        source_file: Some(file!()),
        max_shrink_iters: 2048,
        ..Config::default()
    };
    let started = std::time::Instant::now();
    let mut runner = TestRunner::new(config);
    let stats = std::cell::RefCell::new(Stats::default());
    let result = runner.run(&program(g), |p| {
        let real = run_real(fresh(), &p, cx);
        let model = Model::new(backend, &p).run(&p);
        stats.borrow_mut().add(&real.0);
        prop_assert_eq!(
            &real.0,
            &model.0,
            "hook log (left: HookedConnection, right: model)"
        );
        prop_assert_eq!(&real.1, &model.1, "rows (left: database, right: model)");
        Ok(())
    });
    if let Err(e) = result {
        panic!("{backend:?}: HookedConnection and the model diverge: {e}");
    }
    eprintln!(
        "model {backend:?}: {n} programs agreed in {:.1}s; {}",
        started.elapsed().as_secs_f64(),
        stats.borrow()
    );
}

/// What the programs exercised, so a run shows it was not vacuous.
#[derive(Default)]
struct Stats {
    programs: u64,
    events: u64,
    hooks_run: u64,
    committed: u64,
    rolled_back: u64,
    failed_commits: u64,
    aborted_commits: u64,
    panics_out_of_transaction: u64,
    panics_at_top: u64,
    captures: u64,
    outbox_registrations: u64,
}

impl Stats {
    fn add(&mut self, log: &[String]) {
        self.programs += 1;
        for e in log {
            self.events += 1;
            let (head, tail) = e.split_once('=').unwrap_or((e, ""));
            match head.as_bytes()[0] {
                b'h' => self.hooks_run += 1,
                b't' if head != "top" => {
                    if tail == "ok" {
                        self.committed += 1;
                    } else if tail.starts_with("err:ForeignKey") {
                        self.failed_commits += 1;
                    } else if tail.starts_with("err:Unique") {
                        self.aborted_commits += 1;
                    } else if tail.starts_with("panic") {
                        self.panics_out_of_transaction += 1;
                    } else {
                        self.rolled_back += 1;
                    }
                }
                b't' => self.panics_at_top += 1,
                b'c' => self.captures += 1,
                b'x' => self.outbox_registrations += 1,
                _ => {}
            }
        }
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} events: {} hooks run, {} transactions committed, {} rolled back, \
             {} failed COMMITs (deferred FK), {} aborted transactions refused (rule 5.3), \
             {} caught panics out of transaction(), {} panics at the top, {} captures, \
             {} outbox registrations",
            self.events,
            self.hooks_run,
            self.committed,
            self.rolled_back,
            self.failed_commits,
            self.aborted_commits,
            self.panics_out_of_transaction,
            self.panics_at_top,
            self.captures,
            self.outbox_registrations
        )
    }
}

// ----------------------------------------------------------------- backends

#[cfg(feature = "sqlite")]
fn sqlite_conn() -> HookedConnection<SqliteConnection> {
    let mut conn = common::sqlite();
    conn.batch_execute(
        "PRAGMA foreign_keys = ON;
         CREATE TABLE m_rows (id INTEGER PRIMARY KEY);
         CREATE TABLE m_parent (id INTEGER PRIMARY KEY);
         CREATE TABLE m_child (id INTEGER PRIMARY KEY,
             parent_id INTEGER NOT NULL REFERENCES m_parent(id) DEFERRABLE INITIALLY DEFERRED);
         INSERT INTO m_rows (id) VALUES (0);",
    )
    .unwrap();
    #[cfg(feature = "outbox")]
    diesel_on_commit::outbox::Outbox::run_migrations(&mut conn).unwrap();
    conn
}

#[cfg(feature = "sqlite")]
fn sqlite_cx() -> Cx {
    Cx {
        log: Log::new(),
        rows: "m_rows",
        child: "m_child",
        outbox: outbox_fns::<SqliteConnection>(),
    }
}

#[cfg(feature = "sqlite")]
#[test]
fn sqlite_agrees_with_the_model() {
    let cx = sqlite_cx();
    check(
        Backend::Sqlite,
        "MODEL_CASES_SQLITE",
        256,
        Gen { orphans: true },
        sqlite_conn,
        &cx,
    );
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_agrees_with_the_model() {
    let schema = common::PgSchema::new();
    let mut setup = schema.plain();
    setup
        .batch_execute(
            "CREATE TABLE m_rows (id BIGINT PRIMARY KEY);
             CREATE TABLE m_parent (id BIGINT PRIMARY KEY);
             CREATE TABLE m_child (id BIGINT PRIMARY KEY,
                 parent_id BIGINT NOT NULL REFERENCES m_parent(id) DEFERRABLE INITIALLY DEFERRED);",
        )
        .unwrap();
    #[cfg(feature = "outbox")]
    diesel_on_commit::outbox::Outbox::run_migrations(&mut setup).unwrap();
    let cx = Cx {
        log: Log::new(),
        rows: "m_rows",
        child: "m_child",
        outbox: outbox_fns::<PgConnection>(),
    };
    let fresh = || {
        let mut conn = schema.conn();
        conn.batch_execute(
            "DELETE FROM m_child; DELETE FROM m_rows; INSERT INTO m_rows (id) VALUES (0)",
        )
        .unwrap();
        #[cfg(feature = "outbox")]
        conn.batch_execute("DELETE FROM diesel_on_commit_outbox")
            .unwrap();
        conn
    };
    check(
        Backend::Pg,
        "MODEL_CASES_PG",
        64,
        Gen { orphans: true },
        fresh,
        &cx,
    );
}

#[cfg(feature = "mysql")]
#[test]
fn mysql_agrees_with_the_model() {
    let db = common::MysqlDb::new();
    let mut setup = db.plain();
    setup
        .batch_execute(
            "CREATE TABLE m_rows (id BIGINT PRIMARY KEY) ENGINE=InnoDB;
             CREATE TABLE m_child (id BIGINT PRIMARY KEY, parent_id BIGINT NOT NULL) ENGINE=InnoDB;",
        )
        .unwrap();
    #[cfg(feature = "outbox")]
    diesel_on_commit::outbox::Outbox::run_migrations(&mut setup).unwrap();
    let cx = Cx {
        log: Log::new(),
        rows: "m_rows",
        child: "m_child",
        outbox: outbox_fns::<MysqlConnection>(),
    };
    let fresh = || {
        let mut conn = db.conn();
        conn.batch_execute(
            "DELETE FROM m_child; DELETE FROM m_rows; INSERT INTO m_rows (id) VALUES (0)",
        )
        .unwrap();
        #[cfg(feature = "outbox")]
        conn.batch_execute("DELETE FROM diesel_on_commit_outbox")
            .unwrap();
        conn
    };
    // InnoDB checks foreign keys at once: no failing COMMIT from an orphan.
    check(
        Backend::Mysql,
        "MODEL_CASES_MYSQL",
        64,
        Gen { orphans: false },
        fresh,
        &cx,
    );
}

// --------------------------------------------------------- the model itself

/// The model is only worth something if it says what the rules say on the
/// cases the other tests spell out by hand.
#[test]
fn the_model_knows_the_basic_rules() {
    use Step::*;
    let tx = |id, body, end| Tx {
        id,
        body,
        end,
        catch: false,
    };
    let p = Program {
        outside: OutsideTransaction::Run,
        panics: HookPanics::Resume,
        begin_test: false,
        top: vec![Top::Step(tx(
            1,
            vec![
                Reg(2, Hook::OnCommit(Ret::Ok)),
                tx(
                    3,
                    vec![
                        Reg(4, Hook::OnCommit(Ret::Ok)),
                        Reg(5, Hook::Rollback(Ret::Ok)),
                    ],
                    End::Err,
                ),
                tx(
                    6,
                    vec![Reg(7, Hook::OnCommit(Ret::Ok)), Insert(8)],
                    End::Commit,
                ),
                Reg(9, Hook::Before(vec![Insert(10)], Ret::Ok)),
            ],
            End::Commit,
        ))],
    };
    let (log, rows) = Model::new(Backend::Sqlite, &p).run(&p);
    assert_eq!(
        log,
        [
            "h5",
            "t3=err:RollbackTransaction",
            "i8=ok",
            "t6=ok",
            "h9",
            "i10=ok",
            "h2",
            "h7",
            "t1=ok"
        ]
    );
    assert_eq!(rows, [('r', 0), ('r', 8), ('r', 10)]);
}
