//! Which pages of a mapping hold data: the kernel's `PAGEMAP_SCAN` (Linux 6.7+).
//!
//! A linear memory's pages are either not present (never touched, or released), mapped to the
//! shared zero page (only read), or present with their own frame (written). Only the last kind
//! holds anything: resetting a recycled memory, or writing a parked one to its swap file, needs
//! to visit only those, so its cost is bounded by what the guest dirtied rather than by the
//! memory's size. wasmtime's pooling allocator does the same for its slots; its code is not
//! public, so this is the same query, made the same way.

use std::fs::File;
use std::ops::Range;
use std::sync::OnceLock;

use rustix::ioctl::{ioctl, opcode, Opcode, Updater};

/// Page categories of `PAGEMAP_SCAN` (`include/uapi/linux/fs.h`).
const PAGE_IS_FILE: u64 = 1 << 2;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;
const PAGE_IS_PFNZERO: u64 = 1 << 5;

/// `struct pm_scan_arg`.
#[repr(C)]
#[derive(Debug, Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `struct page_region`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

const PAGEMAP_SCAN: Opcode = opcode::read_write::<PmScanArg>(b'f', 16);

/// Ranges found per system call; a scan with more makes more calls.
const REGIONS_PER_CALL: usize = 64;

/// This process's `/proc/self/pagemap`, if the kernel answers `PAGEMAP_SCAN` on it. (The
/// worker does not fork without exec, so the file stays this process's.)
fn pagemap() -> Option<&'static File> {
    static PAGEMAP: OnceLock<Option<File>> = OnceLock::new();
    PAGEMAP
        .get_or_init(|| {
            let file = File::open("/proc/self/pagemap").ok()?;
            // An empty scan: fails with EINVAL or ENOTTY where the kernel lacks the call.
            scan_once(&file, 0, 0).ok()?;
            Some(file)
        })
        .as_ref()
}

/// Whether [`dirty_ranges`] can answer on this kernel.
#[cfg(test)]
pub fn available() -> bool {
    pagemap().is_some()
}

/// The address ranges, in order and page-aligned, of written pages (with a frame of their own,
/// or in the system's swap) in `[start, end)`, or `None` where the kernel cannot tell (no
/// `PAGEMAP_SCAN`). Every page outside them reads as zeros.
pub fn dirty_ranges(start: usize, end: usize) -> Option<Vec<Range<usize>>> {
    let file = pagemap()?;
    let mut found = Vec::new();
    let mut at = start;
    while at < end {
        let (regions, walk_end) = scan_once(file, at, end).ok()?;
        found.extend(regions);
        if walk_end <= at {
            return None; // No progress: never expected, but never loop.
        }
        at = walk_end;
    }
    Some(found)
}

/// One `PAGEMAP_SCAN` call from `start`: the dirty ranges it found (at most
/// [`REGIONS_PER_CALL`]) and where it stopped.
#[allow(unsafe_code)]
fn scan_once(
    file: &File,
    start: usize,
    end: usize,
) -> rustix::io::Result<(Vec<Range<usize>>, usize)> {
    let mut regions = [PageRegion::default(); REGIONS_PER_CALL];
    let mut arg = PmScanArg {
        size: std::mem::size_of::<PmScanArg>() as u64,
        start: start as u64,
        end: end as u64,
        vec: regions.as_mut_ptr() as u64,
        vec_len: REGIONS_PER_CALL as u64,
        // Pages backed neither by the zero page nor by a file (both inverted, then required),
        // and either present or in the system's swap (which holds written data too).
        category_inverted: PAGE_IS_PFNZERO | PAGE_IS_FILE,
        category_mask: PAGE_IS_PFNZERO | PAGE_IS_FILE,
        category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        ..PmScanArg::default()
    };
    // SAFETY: `PAGEMAP_SCAN` takes a `struct pm_scan_arg` (laid out as `PmScanArg`, its `size`
    // field telling the kernel which version), reads only this process's page tables, and
    // writes at most `vec_len` `struct page_region`s into `regions`, which outlives the call,
    // and `walk_end` into `arg`.
    unsafe { ioctl(file, Updater::<PAGEMAP_SCAN, PmScanArg>::new(&mut arg)) }?;
    let walk_end = usize::try_from(arg.walk_end).unwrap_or(end).min(end);
    let found = regions
        .iter()
        .take_while(|r| r.end > r.start)
        .map(|r| r.start as usize..r.end as usize)
        .collect();
    Ok((found, walk_end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_written_pages_and_not_read_ones() {
        if !available() {
            // No PAGEMAP_SCAN (before Linux 6.7): the answer is "cannot tell", on which
            // callers release every page.
            assert_eq!(dirty_ranges(0, 4096), None);
            return;
        }
        let mut pages = vec![0u8; 64 * 4096 + 4096];
        let base = (pages.as_ptr() as usize).next_multiple_of(4096);
        let offset = base - pages.as_ptr() as usize;
        // A fresh heap allocation this large is its own anonymous mapping: release it so no
        // page is present, then write pages 3 and 40..42 and read page 10.
        let range = dirty_ranges(base, base + 64 * 4096).expect("scan");
        let touched_before: usize = range.iter().map(|r| r.len()).sum();
        pages[offset + 3 * 4096] = 1;
        pages[offset + 40 * 4096] = 1;
        pages[offset + 41 * 4096 + 7] = 1;
        let _ = std::hint::black_box(pages[offset + 10 * 4096]);
        let after = dirty_ranges(base, base + 64 * 4096).expect("scan");
        let page = |n: usize| base + n * 4096;
        for written in [3, 40, 41] {
            assert!(
                after.iter().any(|r| r.contains(&page(written))),
                "page {written} was written but is not reported: {after:x?}"
            );
        }
        if touched_before == 0 {
            assert!(
                !after.iter().any(|r| r.contains(&page(10))),
                "page 10 was only read: {after:x?}"
            );
        }
    }
}
