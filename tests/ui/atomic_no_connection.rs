use diesel::result::QueryResult;
use diesel_on_commit::atomic;

#[atomic]
fn count_orders(limit: i64) -> QueryResult<i64> {
    Ok(limit)
}

fn main() {}
