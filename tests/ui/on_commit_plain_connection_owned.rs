use diesel::prelude::*;
use diesel_on_commit::on_commit;

fn send_email(_order: i32) {}

fn main() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    let order = 1;
    on_commit!(conn, send_email(order));
}
