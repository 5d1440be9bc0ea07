//! Asking the CPU for a cache line ahead of its use: a hint, with no effect on any result. A lookup
//! that branches on what it loads waits for each miss before the next can start; a prefetch
//! does not, so a pass that prefetches a slice's lines first lets their misses overlap.

/// Asks the CPU for the cache line of `items[at]` (nothing when past the end).
#[inline]
pub fn line<T>(items: &[T], at: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(item) = items.get(at) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch is a hint: it reads no byte and faults on no address (this one is in bounds anyway).
        unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(item).cast()) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (items, at);
}
