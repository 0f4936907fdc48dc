//! Peak resident memory of this process, for the summaries long commands
//! print (Linux `/proc/self/status` VmHWM; elsewhere reported as unknown).

/// Peak resident set size in bytes, if the platform says.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The peak RSS as "1.23 GiB", or "unknown".
pub fn peak_rss_text() -> String {
    match peak_rss_bytes() {
        Some(b) => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        None => "unknown".into(),
    }
}
