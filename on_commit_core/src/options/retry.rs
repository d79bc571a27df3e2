//! Retrying a whole transaction after a serialization failure or a deadlock,
//! with the hooks of every failed attempt dropped (its `on_rollback` hooks
//! run) and only the attempt that commits firing.
//!
//! Only an outermost transaction retries. Inside an open user transaction
//! the call runs once and returns the error unchanged: a serialization
//! failure aborts the whole transaction (PostgreSQL) or rolls it back
//! (InnoDB deadlocks), so retrying a savepoint cannot fix it; the caller
//! that opened the outermost transaction must retry.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use diesel::connection::Connection;
use diesel::result::Error;

use crate::rules::db_status::is_retryable;

use crate::hooked::connection::HookedConnection;

/// How often and how patiently a transaction is retried.
///
/// ```
/// use diesel_on_commit::RetryPolicy;
/// use std::time::Duration;
///
/// let policy = RetryPolicy::attempts(5)
///     .backoff(Duration::from_millis(5), Duration::from_millis(200))
///     .deadline(Duration::from_secs(2));
/// assert_eq!(policy.max_attempts(), 5);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    attempts: u32,
    base: Duration,
    max: Duration,
    deadline: Option<Duration>,
}

impl Default for RetryPolicy {
    /// Three attempts, backoff from 10 ms doubling up to 500 ms with full
    /// jitter, no deadline.
    fn default() -> Self {
        Self::attempts(3)
    }
}

impl RetryPolicy {
    /// At most `attempts` runs of the transaction in all (at least one).
    pub fn attempts(attempts: u32) -> Self {
        Self {
            attempts: attempts.max(1),
            base: Duration::from_millis(10),
            max: Duration::from_millis(500),
            deadline: None,
        }
    }

    /// Exponential backoff between attempts: `base * 2^(n-1)` capped at
    /// `max`, with full jitter (a uniformly random wait up to that bound).
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.base = base;
        self.max = max.max(base);
        self
    }

    /// No attempt starts later than `deadline` after the first one did.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The maximum number of attempts.
    pub fn max_attempts(&self) -> u32 {
        self.attempts
    }

    /// The wait before attempt `attempt + 1` (attempt counts from 1).
    fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << (attempt - 1).min(16))
            .min(self.max);
        let nanos = u64::try_from(exp.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        // Randomness from std: every RandomState has fresh random keys.
        let random = RandomState::new().build_hasher().finish();
        Duration::from_nanos(random % (nanos + 1))
    }
}

/// An error type a retried transaction can return: it exposes the Diesel
/// error inside it, if any, so the retry loop can tell a serialization
/// failure or deadlock from everything else.
///
/// Implemented for [`diesel::result::Error`]; implement it for your own
/// error type:
///
/// ```
/// use diesel::prelude::*;
/// use diesel::result::Error;
/// use diesel_on_commit::{HookedConnection, RetryPolicy, Retryable};
///
/// #[derive(Debug)]
/// enum AppError {
///     Db(Error),
///     OutOfStock,
/// }
/// impl From<Error> for AppError {
///     fn from(e: Error) -> Self {
///         AppError::Db(e)
///     }
/// }
/// impl std::fmt::Display for AppError {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         match self {
///             AppError::Db(e) => write!(f, "database: {e}"),
///             AppError::OutOfStock => f.write_str("out of stock"),
///         }
///     }
/// }
/// impl Retryable for AppError {
///     fn diesel_error(&self) -> Option<&Error> {
///         match self {
///             AppError::Db(e) => Some(e),
///             _ => None,
///         }
///     }
/// }
///
/// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
/// let mut attempts = 0;
/// let result = conn.transaction_with_retry(&RetryPolicy::attempts(3), |_conn| {
///     attempts += 1;
///     Err::<(), _>(AppError::OutOfStock) // not a Diesel error: not retried
/// });
/// assert!(matches!(result, Err(AppError::OutOfStock)));
/// assert_eq!(attempts, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Retryable {
    /// The Diesel error this error carries, if any.
    ///
    /// ```
    /// use diesel::result::Error;
    /// use diesel_on_commit::Retryable;
    ///
    /// let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(Error::NotFound);
    /// assert!(matches!(boxed.diesel_error(), Some(Error::NotFound)));
    /// let other: Box<dyn std::error::Error + Send + Sync> = "not from Diesel".into();
    /// assert!(other.diesel_error().is_none());
    /// ```
    fn diesel_error(&self) -> Option<&Error>;
}

impl Retryable for Error {
    fn diesel_error(&self) -> Option<&Error> {
        Some(self)
    }
}

/// A boxed error (the usual `Box<dyn Error + Send + Sync>` of applications)
/// is retryable when it holds a Diesel error.
impl Retryable for Box<dyn std::error::Error + Send + Sync> {
    fn diesel_error(&self) -> Option<&Error> {
        self.downcast_ref::<Error>()
    }
}

impl Retryable for Box<dyn std::error::Error> {
    fn diesel_error(&self) -> Option<&Error> {
        self.downcast_ref::<Error>()
    }
}

/// What the retry loop does after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Wait this long, then run the transaction again.
    Retry(Duration),
    /// Return the error.
    GiveUp,
}

/// The retry loop's decisions, shared by the sync wrapper (which blocks for
/// the backoff) and the async one (which awaits it): whether an error is
/// retried, the attempt count, the deadline, the backoff delay and the log
/// lines. The callers only run attempts and wait.
#[derive(Debug)]
pub(crate) struct RetryState<'p> {
    policy: &'p RetryPolicy,
    started: Instant,
    /// The attempt that just ran (counts from 1).
    attempt: u32,
    /// Inside an open user transaction: one attempt only, error unchanged.
    once: bool,
}

impl<'p> RetryState<'p> {
    /// Before the first attempt. `in_transaction`: a user transaction is
    /// open, so the call runs once (only an outermost transaction retries).
    pub(crate) fn start(policy: &'p RetryPolicy, in_transaction: bool) -> Self {
        Self {
            policy,
            started: Instant::now(),
            attempt: 1,
            once: in_transaction,
        }
    }

    /// Attempt `n` failed with `error`: retry after a delay, or give up.
    pub(crate) fn after_failure<E>(&mut self, error: &E) -> Decision
    where
        E: Retryable + std::fmt::Display,
    {
        if self.once {
            return Decision::GiveUp;
        }
        let policy = self.policy;
        let n = self.attempt;
        let retryable = error.diesel_error().is_some_and(is_retryable);
        let out_of_time = policy
            .deadline
            .is_some_and(|deadline| self.started.elapsed() >= deadline);
        if !retryable || n >= policy.attempts || out_of_time {
            if retryable {
                tracing::warn!(
                    attempt = n,
                    "transaction failed again, not retrying: {error}"
                );
            }
            return Decision::GiveUp;
        }
        let wait = policy.delay(n);
        let wait = match policy.deadline {
            Some(deadline) => wait.min(deadline.saturating_sub(self.started.elapsed())),
            None => wait,
        };
        tracing::info!(
            attempt = n,
            next_in_ms = wait.as_millis() as u64,
            "transaction failed with a retryable error, retrying: {error}"
        );
        self.attempt += 1;
        Decision::Retry(wait)
    }
}

/// Runs `attempt` until it succeeds, fails with an error that is not
/// retryable, or the policy is exhausted. Inside an open user transaction it
/// runs once. The decisions are [`RetryState`]'s; this only blocks for the
/// backoff.
pub(crate) fn with_retry<C, T, E, F>(
    conn: &mut HookedConnection<C>,
    policy: &RetryPolicy,
    mut attempt: F,
) -> Result<T, E>
where
    C: Connection,
    F: FnMut(&mut HookedConnection<C>) -> Result<T, E>,
    E: Retryable + std::fmt::Display,
{
    let mut state = RetryState::start(policy, conn.in_transaction());
    loop {
        let error = match attempt(conn) {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        match state.after_failure(&error) {
            Decision::Retry(wait) => std::thread::sleep(wait),
            Decision::GiveUp => return Err(error),
        }
    }
}

impl<C: Connection> HookedConnection<C> {
    /// Runs `f` in a transaction, retrying the whole transaction after a
    /// serialization failure or deadlock (see [`is_retryable`]), as the
    /// [`RetryPolicy`] allows. Each failed attempt is rolled back: its
    /// `on_commit` hooks are dropped and its `on_rollback` hooks run; only
    /// the attempt that commits fires its hooks. A `tracing` event per retry
    /// names the attempt and the error.
    ///
    /// Inside an open user transaction `f` runs once, as a savepoint, and
    /// the error is returned unchanged: retrying a savepoint cannot fix a
    /// serialization failure, the outermost transaction must be retried.
    ///
    /// ```
    /// use diesel::prelude::*;
    /// use diesel_on_commit::{HookedConnection, RetryPolicy};
    ///
    /// let mut conn = HookedConnection::new(SqliteConnection::establish(":memory:")?);
    /// let mut attempts = 0;
    /// let value = conn.transaction_with_retry(&RetryPolicy::attempts(3), |conn| {
    ///     attempts += 1;
    ///     conn.on_commit(move || println!("fired once, for the attempt that committed"));
    ///     Ok::<_, diesel::result::Error>(attempts)
    /// })?;
    /// assert_eq!(value, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn transaction_with_retry<T, E, F>(
        &mut self,
        policy: &RetryPolicy,
        mut f: F,
    ) -> Result<T, E>
    where
        F: FnMut(&mut Self) -> Result<T, E>,
        E: From<Error> + Retryable + std::fmt::Display,
    {
        with_retry(self, policy, |conn| conn.transaction(&mut f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::result::DatabaseErrorKind;

    fn serialization_failure() -> Error {
        Error::DatabaseError(
            DatabaseErrorKind::SerializationFailure,
            Box::new(String::from("could not serialize access")),
        )
    }

    fn deadlock() -> Error {
        Error::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new(String::from("Deadlock found when trying to get lock")),
        )
    }

    /// A fast policy: waits of at most 2 ms.
    fn fast(attempts: u32) -> RetryPolicy {
        RetryPolicy::attempts(attempts).backoff(Duration::from_millis(1), Duration::from_millis(2))
    }

    #[test]
    fn retries_until_the_attempts_are_spent() {
        let policy = fast(3);
        let mut state = RetryState::start(&policy, false);
        assert!(matches!(
            state.after_failure(&serialization_failure()),
            Decision::Retry(_)
        ));
        assert_eq!(state.attempt, 2);
        assert!(matches!(
            state.after_failure(&deadlock()),
            Decision::Retry(_)
        ));
        assert_eq!(state.attempt, 3);
        assert_eq!(
            state.after_failure(&serialization_failure()),
            Decision::GiveUp,
            "three attempts in all"
        );
        assert_eq!(state.attempt, 3);
    }

    #[test]
    fn one_attempt_never_retries() {
        for policy in [RetryPolicy::attempts(1), RetryPolicy::attempts(0)] {
            assert_eq!(policy.max_attempts(), 1);
            let mut state = RetryState::start(&policy, false);
            assert_eq!(
                state.after_failure(&serialization_failure()),
                Decision::GiveUp
            );
        }
    }

    #[test]
    fn a_non_retryable_error_gives_up_at_once() {
        let policy = fast(5);
        for error in [
            Error::NotFound,
            Error::RollbackTransaction,
            Error::DatabaseError(
                DatabaseErrorKind::UniqueViolation,
                Box::new(String::from("duplicate key")),
            ),
        ] {
            let mut state = RetryState::start(&policy, false);
            assert_eq!(state.after_failure(&error), Decision::GiveUp, "{error}");
            assert_eq!(state.attempt, 1);
        }
    }

    #[test]
    fn inside_a_user_transaction_it_runs_once() {
        let policy = fast(5);
        let mut state = RetryState::start(&policy, true);
        assert_eq!(
            state.after_failure(&serialization_failure()),
            Decision::GiveUp
        );
        assert_eq!(state.after_failure(&deadlock()), Decision::GiveUp);
    }

    #[test]
    fn a_passed_deadline_gives_up() {
        let policy = fast(5).deadline(Duration::ZERO);
        let mut state = RetryState::start(&policy, false);
        assert_eq!(
            state.after_failure(&serialization_failure()),
            Decision::GiveUp
        );
    }

    #[test]
    fn the_wait_never_passes_the_deadline() {
        let policy = RetryPolicy::attempts(5)
            .backoff(Duration::from_secs(60), Duration::from_secs(60))
            .deadline(Duration::from_millis(50));
        for _ in 0..20 {
            let mut state = RetryState::start(&policy, false);
            match state.after_failure(&serialization_failure()) {
                Decision::Retry(wait) => assert!(wait <= Duration::from_millis(50), "{wait:?}"),
                Decision::GiveUp => panic!("the deadline has not passed"),
            }
        }
    }

    #[test]
    fn the_backoff_doubles_up_to_its_cap_with_full_jitter() {
        let policy =
            RetryPolicy::attempts(10).backoff(Duration::from_millis(10), Duration::from_millis(35));
        for _ in 0..50 {
            assert!(policy.delay(1) <= Duration::from_millis(10));
            assert!(policy.delay(2) <= Duration::from_millis(20));
            assert!(policy.delay(3) <= Duration::from_millis(35));
            assert!(policy.delay(9) <= Duration::from_millis(35));
        }
        let zero = RetryPolicy::attempts(3).backoff(Duration::ZERO, Duration::ZERO);
        assert_eq!(zero.delay(1), Duration::ZERO);
    }

    #[test]
    fn boxed_errors_are_retryable_when_they_hold_a_diesel_error() {
        let policy = fast(3);
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(serialization_failure());
        let mut state = RetryState::start(&policy, false);
        assert!(matches!(state.after_failure(&boxed), Decision::Retry(_)));
        let other: Box<dyn std::error::Error + Send + Sync> = "not a database error".into();
        let mut state = RetryState::start(&policy, false);
        assert_eq!(state.after_failure(&other), Decision::GiveUp);
    }
}
