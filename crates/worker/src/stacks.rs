//! Fiber stacks for guests, recycled.
//!
//! Every invocation runs its guest on a fiber with its own native stack. wasmtime's on-demand
//! instance allocator (which the worker uses for swappable memories, see [`crate::swap`])
//! would map a fresh stack for every invocation and unmap it at the end: two system calls,
//! page faults on first touch and a TLB shootdown on unmap, on every invocation. This pool
//! keeps finished stacks and hands them out again. A reused stack is not cleared (as with
//! wasmtime's pooling allocator by default): guest code cannot address its native stack, and
//! the host code that runs on it initializes what it reads.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use wasmtime::{StackCreator, StackMemory};

const PAGE: usize = 4096;

/// A mapped stack: one guard page at the bottom, then `size` read-write bytes.
#[derive(Debug)]
struct Mapping {
    base: usize,
    size: usize,
}

impl Mapping {
    fn len(&self) -> usize {
        PAGE + self.size
    }
}

/// Finished stacks waiting for reuse; unmapped when the engine and its last stack are gone.
#[derive(Debug)]
struct FreeStacks {
    stacks: Mutex<Vec<Mapping>>,
    /// Free stacks kept at most; more are unmapped.
    keep: usize,
}

impl FreeStacks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Mapping>> {
        // A plain list: no update can be left half-done by a panic.
        self.stacks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for FreeStacks {
    fn drop(&mut self) {
        for m in self.lock().drain(..) {
            unmap(&m);
        }
    }
}

/// The engine's stack creator.
#[derive(Debug)]
pub struct StackPool {
    free: Arc<FreeStacks>,
}

impl StackPool {
    pub fn new(keep: usize) -> Self {
        Self {
            free: Arc::new(FreeStacks {
                stacks: Mutex::new(Vec::new()),
                keep,
            }),
        }
    }
}

#[allow(unsafe_code)]
fn map_stack(size: usize) -> std::io::Result<Mapping> {
    use rustix::mm::{mmap_anonymous, mprotect, MapFlags, MprotectFlags, ProtFlags};
    let size = size.div_ceil(PAGE) * PAGE;
    // SAFETY: a fresh private anonymous mapping aliases nothing; the mprotect is inside it.
    let base = unsafe {
        let base = mmap_anonymous(
            std::ptr::null_mut(),
            PAGE + size,
            ProtFlags::empty(),
            MapFlags::PRIVATE | MapFlags::NORESERVE,
        )?;
        mprotect(
            base.cast::<u8>().add(PAGE).cast(),
            size,
            MprotectFlags::READ | MprotectFlags::WRITE,
        )?;
        base as usize
    };
    Ok(Mapping { base, size })
}

#[allow(unsafe_code)]
fn unmap(m: &Mapping) {
    // SAFETY: the whole mapping, which nothing references any more. A failure leaks address
    // space only.
    let _ = unsafe { rustix::mm::munmap(m.base as *mut std::ffi::c_void, m.len()) };
}

// SAFETY: stacks are page-aligned, zero-filled when first mapped, with a guard page below; a
// recycled one is reused only after wasmtime dropped it.
#[allow(unsafe_code)]
unsafe impl StackCreator for StackPool {
    fn new_stack(&self, size: usize, zeroed: bool) -> wasmtime::Result<Box<dyn StackMemory>> {
        let rounded = size.div_ceil(PAGE) * PAGE;
        let reused = if zeroed {
            None
        } else {
            let mut free = self.free.lock();
            free.iter()
                .rposition(|m| m.size == rounded)
                .map(|at| free.swap_remove(at))
        };
        let mapping = match reused {
            Some(m) => m,
            None => map_stack(size)
                .map_err(|e| wasmtime::format_err!("mapping a {size}-byte fiber stack: {e}"))?,
        };
        Ok(Box::new(PooledStack {
            mapping: Some(mapping),
            free: self.free.clone(),
        }))
    }
}

#[derive(Debug)]
struct PooledStack {
    mapping: Option<Mapping>,
    free: Arc<FreeStacks>,
}

impl PooledStack {
    fn mapping(&self) -> &Mapping {
        self.mapping.as_ref().expect("present until dropped")
    }
}

// SAFETY: `top` is the page-aligned end of the read-write range, and the guard page below it
// is inaccessible.
#[allow(unsafe_code)]
unsafe impl StackMemory for PooledStack {
    fn top(&self) -> *mut u8 {
        let m = self.mapping();
        (m.base + m.len()) as *mut u8
    }

    fn range(&self) -> Range<usize> {
        let m = self.mapping();
        m.base + PAGE..m.base + m.len()
    }

    fn guard_range(&self) -> Range<*mut u8> {
        let m = self.mapping();
        m.base as *mut u8..(m.base + PAGE) as *mut u8
    }
}

impl Drop for PooledStack {
    fn drop(&mut self) {
        let Some(mapping) = self.mapping.take() else {
            return;
        };
        let mut free = self.free.lock();
        if free.len() < self.free.keep {
            free.push(mapping);
        } else {
            drop(free);
            unmap(&mapping);
        }
    }
}
