//! Handing freed memory back to the system between the phases of a long command. glibc's
//! malloc keeps the pages of freed memory inside its heaps; the next phase, allocating
//! differently, touches new pages, and the peak resident size becomes the sum of the phases
//! rather than the largest of them.

/// Returns every whole free page of the allocator's heaps to the system (`malloc_trim`).
/// A no-op where the C library is not glibc.
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks and releases the allocator's own free lists; it is
        // safe to call from any thread at any time. Its result only says whether anything
        // was released.
        let _ = unsafe { libc::malloc_trim(0) };
    }
}
