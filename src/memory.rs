//! Handing freed memory back to the system between the phases of a long command, and as a
//! phase consumes a large list ([`Dwindling`]). glibc's malloc keeps the pages of freed memory
//! inside its heaps; the next phase, allocating differently, touches new pages, and the peak
//! resident size becomes the sum of the phases rather than the largest of them.

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

/// The items of a list, in order, the list giving back its room as they are taken: what a
/// phase builds from a large list need not be held beside all of it (the requests of 33,340
/// images were 7 MiB held to the end of resolving them, and the resolved images 13 MiB held
/// to the end of assembling the bundle's lists from them).
pub struct Dwindling<T> {
    /// The items left, the next one last.
    left: Vec<T>,
}

impl<T> Dwindling<T> {
    pub fn new(mut items: Vec<T>) -> Dwindling<T> {
        items.reverse();
        Dwindling { left: items }
    }
}

impl<T> Iterator for Dwindling<T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        let next = self.left.pop();
        // A list shrinks where it is (glibc's realloc moves nothing to shrink, and a large
        // list's pages are unmapped): given back a MiB at a time.
        let spare = (self.left.capacity() - self.left.len()) * std::mem::size_of::<T>();
        if spare >= 1 << 20 {
            self.left.shrink_to_fit();
        }
        next
    }
}
