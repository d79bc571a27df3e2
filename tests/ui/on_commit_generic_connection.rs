use diesel::prelude::*;
use diesel_on_commit::on_commit;

fn send_email(_order: i32) {}

fn create_order<C: Connection>(conn: &mut C, order: i32) {
    on_commit!(conn, send_email(order));
}

fn main() {}
