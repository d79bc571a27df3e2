use diesel::prelude::*;
use diesel_on_commit::{atomic, HookedConnection};

type DbConn = HookedConnection<SqliteConnection>;

trait Repository {
    #[atomic]
    fn save(&self, conn: &mut DbConn, id: i32) -> QueryResult<()>;
}

fn main() {}
