//! Benches live in benches/*.rs: `cargo bench -p radserve-benches`.

/// A comma-separated list from the environment variable `name`, else from `default`: how the
/// benches are narrowed (`RADSERVE_BENCH_ARCHS=unet`, ...).
pub fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// A number from the environment variable `name`, else `default`; a bench stops on a bad value.
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
        Err(_) => default,
    }
}
