//! Process metrics for benchmarks.

/// Sum of `Rss:` over all mappings in `/proc/self/smaps` except those lying
/// inside `guest_ranges` (host address, length) — i.e. the VMM's own
/// resident memory, not counting guest RAM. In bytes.
pub fn rss_excluding_guest(guest_ranges: &[(usize, usize)]) -> std::io::Result<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    Ok(sum_rss(&smaps, guest_ranges))
}

fn parse_range(line: &str) -> Option<(usize, usize)> {
    let range = line.split_whitespace().next()?;
    let (a, b) = range.split_once('-')?;
    Some((
        usize::from_str_radix(a, 16).ok()?,
        usize::from_str_radix(b, 16).ok()?,
    ))
}

fn sum_rss(smaps: &str, guest_ranges: &[(usize, usize)]) -> u64 {
    let mut total = 0u64;
    let mut skip = false;
    for line in smaps.lines() {
        if let Some(rest) = line.strip_prefix("Rss:") {
            if !skip {
                let kib: u64 = rest
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .unwrap_or(0);
                total += kib * 1024;
            }
        } else if let Some((start, end)) = parse_range(line) {
            // A mapping header ("start-end perms offset dev inode path").
            skip = guest_ranges
                .iter()
                .any(|(g, len)| start >= *g && end <= g + len);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excludes_guest_mappings() {
        let smaps = "\
55d0a0000000-55d0a0001000 r--p 00000000 08:01 123 /usr/bin/x
Size:                  4 kB
Rss:                   4 kB
7f0000000000-7f0010000000 rw-p 00000000 00:00 0
Size:             262144 kB
Rss:              100000 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
Rss:                  12 kB
";
        assert_eq!(sum_rss(smaps, &[]), (4 + 100_000 + 12) * 1024);
        assert_eq!(
            sum_rss(smaps, &[(0x7f00_0000_0000, 0x1000_0000)]),
            (4 + 12) * 1024
        );
        let own = rss_excluding_guest(&[]).unwrap();
        assert!(own > 0);
    }
}
