//! The CPU's cache sizes, read once at run time, so that blocking parameters follow the machine
//! the kernels run on rather than the one they were tuned on.

use std::sync::OnceLock;

/// Assumed where the CPU does not say: the smallest per-core L2 of the x86-64 server cores we
/// target (Zen 2-5 have 512 KB-1 MB, Ice Lake/Sapphire Rapids 1.25-2 MB).
const FALLBACK_L2: usize = 1 << 20;

/// The per-core L2 cache in bytes: CPUID's deterministic cache parameters (leaf 4 on Intel,
/// 0x8000001D on AMD), else 1 MiB.
pub fn l2_bytes() -> usize {
    static L2: OnceLock<usize> = OnceLock::new();
    *L2.get_or_init(|| detect_l2().filter(|&b| (64 << 10..=64 << 20).contains(&b)).unwrap_or(FALLBACK_L2))
}

#[cfg(target_arch = "x86_64")]
fn detect_l2() -> Option<usize> {
    use std::arch::x86_64::{__cpuid, __cpuid_count, CpuidResult};
    // CPUID exists on every x86-64 CPU (safe in std); leaves above the maximum the CPU reports
    // are not queried.
    let vendor = __cpuid(0);
    let amd = vendor.ebx == u32::from_le_bytes(*b"Auth");
    let leaf = if amd {
        let max_ext = __cpuid(0x8000_0000).eax;
        if max_ext < 0x8000_001D {
            return None;
        }
        0x8000_001D
    } else {
        if vendor.eax < 4 {
            return None;
        }
        4
    };
    for sub in 0..16 {
        let CpuidResult { eax, ebx, ecx, .. } = __cpuid_count(leaf, sub);
        let kind = eax & 0x1f; // 0: no more caches; 1 data, 2 instruction, 3 unified
        if kind == 0 {
            break;
        }
        if (eax >> 5) & 0x7 == 2 && kind != 2 {
            let ways = ((ebx >> 22) & 0x3ff) as usize + 1;
            let partitions = ((ebx >> 12) & 0x3ff) as usize + 1;
            let line = (ebx & 0xfff) as usize + 1;
            let sets = ecx as usize + 1;
            return Some(ways * partitions * line * sets);
        }
    }
    None
}

#[cfg(not(target_arch = "x86_64"))]
fn detect_l2() -> Option<usize> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On Linux the kernel's own reading of the caches is in sysfs: CPUID must agree with it.
    #[test]
    fn l2_matches_what_linux_reports() {
        let l2 = l2_bytes();
        assert!((64 << 10..=64 << 20).contains(&l2), "{l2}");
        let Ok(dirs) = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache") else { return };
        for d in dirs.flatten() {
            let read = |f: &str| std::fs::read_to_string(d.path().join(f)).unwrap_or_default().trim().to_string();
            if read("level") == "2" && read("type") != "Instruction" {
                let size = read("size");
                let kb: usize = size.trim_end_matches('K').parse().unwrap_or(0);
                if size.ends_with('K') && kb > 0 && detect_l2().is_some() {
                    assert_eq!(l2, kb << 10, "CPUID says {l2} bytes, sysfs {size}");
                }
            }
        }
    }
}
