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

/// Asks the CPU for every cache line of `items[at]`, for an item that may span two or more
/// (nothing when past the end).
#[inline]
pub fn lines<T>(items: &[T], at: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(item) = items.get(at) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let start = std::ptr::from_ref(item).cast::<i8>();
        let mut offset = 0;
        while offset < std::mem::size_of::<T>() {
            // SAFETY: a prefetch is a hint: it reads no byte and faults on no address. The address is
            // inside `item` (offset < its size), computed with wrapping_add, so no pointer rule is at stake.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset)) }
            offset += 64;
        }
        let last = start.wrapping_add(std::mem::size_of::<T>().saturating_sub(1));
        // SAFETY: as above; the item's last byte, whose line the steps of 64 may have passed over.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(last) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (items, at);
}
