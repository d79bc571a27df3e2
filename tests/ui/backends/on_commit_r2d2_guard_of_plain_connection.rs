use diesel::prelude::*;
use diesel::r2d2::{ConnectionManager, PooledConnection};
use diesel_on_commit::on_commit;

type Guard = PooledConnection<ConnectionManager<PgConnection>>;

fn send_email(_order: i32) {}

fn create_order(mut pooled: Guard, order: i32) {
    on_commit!(pooled, send_email(order));
}

fn main() {}
