//! A global allocator that counts the Rust heap allocations of the whole process (every
//! thread), so a bench can report how many each published or handled event costs. C
//! libraries' own `malloc` calls (librdkafka's, SQLite's) are not counted: the counts are
//! what eventflow, its Rust dependencies, serde and tokio allocate.
//!
//! A bench that wants it declares `#[global_allocator] static A: alloc::Counting =
//! alloc::Counting;`. `trace(var, f)` prints the call stacks of the first N allocations
//! `f` makes, N read from the environment variable `var`, to find where they come from.

// Included by benches of two crates, each using only some of it.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

pub struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// Whether allocations are counted: a bench that times many threads switches it off for
/// its timed rounds, where one shared counter would add a contended write per allocation.
static COUNTING: AtomicBool = AtomicBool::new(true);
static TRACING: AtomicBool = AtomicBool::new(false);
static TRACE_LEFT: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Set while this thread prints a trace, whose own allocations are not traced.
    static IN_TRACE: Cell<bool> = const { Cell::new(false) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        counted(layout);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        counted(layout);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        counted(layout);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn counted(layout: Layout) {
    if !COUNTING.load(Ordering::Relaxed) {
        return;
    }
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    if TRACING.load(Ordering::Relaxed) && !IN_TRACE.with(Cell::get) {
        let left = TRACE_LEFT.load(Ordering::Relaxed);
        if left > 0
            && TRACE_LEFT
                .compare_exchange(left, left - 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            IN_TRACE.with(|t| t.set(true));
            let trace = std::backtrace::Backtrace::force_capture();
            eprintln!("allocation of {} bytes:\n{trace}", layout.size());
            IN_TRACE.with(|t| t.set(false));
        }
    }
}

/// Counts allocations from now on (`true`, the default) or stops counting them.
pub fn set_counting(on: bool) {
    COUNTING.store(on, Ordering::Relaxed);
}

/// Whether allocations are being counted.
pub fn is_counting() -> bool {
    COUNTING.load(Ordering::Relaxed)
}

/// Allocations (and reallocations) counted so far, all threads.
pub fn count() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// Runs `f` with allocation tracing on, if the environment variable `var` asks for it
/// (`var=N`: the stacks of its first N allocations).
pub async fn trace<T>(var: &str, f: impl std::future::Future<Output = T>) -> T {
    let n = std::env::var(var).ok().and_then(|n| n.parse().ok()).unwrap_or(0);
    TRACE_LEFT.store(n, Ordering::Relaxed);
    TRACING.store(n > 0, Ordering::Relaxed);
    let out = f.await;
    TRACING.store(false, Ordering::Relaxed);
    out
}
