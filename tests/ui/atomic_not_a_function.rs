use diesel_on_commit::atomic;

#[atomic]
struct Order {
    id: i32,
}

fn main() {
    let _ = Order { id: 1 }.id;
}
