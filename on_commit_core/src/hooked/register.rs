//! Registering hooks on the sync wrapper: the five methods and the
//! `TransactionHooks` implementation (rules 1, 2, 8, 9; where a hook goes is
//! decided in `rules/placement.rs`).

use std::any::type_name;
use std::panic::Location;

use diesel::connection::Connection;
use diesel::result::QueryResult;

use crate::hooked::connection::HookedConnection;
use crate::hooked::hooks::{self, CommitHook, Hook};
use crate::rules::failures::{plain, HookResult, PlainFn};
use crate::rules::label::HookLabel;
use crate::rules::levels::DepthCheck;
use crate::rules::queue::Entry;
use crate::transaction_hooks::TransactionHooks;

impl<C: Connection> HookedConnection<C> {
    /// Registers `f` to run after the outermost COMMIT succeeds.
    ///
    /// * Inside a transaction or savepoint it is queued at the current level:
    ///   released with a savepoint into the enclosing level, discarded if a
    ///   level it is in rolls back, run after COMMIT in registration order
    ///   (rules 1, 3, 4, 5).
    /// * Outside a transaction the [`OutsideTransaction`](crate::OutsideTransaction) policy decides; by
    ///   default it runs at once, as in Django (rule 2).
    /// * `f` returns `()` or a `Result`; an `Err` is logged at ERROR with the
    ///   hook's label and does not stop the hooks after it.
    ///
    /// Hooks are **at most once**: a crash between COMMIT and the hook loses
    /// it. Work that must happen needs an outbox row written in the same
    /// transaction. Hooks run while the connection is still checked out of
    /// its pool: enqueue work, do not make slow calls.
    ///
    /// A closure that only panics needs no annotation: `|| panic!("..")`
    /// returns `!`, which is a [`HookResult`](crate::HookResult) too.
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use diesel::result::Error;
    /// use diesel_on_commit::HookedConnection;
    /// use std::sync::{Arc, Mutex};
    ///
    /// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
    /// let log = Arc::new(Mutex::new(Vec::new()));
    /// let (a, b, c) = (log.clone(), log.clone(), log.clone());
    /// conn.transaction::<_, Error, _>(|conn| {
    ///     conn.on_commit(move || a.lock().unwrap().push("outer"));
    ///     // A savepoint that rolls back takes its hooks with it ...
    ///     let _ = conn.transaction::<(), _, _>(|conn| {
    ///         conn.on_commit(move || b.lock().unwrap().push("rolled back"));
    ///         Err(Error::RollbackTransaction)
    ///     });
    ///     // ... one that is released hands them to the enclosing level.
    ///     conn.transaction::<_, Error, _>(|conn| {
    ///         conn.on_commit(move || c.lock().unwrap().push("inner"));
    ///         Ok(())
    ///     })
    /// })?;
    /// assert_eq!(*log.lock().unwrap(), ["outer", "inner"]); // registration order
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[track_caller]
    pub fn on_commit<F, R>(&mut self, f: F)
    where
        F: FnOnce() -> R + Send + 'static,
        R: HookResult,
    {
        let label = HookLabel::new(Location::caller(), type_name::<F>());
        self.register_commit(label, CommitHook::Plain(plain(f)));
    }

    /// As [`on_commit`](Self::on_commit), but a panic in `f` is caught,
    /// logged at ERROR with the hook's label, and never resumed.
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use diesel_on_commit::HookedConnection;
    /// use std::sync::mpsc;
    ///
    /// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
    /// let (tx, rx) = mpsc::channel();
    /// conn.transaction::<_, diesel::result::Error, _>(|conn| {
    ///     conn.on_commit_robust(|| -> () { panic!("a flaky side effect") });
    ///     conn.on_commit(move || tx.send("still runs"));
    ///     Ok(())
    /// })?; // no panic comes out: it was logged
    /// assert_eq!(rx.try_recv(), Ok("still runs"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[track_caller]
    pub fn on_commit_robust<F, R>(&mut self, f: F)
    where
        F: FnOnce() -> R + Send + 'static,
        R: HookResult,
    {
        let label = HookLabel::new(Location::caller(), type_name::<F>());
        self.register_commit(label, CommitHook::Robust(plain(f)));
    }

    /// As [`on_commit`](Self::on_commit), and `f` receives the connection,
    /// at `d == 0`: a hook it registers runs at once (depth first, as in
    /// Django), and a transaction it opens is a fresh one with its own hooks.
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use diesel::result::Error;
    /// use diesel_on_commit::HookedConnection;
    ///
    /// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
    /// diesel::sql_query("CREATE TABLE audit (what TEXT)").execute(&mut conn)?;
    /// conn.transaction::<_, Error, _>(|conn| {
    ///     conn.on_commit_with(|conn: &mut HookedConnection<SqliteConnection>| {
    ///         assert!(!conn.in_transaction()); // after COMMIT, at depth 0
    ///         diesel::sql_query("INSERT INTO audit VALUES ('order placed')").execute(conn)
    ///     });
    ///     Ok(())
    /// })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[track_caller]
    pub fn on_commit_with<F, R>(&mut self, f: F)
    where
        F: FnOnce(&mut Self) -> R + Send + 'static,
        R: HookResult,
    {
        let label = HookLabel::new(Location::caller(), type_name::<F>());
        self.register_commit(label, CommitHook::With(hooks::with(f)));
    }

    /// Registers `f` to run after the level it was registered in, or an
    /// enclosing one, rolled back (for any reason: `Err`, a panic, a failed
    /// COMMIT, a `before_commit` error, a broken connection). Dropped when
    /// the level commits. Outside a transaction it is dropped under
    /// [`OutsideTransaction::Run`](crate::OutsideTransaction::Run), warned and dropped under `WarnAndRun`,
    /// and panics under `Panic`.
    ///
    /// After a COMMIT whose outcome is unknown (the connection died before
    /// the answer), `on_rollback` hooks run although the work may in fact
    /// have committed.
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use diesel::result::Error;
    /// use diesel_on_commit::HookedConnection;
    /// use std::sync::mpsc;
    ///
    /// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
    /// let (tx, rx) = mpsc::channel();
    /// let result = conn.transaction::<(), _, _>(|conn| {
    ///     conn.on_rollback(move || tx.send("release the reserved stock"));
    ///     Err(Error::RollbackTransaction)
    /// });
    /// assert!(result.is_err());
    /// assert_eq!(rx.try_recv(), Ok("release the reserved stock"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[track_caller]
    pub fn on_rollback<F, R>(&mut self, f: F)
    where
        F: FnOnce() -> R + Send + 'static,
        R: HookResult,
    {
        let label = HookLabel::new(Location::caller(), type_name::<F>());
        self.register_rollback(label, plain(f));
    }

    /// Registers `f` to run inside the transaction, just before the
    /// outermost COMMIT, with the connection (rule 5). Hooks it registers
    /// land in the same level; `before_commit` hooks it registers run too.
    /// An `Err` (or a panic) stops the remaining ones, rolls the transaction
    /// back, and is returned from `transaction()` (or resumed).
    ///
    /// # Panics
    ///
    /// Outside a transaction, under every policy: autocommit already
    /// committed, there is nothing to veto.
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use diesel::result::Error;
    /// use diesel_on_commit::HookedConnection;
    ///
    /// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
    /// // A last check inside the transaction: an Err vetoes the COMMIT.
    /// let result = conn.transaction::<(), Error, _>(|conn| {
    ///     conn.before_commit(|_conn| Err(Error::NotFound));
    ///     Ok(())
    /// });
    /// assert!(matches!(result, Err(Error::NotFound)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[track_caller]
    pub fn before_commit<F>(&mut self, f: F)
    where
        F: FnOnce(&mut Self) -> QueryResult<()> + Send + 'static,
    {
        let label = HookLabel::new(Location::caller(), type_name::<F>());
        self.register(label, Hook::BeforeCommit(Box::new(f)));
    }

    /// Whether a user transaction is open: `d >= 1`. Inside a test
    /// transaction alone this is `false`.
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use diesel_on_commit::HookedConnection;
    ///
    /// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
    /// assert!(!conn.in_transaction());
    /// conn.transaction::<_, diesel::result::Error, _>(|conn| {
    ///     assert!(conn.in_transaction());
    ///     Ok(())
    /// })?;
    /// conn.begin_test_transaction()?;
    /// assert!(!conn.in_transaction()); // a test transaction is not a user one
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn in_transaction(&mut self) -> bool {
        // A broken connection has no transaction the wrapper could use, even
        // where the inner manager still counts one.
        self.check_levels() != DepthCheck::Broken && self.user_depth() >= 1
    }

    fn register_commit(&mut self, label: HookLabel, hook: CommitHook<C>) {
        self.register(label, Hook::Commit(hook));
    }

    fn register_rollback(&mut self, label: HookLabel, f: PlainFn) {
        self.register(label, Hook::Rollback(f));
    }

    /// Queues `hook` at the current level, or applies rules 2, 8, 9 (see
    /// `HookState::place_outside_level`): an `on_commit`-kind hook the policy lets
    /// run at `d == 0` runs at once.
    #[inline]
    fn register(&mut self, label: HookLabel, hook: Hook<C>) {
        let check = self.check_levels();
        if let Some(level) = self.state.open_level(check) {
            self.state.queue_at(level, Entry { label, hook });
        } else if let Some(hook) = self.state.place_outside_level(check, label, hook) {
            self.run_at_once(label, hook);
        }
    }

    #[cold]
    #[inline(never)]
    fn run_at_once(&mut self, label: HookLabel, hook: CommitHook<C>) {
        let panics = self.run_commit_hooks([Entry {
            label,
            hook: Hook::Commit(hook),
        }]);
        panics.finish(
            self.state.hook_panics(),
            false,
            "while running at once outside a transaction",
        );
    }
}

// Not listed under a misuse's error: its notes say what to write, the
// same with and without the `async` feature.
#[diagnostic::do_not_recommend]
impl<C: Connection> TransactionHooks for HookedConnection<C> {
    #[track_caller]
    fn on_commit<F, R>(&mut self, f: F)
    where
        F: FnOnce() -> R + Send + 'static,
        R: HookResult,
    {
        HookedConnection::on_commit(self, f)
    }

    #[track_caller]
    fn on_commit_robust<F, R>(&mut self, f: F)
    where
        F: FnOnce() -> R + Send + 'static,
        R: HookResult,
    {
        HookedConnection::on_commit_robust(self, f)
    }

    #[track_caller]
    fn on_rollback<F, R>(&mut self, f: F)
    where
        F: FnOnce() -> R + Send + 'static,
        R: HookResult,
    {
        HookedConnection::on_rollback(self, f)
    }

    fn in_transaction(&mut self) -> bool {
        HookedConnection::in_transaction(self)
    }

    #[track_caller]
    fn __on_commit_labeled<F, R>(&mut self, text: &'static str, f: F)
    where
        F: FnOnce() -> R + Send + 'static,
        R: HookResult,
    {
        let label = HookLabel::new(Location::caller(), text);
        self.register_commit(label, CommitHook::Plain(plain(f)));
    }

    #[track_caller]
    fn __on_commit_robust_labeled<F, R>(&mut self, text: &'static str, f: F)
    where
        F: FnOnce() -> R + Send + 'static,
        R: HookResult,
    {
        let label = HookLabel::new(Location::caller(), text);
        self.register_commit(label, CommitHook::Robust(plain(f)));
    }

    #[track_caller]
    fn __on_commit_with_labeled<F, R>(&mut self, text: &'static str, f: F)
    where
        F: FnOnce(&mut Self) -> R + Send + 'static,
        R: HookResult,
    {
        let label = HookLabel::new(Location::caller(), text);
        self.register_commit(label, CommitHook::With(hooks::with(f)));
    }
}
