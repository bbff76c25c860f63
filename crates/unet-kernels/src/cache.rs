//! The CPU's cache sizes, read once at run time, so that blocking parameters follow the machine
//! the kernels run on rather than the one they were tuned on.

use std::sync::OnceLock;

/// Assumed where the CPU does not say: the smallest per-core L2 of the AVX-512 cores the direct
/// kernel runs on (Zen 4/5 have 1 MB, Ice Lake/Sapphire Rapids 1.25-2 MB).
const FALLBACK_L2: usize = 1 << 20;

/// The per-core L2 cache in bytes: CPUID's deterministic cache parameters (leaf 4 on Intel,
/// 0x8000001D on AMD), else 1 MiB.
pub fn l2_bytes() -> usize {
    static L2: OnceLock<usize> = OnceLock::new();
    *L2.get_or_init(|| detected_l2().unwrap_or(FALLBACK_L2))
}

/// The CPU's L2 size when it reports a plausible one (64 KB to 64 MB).
fn detected_l2() -> Option<usize> {
    detect_l2().filter(|&b| (64 << 10..=64 << 20).contains(&b))
}

#[cfg(target_arch = "x86_64")]
fn detect_l2() -> Option<usize> {
    use std::arch::x86_64::{__cpuid, __cpuid_count, CpuidResult};
    // SAFETY: CPUID exists on every x86-64 CPU; leaves above the maximum the CPU reports are not
    // queried. (Safe functions since Rust 1.94; `unsafe` for the 1.92 this crate supports.)
    #[allow(unused_unsafe)]
    let vendor = unsafe { __cpuid(0) };
    let amd = vendor.ebx == u32::from_le_bytes(*b"Auth");
    let leaf = if amd {
        #[allow(unused_unsafe)]
        let max_ext = unsafe { __cpuid(0x8000_0000) }.eax;
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
        #[allow(unused_unsafe)]
        let CpuidResult { eax, ebx, ecx, .. } = unsafe { __cpuid_count(leaf, sub) };
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

    /// On Linux the kernel's own reading of the caches is in sysfs: CPUID must report the L2
    /// size of one of the CPUs (hybrid CPUs have cores with different L2s).
    #[test]
    fn l2_matches_what_linux_reports() {
        let l2 = l2_bytes();
        assert!((64 << 10..=64 << 20).contains(&l2), "{l2}");
        let Some(detected) = detected_l2() else { return };
        assert_eq!(l2, detected);
        let mut sysfs = Vec::new();
        for cpu in std::fs::read_dir("/sys/devices/system/cpu").into_iter().flatten().flatten() {
            for d in std::fs::read_dir(cpu.path().join("cache")).into_iter().flatten().flatten() {
                let read = |f: &str| std::fs::read_to_string(d.path().join(f)).unwrap_or_default().trim().to_string();
                if read("level") == "2" && read("type") != "Instruction" {
                    if let Some(kb) = read("size").strip_suffix('K').and_then(|k| k.parse::<usize>().ok()) {
                        sysfs.push(kb << 10);
                    }
                }
            }
        }
        if !sysfs.is_empty() {
            assert!(sysfs.contains(&detected), "CPUID says {detected} bytes, sysfs {sysfs:?}");
        }
    }
}
