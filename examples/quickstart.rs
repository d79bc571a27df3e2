//! The seed's story, narrated: `cargo run --example quickstart`.
//!
//! An order that commits gets its confirmation email after COMMIT; one that
//! rolls back gets none; a savepoint that rolls back drops its own hook while
//! the outer one still fires; a hook that fails is logged and the others run.

use diesel::prelude::*;
use diesel::result::Error;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use diesel_on_commit::prelude::*;

const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

diesel::table! {
    orders (id) {
        id -> Integer,
        customer -> Text,
        total_cents -> Integer,
    }
}

/// What services in this example take: the wrapped connection.
type DbConn = HookedConnection<SqliteConnection>;

#[derive(Debug)]
enum AppError {
    Db(Error),
    OutOfStock(&'static str),
}

impl From<Error> for AppError {
    fn from(e: Error) -> Self {
        AppError::Db(e)
    }
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Db(e) => write!(f, "database error: {e}"),
            AppError::OutOfStock(item) => write!(f, "out of stock: {item}"),
        }
    }
}

impl std::error::Error for AppError {}

fn send_order_confirmation_email(order_id: i32, customer: &str) {
    println!("    [hook] confirmation email for order #{order_id} sent to {customer}");
}

/// Inserts an order and registers its confirmation email; the email goes out
/// only if the outermost transaction commits.
#[atomic]
fn create_order(
    conn: &mut DbConn,
    id: i32,
    customer: &str,
    item: &'static str,
) -> Result<i32, AppError> {
    diesel::insert_into(orders::table)
        .values((
            orders::id.eq(id),
            orders::customer.eq(customer),
            orders::total_cents.eq(1999),
        ))
        .execute(conn)?;
    println!("  inserted order #{id} (not committed yet)");
    let to = customer.to_owned();
    on_commit!(conn, send_order_confirmation_email(id, &to));
    if item == "unobtainium" {
        return Err(AppError::OutOfStock(item));
    }
    Ok(id)
}

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_target(false)
        .without_time()
        // Colours for a terminal only: piped or redirected, the log stays plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let mut conn = DbConn::establish(":memory:")?;
    conn.run_pending_migrations(MIGRATIONS)?;

    println!("1. An order that commits:");
    create_order(&mut conn, 1, "ada@example.com", "book")?;
    println!("  -> committed; the email went out after COMMIT\n");

    println!("2. An order that rolls back:");
    let failed = create_order(&mut conn, 2, "bob@example.com", "unobtainium");
    println!("  -> {}; no email was sent\n", failed.unwrap_err());

    println!("3. A nested savepoint that rolls back:");
    conn.transaction::<_, AppError, _>(|conn| {
        create_order(conn, 3, "cy@example.com", "lamp")?;
        // A nested #[atomic] call is a savepoint.
        let inner = create_order(conn, 4, "dee@example.com", "unobtainium");
        println!(
            "  savepoint for order #4 rolled back ({}); its hook is dropped",
            inner.unwrap_err()
        );
        Ok(())
    })?;
    println!("  -> outer transaction committed: only order #3's email went out\n");

    println!("4. A hook that fails:");
    conn.transaction::<_, AppError, _>(|conn| {
        create_order(conn, 5, "eve@example.com", "pen")?;
        on_commit!(conn, Err::<(), _>("the SMTP server said no"));
        on_commit!(
            conn,
            println!("    [hook] the hook after the failing one still runs")
        );
        Ok(())
    })?;
    println!("  -> the failure was logged with its label; the other hooks ran\n");

    let ids: Vec<i32> = orders::table
        .select(orders::id)
        .order(orders::id)
        .load(&mut conn)?;
    println!("Orders in the database: {ids:?}");
    assert_eq!(ids, [1, 3, 5]);
    Ok(())
}
