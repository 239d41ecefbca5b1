// `sqlx::migrate!` embeds the SQL files at compile time; make cargo rebuild the
// crate when a migration is added or edited.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
