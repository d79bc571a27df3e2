// @generated automatically by Diesel CLI.

diesel::table! {
    friend_requests (id) {
        id -> Int8,
        from_user_id -> Int8,
        to_user_id -> Int8,
        status -> Text,
    }
}

diesel::table! {
    friendships (user_a, user_b) {
        user_a -> Int8,
        user_b -> Int8,
    }
}

diesel::table! {
    order_items (order_id, product_id) {
        order_id -> Int8,
        product_id -> Int8,
        quantity -> Int4,
        unit_price_cents -> Int8,
    }
}

diesel::table! {
    orders (id) {
        id -> Int8,
        customer_email -> Text,
        client_ref -> Nullable<Text>,
        total_cents -> Int8,
    }
}

diesel::table! {
    products (id) {
        id -> Int8,
        category_id -> Int8,
        name -> Text,
        price_cents -> Int8,
        stock -> Int4,
        version -> Int8,
    }
}

diesel::table! {
    users (id) {
        id -> Int8,
        email -> Text,
        name -> Text,
    }
}

diesel::joinable!(order_items -> orders (order_id));
diesel::joinable!(order_items -> products (product_id));

diesel::allow_tables_to_appear_in_same_query!(
    friend_requests,
    friendships,
    order_items,
    orders,
    products,
    users,
);
