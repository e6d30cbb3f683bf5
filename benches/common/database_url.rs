//! PostgreSQL URLs of scratch databases, shared by `benches/persistence.rs`
//! and `examples/projection_cost.rs` (each includes it with `#[path]`).

/// `url` with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let host_start = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[host_start..].find('/').map_or(base.len(), |i| host_start + i);
    format!("{}/{name}{query}", &base[..host_end])
}
