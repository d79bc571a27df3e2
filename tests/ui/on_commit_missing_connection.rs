use diesel_on_commit::on_commit;

fn send_email(_order: i32) {}

fn main() {
    let order = 1;
    on_commit!(move || send_email(order));
}
