//! `process_resident_memory_bytes` and `process_open_fds`, read from `/proc/self` at each
//! scrape (Linux; left out elsewhere).

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::collect::gauge;

/// The process's resident memory and open file descriptors.
#[derive(Debug)]
pub(super) struct Process;

impl Collector for Process {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        if let Some(rss) = process_rss_bytes() {
            gauge(
                &mut enc,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                rss,
            )?;
        }
        if let Some(fds) = process_open_fds() {
            gauge(
                &mut enc,
                "process_open_fds",
                "Number of open file descriptors.",
                fds,
            )?;
        }
        Ok(())
    }
}

/// Resident set size from `/proc/self/statm` (Linux; `None` elsewhere).
fn process_rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // In pages of the kernel's size: 4 KiB on x86_64, 16 KiB on a Raspberry Pi 5's kernel.
    Some(pages * rustix::param::page_size() as u64)
}

/// Entries of `/proc/self/fd` (Linux; `None` elsewhere).
fn process_open_fds() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count())
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_os = "linux")]
    fn resident_set_size_agrees_with_the_kernels_own_figure() {
        // /proc/self/status gives VmRSS in kB whatever the page size.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        let ours = super::process_rss_bytes().unwrap();
        let theirs = kb * 1024;
        // Both are read a moment apart: allow 8 MiB of movement.
        assert!(ours.abs_diff(theirs) < 8 << 20, "{ours} vs {theirs}");
    }
}
