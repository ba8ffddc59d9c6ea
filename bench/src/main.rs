//! `starling-bench`: load generator (see issue "bench").
fn main() {
    println!("starling-bench: not yet implemented");
}
