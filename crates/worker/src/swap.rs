//! Swappable linear memory: where guests' memories live, and how a parked invocation's memory
//! goes to a swap file and comes back.
//!
//! wasmtime 48 gives no public handle on a component instance's core memories, so the worker
//! allocates them itself: the engine uses the on-demand instance allocator with
//! [`SwappableMemoryCreator`] as its memory creator (`Config::with_host_memory`). Each linear
//! memory is a reservation of address space (the size wasmtime asks for plus its guard
//! region), read-write up to the memory's size and inaccessible beyond, so the guard-page
//! bounds checks of compiled code work as they do with wasmtime's own memories. Reservations
//! are recycled through a free list ([`RegionPool`]) so an invocation does not pay for `mmap`
//! and `munmap` of gigabytes of address space. A recycled one is reset to zeros by what its
//! last user dirtied (found with the kernel's `PAGEMAP_SCAN`, see [`crate::pagemap`]): dirty
//! pages among its first `keep_resident` bytes are cleared in place and stay resident, so the
//! next instance starts without page faults, and dirty pages beyond are released with
//! `madvise(MADV_DONTNEED)`. Without `PAGEMAP_SCAN` all of it is released.
//!
//! Which memory belongs to which invocation: the worker's gate marks the thread that polls an
//! invocation's guest ([`InvocationMemory::enter`]); a memory created during that poll (at
//! instantiation) registers with that invocation.
//!
//! Swapping follows the policy core's decisions ([`turnpike_policy::machine::MachineAction`]):
//! - `SwapOut`: the worker's swap thread writes each memory's dirty pages (the rest are zeros,
//!   found with `PAGEMAP_SCAN` where the kernel has it) to the invocation's swap file and
//!   releases the pages (`MADV_DONTNEED`: the process's RSS really drops), so a swap-out and a
//!   swap-in cost what the guest dirtied, not the memory's size. It does so
//!   only while the guest is not being polled, under the invocation's lock, which the gate
//!   also holds when it starts a poll, so the guest never runs while its memory moves. If the
//!   machine changed its mind before the swap thread got there (a `SwapIn` for it came first),
//!   the swap-out is skipped.
//! - `SwapIn`: nothing happens at once. The gate reads the file back just before the guest
//!   next runs ([`InvocationMemory::enter`]), on the thread that is about to run it; a guest
//!   woken by I/O is swapped in the same way.
//!
//! Only linear memory moves: the fiber stack, tables and host state stay resident (a few
//! hundred KiB per instance). A failed swap-out (disk full) leaves the memory resident and
//! loses nothing; a failed swap-in fails the invocation with [`SwapError`] (its memory is
//! gone).

use std::cell::RefCell;
use std::ffi::c_void;
use std::fs::File;
use std::io::{Read, Write};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

use wasmtime::{LinearMemory, MemoryCreator, MemoryType};

/// Pages are what `mprotect` and `madvise` work on.
const PAGE: usize = 4096;

fn round_up_to_page(bytes: usize) -> usize {
    bytes.div_ceil(PAGE) * PAGE
}

/// A reservation of address space: `len` bytes from `base`, the first `accessible` of them
/// read-write and the rest inaccessible.
#[derive(Debug)]
struct Region {
    base: usize,
    len: usize,
    accessible: usize,
    /// Free and holding up to `Residency::warm_keep_resident` bytes resident.
    warm: bool,
}

/// How much of a free reservation stays resident (cleared in place, found by `PAGEMAP_SCAN`).
#[derive(Clone, Copy, Debug)]
pub struct Residency {
    /// Bytes at the start of every free reservation.
    pub keep_resident: usize,
    /// Bytes at the start of a warm one: enough for a language runtime's initialized image
    /// (CPython, SpiderMonkey: tens of MB), which the next instance then copies into resident
    /// pages instead of faulting in one page at a time.
    pub warm_keep_resident: usize,
    /// Warm free reservations at most, bounding the resident memory they hold.
    pub warm_max: usize,
}

/// Free reservations, reused by later memories of the same reservation size.
#[derive(Debug)]
pub struct RegionPool {
    free: Mutex<Vec<Region>>,
    /// Free reservations kept at most; more are unmapped.
    keep: usize,
    /// What stays resident; `None`: release every page, without scanning
    /// (`RuntimeConfig::pagemap_scan` off).
    residency: Option<Residency>,
}

impl RegionPool {
    /// `keep`: free reservations kept for reuse; `residency`: how much of them stays resident
    /// (dirty pages cleared instead of released), `None` to release them all.
    pub fn new(keep: usize, residency: Option<Residency>) -> Arc<Self> {
        Arc::new(Self {
            free: Mutex::new(Vec::new()),
            keep,
            residency,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Region>> {
        // A plain list: no update can be left half-done by a panic.
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A reservation of `len` bytes whose first `accessible` bytes are read-write and zero.
    fn take(&self, len: usize, accessible: usize) -> std::io::Result<Region> {
        let reused = {
            let mut free = self.lock();
            // A warm one first: its pages are resident.
            free.iter()
                .rposition(|r| r.len == len && r.warm)
                .or_else(|| free.iter().rposition(|r| r.len == len))
                .map(|at| free.swap_remove(at))
        };
        let mut region = match reused {
            Some(region) => region,
            None => Region {
                base: reserve(len)?,
                len,
                accessible: 0,
                warm: false,
            },
        };
        if let Err(e) = region.set_accessible(accessible) {
            self.give_back(region);
            return Err(e);
        }
        Ok(region)
    }

    /// Takes back a reservation whose contents are dead: releases its pages (so the next user
    /// sees zeros) and keeps it for reuse, or unmaps it.
    fn give_back(&self, mut region: Region) {
        let reset = match self.residency {
            Some(residency) => {
                let warm = self.lock().iter().filter(|r| r.warm).count();
                region.warm = warm < residency.warm_max;
                region.reset(if region.warm {
                    residency.warm_keep_resident
                } else {
                    residency.keep_resident
                })
            }
            None => region.release(0, region.accessible),
        };
        if reset.is_err() {
            // Pages that could not be released must not be handed out again as zeros.
            region.unmap();
            return;
        }
        let mut free = self.lock();
        if free.len() < self.keep {
            free.push(region);
        } else {
            drop(free);
            region.unmap();
        }
    }
}

impl Drop for RegionPool {
    fn drop(&mut self) {
        for region in self.lock().drain(..) {
            region.unmap();
        }
    }
}

/// Reserves `len` bytes of address space, inaccessible, backed by nothing until made
/// read-write and touched.
#[allow(unsafe_code)]
fn reserve(len: usize) -> std::io::Result<usize> {
    use rustix::mm::{mmap_anonymous, MapFlags, ProtFlags};
    // SAFETY: a fresh private anonymous mapping at an address the kernel chooses aliases
    // nothing.
    let base = unsafe {
        mmap_anonymous(
            std::ptr::null_mut(),
            len,
            ProtFlags::empty(),
            MapFlags::PRIVATE | MapFlags::NORESERVE,
        )
    }?;
    Ok(base as usize)
}

#[allow(unsafe_code)]
impl Region {
    fn ptr(&self, offset: usize) -> *mut c_void {
        (self.base + offset) as *mut c_void
    }

    /// Makes the first `bytes` (page-rounded) read-write and the rest of the reservation
    /// inaccessible.
    fn set_accessible(&mut self, bytes: usize) -> std::io::Result<()> {
        use rustix::mm::{mprotect, MprotectFlags};
        let bytes = round_up_to_page(bytes);
        if bytes > self.len {
            return Err(std::io::Error::other(format!(
                "{bytes} bytes do not fit a reservation of {} bytes",
                self.len
            )));
        }
        // SAFETY: the ranges lie inside this reservation, which only its owner uses; pages
        // made inaccessible were released when the region was given back, and those beyond a
        // memory's size hold nothing a guest can reach.
        unsafe {
            if bytes > self.accessible {
                mprotect(
                    self.ptr(self.accessible),
                    bytes - self.accessible,
                    MprotectFlags::READ | MprotectFlags::WRITE,
                )?;
            } else if bytes < self.accessible {
                mprotect(
                    self.ptr(bytes),
                    self.accessible - bytes,
                    MprotectFlags::empty(),
                )?;
            }
        }
        self.accessible = bytes;
        Ok(())
    }

    /// Returns the pages of `[offset, offset + len)` to the kernel; they read as zeros after.
    fn release(&self, offset: usize, len: usize) -> std::io::Result<()> {
        use rustix::mm::{madvise, Advice};
        if len == 0 {
            return Ok(());
        }
        // SAFETY: inside this reservation, and its owner (a swap-out under the invocation's
        // lock, or the pool after the memory died) guarantees no guest is using it.
        unsafe {
            madvise(
                self.ptr(offset),
                round_up_to_page(len),
                Advice::LinuxDontNeed,
            )
        }?;
        Ok(())
    }

    /// The byte ranges of `[0, size)` that hold data (dirty pages), in order; all of it
    /// where the kernel cannot tell.
    fn dirty_ranges(&self, size: usize) -> Vec<Range<usize>> {
        // Whole pages, as `O_DIRECT` wants them (the region's accessible bytes are too).
        let size = round_up_to_page(size).min(self.accessible);
        match crate::pagemap::dirty_ranges(self.base, self.base + size) {
            Some(ranges) => ranges
                .into_iter()
                .map(|r| r.start - self.base..r.end.min(self.base + size) - self.base)
                .collect(),
            None if size > 0 => std::iter::once(0..size).collect(),
            None => Vec::new(),
        }
    }

    /// Zeroes the accessible bytes by what was dirtied: dirty pages in the first
    /// `keep_resident` bytes are cleared in place (they stay resident), dirty pages beyond are
    /// released. Without `PAGEMAP_SCAN`, releases everything.
    fn reset(&self, keep_resident: usize) -> std::io::Result<()> {
        let Some(dirty) = crate::pagemap::dirty_ranges(self.base, self.base + self.accessible)
        else {
            return self.release(0, self.accessible);
        };
        let keep_end = self.base + keep_resident.min(self.accessible);
        let mut release_from = usize::MAX;
        let mut release_to = 0;
        for range in dirty {
            let clear = range.start..range.end.min(keep_end);
            if clear.start < clear.end {
                self.clear(clear.start - self.base, clear.len());
            }
            let release = range.start.max(keep_end)..range.end;
            if release.start < release.end {
                release_from = release_from.min(release.start);
                release_to = release_to.max(release.end);
            }
        }
        if release_from < release_to {
            // One call over the span of dirty pages beyond the kept ones.
            self.release(release_from - self.base, release_to - release_from)?;
        }
        Ok(())
    }

    /// Writes zeros over `[offset, offset + len)`.
    fn clear(&self, offset: usize, len: usize) {
        assert!(
            offset + len <= self.accessible,
            "clearing inside the accessible bytes"
        );
        // SAFETY: the range is read-write (inside `accessible`), and the region's owner (the
        // pool, after its memory died) guarantees no one else uses it.
        unsafe { std::ptr::write_bytes(self.ptr(offset).cast::<u8>(), 0, len) };
    }

    /// Allocates the pages of `range` (`MADV_POPULATE_WRITE`), ahead of writing all of them.
    fn populate(&self, range: Range<usize>) -> std::io::Result<()> {
        use rustix::mm::{madvise, Advice};
        assert!(range.end <= self.accessible, "populating accessible bytes");
        if range.is_empty() {
            return Ok(());
        }
        // SAFETY: inside this reservation's accessible bytes; populating changes no contents
        // (released pages read as zeros either way), and the caller is about to overwrite them.
        unsafe {
            madvise(
                self.ptr(range.start),
                range.len(),
                Advice::LinuxPopulateWrite,
            )
        }?;
        Ok(())
    }

    fn unmap(&self) {
        // SAFETY: the whole reservation, no longer referenced by anyone. A failure leaks
        // address space only.
        let _ = unsafe { rustix::mm::munmap(self.ptr(0), self.len) };
    }
}

/// One linear memory's reservation and size, shared by the [`LinearMemory`] wasmtime holds and
/// the invocation it belongs to. The reservation returns to the pool when the last holder
/// drops it, so a swap-out in progress keeps it from being reused under it.
#[derive(Debug)]
struct MemoryShared {
    region: Mutex<Region>,
    /// Wasm-visible bytes (`LinearMemory::byte_size`).
    size: AtomicUsize,
    pool: Arc<RegionPool>,
}

impl MemoryShared {
    fn region(&self) -> MutexGuard<'_, Region> {
        self.region.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for MemoryShared {
    fn drop(&mut self) {
        let region = std::mem::replace(
            self.region.get_mut().unwrap_or_else(|e| e.into_inner()),
            Region {
                base: 0,
                len: 0,
                accessible: 0,
                warm: false,
            },
        );
        if region.len > 0 {
            self.pool.give_back(region);
        }
    }
}

/// A linear memory as wasmtime sees it.
#[derive(Debug)]
struct SwappableMemory {
    shared: Arc<MemoryShared>,
    base: usize,
    /// Bytes wasm may ever address without moving the base (the reservation minus the guard).
    capacity: usize,
}

// SAFETY: the base is page-aligned and never moves; bytes `[0, size)` are read-write and zero
// when created, bytes from `size` to the end of the reservation (capacity plus guard) are
// inaccessible, so an out-of-bounds access traps as wasmtime's guard-page bounds checks
// expect. Outside wasmtime, the memory is only touched by a swap-out or swap-in while the
// guest is not running (see the module docs).
#[allow(unsafe_code)]
unsafe impl LinearMemory for SwappableMemory {
    fn byte_size(&self) -> usize {
        self.shared.size.load(Ordering::Acquire)
    }

    fn byte_capacity(&self) -> usize {
        self.capacity
    }

    fn grow_to(&mut self, new_size: usize) -> wasmtime::Result<()> {
        if new_size > self.capacity {
            wasmtime::bail!(
                "cannot grow linear memory to {new_size} bytes: its reservation holds {}",
                self.capacity
            );
        }
        let mut region = self.shared.region();
        if new_size > region.accessible {
            region
                .set_accessible(new_size)
                .map_err(|e| wasmtime::format_err!("growing linear memory: {e}"))?;
        }
        self.shared.size.store(new_size, Ordering::Release);
        Ok(())
    }

    fn as_ptr(&self) -> *mut u8 {
        self.base as *mut u8
    }
}

/// The engine's memory creator: every linear memory a worker's guests get comes from here.
#[derive(Debug)]
pub struct SwappableMemoryCreator {
    pool: Arc<RegionPool>,
    /// Reservation for memories wasmtime does not give a reservation size for.
    default_reservation: usize,
}

impl SwappableMemoryCreator {
    pub fn new(pool: Arc<RegionPool>, default_reservation: usize) -> Self {
        Self {
            pool,
            default_reservation,
        }
    }
}

// SAFETY: every memory returned is a `SwappableMemory` (see its safety comment), reserved with
// the size and guard wasmtime asked for, zero-filled up to `minimum`.
#[allow(unsafe_code)]
unsafe impl MemoryCreator for SwappableMemoryCreator {
    fn new_memory(
        &self,
        _ty: MemoryType,
        minimum: usize,
        maximum: Option<usize>,
        reserved_size_in_bytes: Option<usize>,
        guard_size_in_bytes: usize,
    ) -> Result<Box<dyn LinearMemory>, String> {
        let capacity = reserved_size_in_bytes
            .unwrap_or_else(|| maximum.unwrap_or(self.default_reservation).max(minimum));
        let capacity = round_up_to_page(capacity);
        if minimum > capacity {
            return Err(format!(
                "a linear memory of {minimum} bytes does not fit its reservation of {capacity}"
            ));
        }
        let len = capacity
            .checked_add(round_up_to_page(guard_size_in_bytes))
            .ok_or("reservation size overflows")?;
        let region = self
            .pool
            .take(len, minimum)
            .map_err(|e| format!("reserving {len} bytes for a linear memory: {e}"))?;
        let base = region.base;
        let shared = Arc::new(MemoryShared {
            region: Mutex::new(region),
            size: AtomicUsize::new(minimum),
            pool: self.pool.clone(),
        });
        CURRENT.with(|current| {
            if let Some(invocation) = current.borrow().as_ref().and_then(Weak::upgrade) {
                invocation.lock().memories.push(Arc::downgrade(&shared));
            }
        });
        Ok(Box::new(SwappableMemory {
            shared,
            base,
            capacity,
        }))
    }
}

thread_local! {
    /// The invocation whose guest this thread is polling, if any.
    static CURRENT: RefCell<Option<Weak<InvocationMemory>>> = const { RefCell::new(None) };
}

/// A swap-in failed: the invocation's memory could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("swap file {path}: {message}")]
pub struct SwapError {
    pub path: PathBuf,
    pub message: String,
}

/// Swap traffic of one invocation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwapTotals {
    pub swap_outs: u32,
    pub swapped_out_bytes: u64,
    pub swapped_in_bytes: u64,
    /// Time spent writing its memory out (on the swap thread) and reading it back (on a slot,
    /// just before it ran again).
    pub swap_out_time: Duration,
    pub swap_in_time: Duration,
}

/// The linear memories of one invocation and their swap state.
#[derive(Debug)]
pub struct InvocationMemory {
    state: Mutex<SwapState>,
    /// Signalled when a poll of the guest ends.
    idle: Condvar,
    /// The machine wants it swapped out (set by `SwapOut`, cleared by `SwapIn`); read by the
    /// swap thread without waiting for the lock's other users.
    want_out: AtomicBool,
    path: PathBuf,
}

/// One swapped-out memory: its size, and the byte ranges of it that were written to the swap
/// file one after the other (its dirty pages; every other byte is zero).
#[derive(Debug)]
struct Swapped {
    memory: Arc<MemoryShared>,
    size: usize,
    ranges: Vec<Range<usize>>,
}

#[derive(Debug, Default)]
struct SwapState {
    memories: Vec<Weak<MemoryShared>>,
    /// A poll of the guest is in progress.
    running: bool,
    /// The memories written to the swap file, in file order; empty when resident.
    swapped: Vec<Swapped>,
    totals: SwapTotals,
}

impl InvocationMemory {
    /// `path`: where this invocation's swap file goes if it is swapped out.
    pub fn new(path: PathBuf) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(SwapState::default()),
            idle: Condvar::new(),
            want_out: AtomicBool::new(false),
            path,
        })
    }

    fn lock(&self) -> MutexGuard<'_, SwapState> {
        // Every update is completed before the lock is released; a panic mid-swap would have
        // come from a broken invariant, and the state left behind is still consistent enough
        // to drop.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn totals(&self) -> SwapTotals {
        self.lock().totals
    }

    /// The machine decided to swap it out (the swap thread will, unless this is undone first).
    pub fn request_out(&self) {
        self.want_out.store(true, Ordering::Release);
    }

    /// The machine decided to swap it back in: a swap-out not yet done is skipped, one done is
    /// undone at the next [`InvocationMemory::enter`].
    pub fn request_in(&self) {
        self.want_out.store(false, Ordering::Release);
    }

    /// Called by the gate before each poll of the guest: swaps the memory back in if it is
    /// out, and marks this thread as running this invocation until the returned guard drops.
    pub fn enter(self: &Arc<Self>) -> Result<Running, SwapError> {
        let mut state = self.lock();
        self.want_out.store(false, Ordering::Release);
        if !state.swapped.is_empty() {
            self.swap_in(&mut state)?;
        }
        state.running = true;
        drop(state);
        CURRENT.with(|current| *current.borrow_mut() = Some(Arc::downgrade(self)));
        Ok(Running {
            memory: self.clone(),
        })
    }

    /// Writes the memory to the swap file and releases its pages, if the machine still wants
    /// that. A guest preempted a moment ago may still be finishing its poll (it stops at its
    /// next epoch check, microseconds away): this waits for that. Returns the bytes written.
    pub fn swap_out(&self) -> std::io::Result<u64> {
        let mut state = self.lock();
        while state.running && self.want_out.load(Ordering::Acquire) {
            state = self
                .idle
                .wait_timeout(state, Duration::from_millis(10))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if !self.want_out.load(Ordering::Acquire) || !state.swapped.is_empty() {
            return Ok(0);
        }
        let memories: Vec<Arc<MemoryShared>> =
            state.memories.iter().filter_map(Weak::upgrade).collect();
        let started = std::time::Instant::now();
        let mut file = create_direct(&self.path)?;
        let mut swapped = Vec::with_capacity(memories.len());
        let mut bytes = 0u64;
        for memory in memories {
            let size = memory.size.load(Ordering::Acquire);
            let region = memory.region();
            // Only what the guest dirtied; the rest reads as zeros and comes back as zeros.
            let ranges = region.dirty_ranges(size);
            for range in &ranges {
                write_region(&mut file, &region, range.clone())?;
                bytes += range.len() as u64;
            }
            drop(region);
            swapped.push(Swapped {
                memory,
                size,
                ranges,
            });
        }
        // Nothing is released until every byte is written: a failed write keeps the memory
        // resident, as if the swap-out had not been asked for.
        for s in &swapped {
            s.memory.region().release(0, s.size)?;
        }
        state.totals.swap_outs += 1;
        state.totals.swapped_out_bytes += bytes;
        state.totals.swap_out_time += started.elapsed();
        state.swapped = swapped;
        Ok(bytes)
    }

    fn swap_in(&self, state: &mut SwapState) -> Result<(), SwapError> {
        let error = |e: std::io::Error| SwapError {
            path: self.path.clone(),
            message: e.to_string(),
        };
        let started = std::time::Instant::now();
        let mut file = open_direct(&self.path).map_err(error)?;
        for s in std::mem::take(&mut state.swapped) {
            let region = s.memory.region();
            for range in s.ranges {
                state.totals.swapped_in_bytes += range.len() as u64;
                // Fault the pages in with one call rather than one fault per page inside the
                // read (a failure only loses that speed-up: the read faults them instead).
                let _ = region.populate(range.clone());
                read_region(&mut file, &region, range).map_err(error)?;
            }
        }
        drop(file);
        state.totals.swap_in_time += started.elapsed();
        // The data is back in memory; a file that cannot be removed is only litter.
        let _ = std::fs::remove_file(&self.path);
        Ok(())
    }
}

impl Drop for InvocationMemory {
    fn drop(&mut self) {
        if !self.state.get_mut().map_or(true, |s| s.swapped.is_empty()) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The gate's mark that this thread is polling the invocation's guest; dropping it ends the
/// poll (a swap-out may now proceed).
#[derive(Debug)]
pub struct Running {
    memory: Arc<InvocationMemory>,
}

impl Drop for Running {
    fn drop(&mut self) {
        CURRENT.with(|current| *current.borrow_mut() = None);
        self.memory.lock().running = false;
        self.memory.idle.notify_all();
    }
}

/// Swap files bypass the page cache (`O_DIRECT`) where the file system allows it: a swapped-out
/// memory must leave RAM, not move into dirty page cache that the kernel writes back at its
/// own pace (and throttles writers on), and a swap file read once needs no caching. Page-
/// aligned memory, offsets and lengths meet `O_DIRECT`'s alignment. Where it is refused
/// (tmpfs), the ordinary path.
fn create_direct(path: &std::path::Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    let direct = rustix::fs::OFlags::DIRECT.bits() as i32;
    options
        .clone()
        .custom_flags(direct)
        .open(path)
        .or_else(|_| options.open(path))
}

fn open_direct(path: &std::path::Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let direct = rustix::fs::OFlags::DIRECT.bits() as i32;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(direct)
        .open(path)
        .or_else(|_| File::open(path))
}

/// Writes the bytes `range` of a region.
#[allow(unsafe_code)]
fn write_region(file: &mut File, region: &Region, range: Range<usize>) -> std::io::Result<()> {
    assert!(
        range.start <= range.end && range.end <= region.accessible,
        "a memory's bytes are inside its region"
    );
    // SAFETY: the range is read-write (accessible) and, under the invocation's lock with its
    // guest not running, nothing writes it while this slice lives.
    let bytes =
        unsafe { std::slice::from_raw_parts(region.ptr(range.start) as *const u8, range.len()) };
    file.write_all(bytes)
}

/// Reads the bytes `range` of a region back.
#[allow(unsafe_code)]
fn read_region(file: &mut File, region: &Region, range: Range<usize>) -> std::io::Result<()> {
    assert!(
        range.start <= range.end && range.end <= region.accessible,
        "a memory's bytes are inside its region"
    );
    // SAFETY: as in `write_region`; the guest is about to run but has not started, and this
    // slice is the only access until it ends.
    let bytes =
        unsafe { std::slice::from_raw_parts_mut(region.ptr(range.start) as *mut u8, range.len()) };
    file.read_exact(bytes)
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::*;

    const KIB: usize = 1024;

    /// Reads byte `offset` of a memory.
    fn byte(memory: &dyn LinearMemory, offset: usize) -> u8 {
        assert!(offset < memory.byte_size());
        // SAFETY: inside the memory's accessible bytes; nothing else uses it in these tests.
        unsafe { memory.as_ptr().add(offset).read_volatile() }
    }

    /// Writes `value` at byte `offset` of a memory.
    fn set(memory: &dyn LinearMemory, offset: usize, value: u8) {
        assert!(offset < memory.byte_size());
        // SAFETY: as in `byte`.
        unsafe { memory.as_ptr().add(offset).write_volatile(value) }
    }

    fn new_memory(creator: &SwappableMemoryCreator, bytes: usize) -> Box<dyn LinearMemory> {
        let pages = u32::try_from(bytes / 65536).expect("small");
        creator
            .new_memory(MemoryType::new(pages, None), bytes, None, Some(64 << 20), 0)
            .expect("memory")
    }

    /// Pages written anywhere, inside the part kept resident or beyond it, read as zeros in the
    /// next memory that reuses the reservation.
    #[test]
    fn a_recycled_memory_is_zero_wherever_it_was_dirtied() {
        for keep_resident in [None, Some(64 * KIB)] {
            let residency = keep_resident.map(|keep_resident| Residency {
                keep_resident,
                warm_keep_resident: keep_resident,
                warm_max: 1,
            });
            let creator = SwappableMemoryCreator::new(RegionPool::new(4, residency), 1 << 30);
            let first = new_memory(&creator, 1024 * KIB);
            let base = first.as_ptr() as usize;
            let offsets = [0, 5 * 4096 + 17, 64 * KIB - 1, 64 * KIB, 700 * KIB + 3];
            for &at in &offsets {
                set(&*first, at, 0xab);
            }
            drop(first);
            let second = new_memory(&creator, 1024 * KIB);
            assert_eq!(second.as_ptr() as usize, base, "the reservation is reused");
            for &at in &offsets {
                assert_eq!(byte(&*second, at), 0, "byte {at}, keep {keep_resident:?}");
            }
            if keep_resident.is_some() && crate::pagemap::available() {
                // Kept pages stay resident (cleared in place); those beyond were released.
                let dirty = crate::pagemap::dirty_ranges(base, base + 1024 * KIB).expect("scan");
                assert!(dirty.iter().any(|r| r.contains(&base)), "{dirty:x?}");
                assert!(
                    !dirty.iter().any(|r| r.contains(&(base + 700 * KIB))),
                    "{dirty:x?}"
                );
            }
        }
    }

    /// Up to `warm_max` free reservations keep `warm_keep_resident` bytes resident (cleared),
    /// the others only `keep_resident`; a warm one is reused first.
    #[test]
    fn only_warm_reservations_keep_their_larger_part_resident() {
        if !crate::pagemap::available() {
            // Without PAGEMAP_SCAN nothing is kept resident (every page is released; the
            // fallback is checked in `pagemap`'s test): there is no warm part to test.
            return;
        }
        let residency = Residency {
            keep_resident: 64 * KIB,
            warm_keep_resident: 512 * KIB,
            warm_max: 1,
        };
        let creator = SwappableMemoryCreator::new(RegionPool::new(4, Some(residency)), 1 << 30);
        let (a, b) = (
            new_memory(&creator, 1024 * KIB),
            new_memory(&creator, 1024 * KIB),
        );
        let at = 300 * KIB;
        set(&*a, at, 1);
        set(&*b, at, 2);
        let resident = |base: usize| {
            let dirty = crate::pagemap::dirty_ranges(base, base + 1024 * KIB).expect("scan");
            dirty.iter().any(|r| r.contains(&(base + at)))
        };
        let (a_base, b_base) = (a.as_ptr() as usize, b.as_ptr() as usize);
        drop(a); // warm: the page at 300 KiB is cleared and stays
        drop(b); // cold: it is released
        assert!(resident(a_base) && !resident(b_base));
        let again = new_memory(&creator, 1024 * KIB);
        assert_eq!(
            again.as_ptr() as usize,
            a_base,
            "the warm one is reused first"
        );
        assert_eq!(byte(&*again, at), 0);
    }

    /// A swap-out writes only the dirty pages and a swap-in puts each back where it was, with
    /// the untouched bytes between them still zero.
    #[test]
    fn a_sparse_memory_swaps_out_its_dirty_pages_and_back_in_place() {
        let dir = tempfile::tempdir().expect("temp dir");
        let residency = Residency {
            keep_resident: 64 * KIB,
            warm_keep_resident: 64 * KIB,
            warm_max: 1,
        };
        let creator = SwappableMemoryCreator::new(RegionPool::new(4, Some(residency)), 1 << 30);
        let invocation = InvocationMemory::new(dir.path().join("swap"));
        let running = invocation.enter().expect("resident");
        let memory = new_memory(&creator, 4096 * KIB);
        drop(running);
        let written: Vec<usize> = vec![3, 4096 + 1, 3 * 4096, 200 * 4096 + 9, 1023 * 4096];
        for (i, &at) in written.iter().enumerate() {
            set(&*memory, at, i as u8 + 1);
        }
        invocation.request_out();
        let bytes = invocation.swap_out().expect("swap-out");
        if crate::pagemap::available() {
            assert_eq!(bytes, 5 * 4096, "pages 0, 1, 3, 200 and 1023");
        } else {
            assert_eq!(bytes, 4096 * KIB as u64);
        }
        for &at in &written {
            assert_eq!(byte(&*memory, at), 0, "released at {at}");
        }
        let running = invocation.enter().expect("swapped back in");
        for (i, &at) in written.iter().enumerate() {
            assert_eq!(byte(&*memory, at), i as u8 + 1, "byte {at}");
        }
        assert_eq!(byte(&*memory, 2 * 4096), 0);
        assert_eq!(byte(&*memory, 100 * 4096), 0);
        drop(running);
        let totals = invocation.totals();
        assert_eq!(totals.swapped_in_bytes, totals.swapped_out_bytes);
        assert_eq!(totals.swap_outs, 1);
    }
}
