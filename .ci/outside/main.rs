//! The README's first example on SQLite, built by .ci/run from the packaged
//! tarballs in a crate outside the workspace (what a crates.io user gets).
use diesel::prelude::*;
use diesel_on_commit::prelude::*;

type DbConn = HookedConnection<SqliteConnection>;

diesel::table! { orders (id) { id -> Integer, cart -> Text, user_id -> Integer } }

#[derive(Insertable)]
#[diesel(table_name = orders)]
struct NewOrder {
    cart: String,
    user_id: i32,
}

#[derive(Queryable, Debug)]
struct Order {
    id: i32,
    cart: String,
    user_id: i32,
}

struct Cart(String);
struct User {
    id: i32,
}
impl NewOrder {
    fn from(cart: &Cart, user: &User) -> Self {
        NewOrder {
            cart: cart.0.clone(),
            user_id: user.id,
        }
    }
}

#[derive(Debug)]
#[allow(dead_code)] // read through Debug only
enum AppError {
    Db(diesel::result::Error),
}
impl From<diesel::result::Error> for AppError {
    fn from(e: diesel::result::Error) -> Self {
        AppError::Db(e)
    }
}

fn send_order_confirmation_email(id: i32) {
    println!("email for order {id}");
}

#[atomic]
fn create_order(conn: &mut DbConn, cart: &Cart, user: &User) -> Result<Order, AppError> {
    let order = diesel::insert_into(orders::table)
        .values(NewOrder::from(cart, user))
        .get_result::<Order>(conn)?;
    on_commit!(conn, send_order_confirmation_email(order.id));
    Ok(order)
}

fn main() {
    let mut conn = DbConn::establish(":memory:").unwrap();
    diesel::sql_query("CREATE TABLE orders (id INTEGER PRIMARY KEY, cart TEXT NOT NULL, user_id INTEGER NOT NULL)").execute(&mut conn).unwrap();
    let order = create_order(&mut conn, &Cart("book".into()), &User { id: 7 }).unwrap();
    println!("{order:?} {} {}", order.cart, order.user_id);
}
