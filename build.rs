//! `sqlx::migrate!` embeds `migrations/` at compile time, but on stable Rust
//! a proc macro cannot tell cargo which files it read: without this, adding
//! a migration file would not rebuild the crate and the server would start
//! without it (sqlx's documented fix).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
