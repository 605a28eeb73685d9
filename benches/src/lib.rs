//! Criterion benches of Berth's hot paths live in `benches/`; run them with `cargo bench -p berth-benches`.
