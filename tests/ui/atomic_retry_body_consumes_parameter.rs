use diesel::prelude::*;
use diesel_on_commit::{atomic, on_commit, HookedConnection};

type DbConn = HookedConnection<SqliteConnection>;

struct Email(String);

fn send(email: Email) {
    let _ = email.0;
}

// The body runs again after a serialization failure: it cannot move a
// parameter out (here into the hook) more than once.
#[atomic(retry = 3)]
fn notify(conn: &mut DbConn, email: Email) -> QueryResult<()> {
    on_commit!(conn, send(email));
    Ok(())
}

fn main() {}
