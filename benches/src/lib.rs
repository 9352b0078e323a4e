//! Benches live in benches/*.rs: `cargo bench -p radserve-benches`.
