use diesel::result::QueryResult;
use diesel_on_commit::atomic;

struct Ledger(Vec<String>);

#[atomic]
fn rename(conn: &mut Ledger, name: &str) -> QueryResult<()> {
    conn.0.push(name.to_owned());
    Ok(())
}

fn main() {}
