//! The outbox table's name: `[schema.]name`, validated, always quoted (O9).

use std::fmt;
use std::sync::Arc;

use crate::outbox::backend::sealed::Dialect;
use crate::outbox::OutboxConfigError;

/// The name of an outbox table: `name` or `schema.name` (on SQLite the
/// schema is an attached database; on MySQL a database). Each part is an
/// identifier of 1 to 48 characters from `A-Z a-z 0-9 _`, not starting
/// with a digit (so the index names made from it fit every backend); it is
/// quoted in every statement. Anything else is an error, never SQL.
///
/// ```
/// use diesel_on_commit::outbox::OutboxTable;
///
/// assert_eq!(OutboxTable::default().to_string(), "diesel_on_commit_outbox");
/// assert_eq!(OutboxTable::new("jobs.outbox")?.to_string(), "jobs.outbox");
/// assert!(OutboxTable::new("outbox; DROP TABLE users").is_err());
/// # Ok::<(), diesel_on_commit::outbox::OutboxConfigError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct OutboxTable(Option<Arc<(Option<String>, String)>>);

/// The default table's name.
const DEFAULT_NAME: &str = "diesel_on_commit_outbox";

impl OutboxTable {
    /// Validates `[schema.]name`.
    pub fn new(name: &str) -> Result<Self, OutboxConfigError> {
        let invalid = || OutboxConfigError::InvalidTableName(name.to_owned());
        let (schema, table) = match name.split_once('.') {
            Some((schema, table)) => (Some(schema), table),
            None => (None, name),
        };
        if !schema.is_none_or(valid_ident) || !valid_ident(table) {
            return Err(invalid());
        }
        if schema.is_none() && table == DEFAULT_NAME {
            return Ok(Self::default());
        }
        Ok(Self(Some(Arc::new((
            schema.map(str::to_owned),
            table.to_owned(),
        )))))
    }

    /// The schema part, if any.
    pub fn schema(&self) -> Option<&str> {
        self.0.as_ref().and_then(|parts| parts.0.as_deref())
    }

    /// The table part.
    pub fn name(&self) -> &str {
        self.0.as_ref().map_or(DEFAULT_NAME, |parts| &parts.1)
    }

    /// `"schema"."name"`, quoted for `dialect`.
    pub(crate) fn qualified(&self, dialect: Dialect) -> String {
        self.qualified_with(dialect, "")
    }

    /// `"schema"."name<suffix>"`: a table beside this one (`_meta`).
    pub(crate) fn qualified_with(&self, dialect: Dialect, suffix: &str) -> String {
        let table = dialect.quote(&format!("{}{suffix}", self.name()));
        match self.schema() {
            Some(schema) => format!("{}.{table}", dialect.quote(schema)),
            None => table,
        }
    }

    /// The name of the index `<name><suffix>` as `CREATE INDEX` takes it:
    /// schema-qualified on SQLite, bare elsewhere (PostgreSQL puts an index
    /// in its table's schema; MySQL declares it inside `CREATE TABLE`).
    pub(crate) fn index(&self, dialect: Dialect, suffix: &str) -> String {
        match dialect {
            Dialect::Sqlite => self.qualified_with(dialect, suffix),
            Dialect::Postgres | Dialect::Mysql => {
                dialect.quote(&format!("{}{suffix}", self.name()))
            }
        }
    }
}

fn valid_ident(part: &str) -> bool {
    let bytes = part.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 48
        && !bytes[0].is_ascii_digit()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_')
}

impl fmt::Display for OutboxTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.schema() {
            Some(schema) => write!(f, "{schema}.{}", self.name()),
            None => f.write_str(self.name()),
        }
    }
}

impl fmt::Debug for OutboxTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OutboxTable({self})")
    }
}
