//! A bump allocator over a static arena, used as the global allocator.
//!
//! musl's malloc asks the kernel for memory in small steps (brk, mmap and
//! munmap of 4 KiB groups): ~14 guest syscalls on guest-init's happy path,
//! ~50 ms on nested KVM. guest-init allocates little and mostly for its whole
//! life, so a bump pointer in .bss serves it without any syscall (pages are
//! only touched when used). Freeing the most recent allocation rolls the
//! pointer back, which makes short-lived buffers in loops reuse the same
//! memory; anything that does not fit goes to the system allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering};

pub const ARENA_SIZE: usize = 1 << 20;

#[repr(C, align(4096))]
struct Memory(UnsafeCell<[u8; ARENA_SIZE]>);

// SAFETY: disjoint ranges of the buffer are handed out through an atomic
// bump pointer; nothing else accesses it.
unsafe impl Sync for Memory {}

pub struct Arena {
    mem: Memory,
    /// Offset of the first free byte.
    top: AtomicUsize,
}

impl Arena {
    pub const fn new() -> Arena {
        Arena {
            mem: Memory(UnsafeCell::new([0; ARENA_SIZE])),
            top: AtomicUsize::new(0),
        }
    }

    fn base(&self) -> usize {
        self.mem.0.get() as usize
    }

    fn contains(&self, p: *mut u8) -> bool {
        let a = p as usize;
        a >= self.base() && a < self.base() + ARENA_SIZE
    }

    /// Bump-allocate, or None when the arena is full.
    fn bump(&self, layout: Layout) -> Option<*mut u8> {
        let base = self.base();
        let mut cur = self.top.load(Ordering::Relaxed);
        loop {
            let start = (base + cur).checked_next_multiple_of(layout.align())? - base;
            let end = start.checked_add(layout.size())?;
            if end > ARENA_SIZE {
                return None;
            }
            match self
                .top
                .compare_exchange_weak(cur, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                // SAFETY: start < end <= ARENA_SIZE, so the pointer is in the buffer.
                Ok(_) => return Some(unsafe { self.mem.0.get().cast::<u8>().add(start) }),
                Err(now) => cur = now,
            }
        }
    }
}

impl Default for Arena {
    fn default() -> Self {
        Arena::new()
    }
}

// SAFETY: every pointer returned is either a fresh, suitably aligned range of
// the arena that no other live allocation overlaps, or comes from System;
// dealloc/realloc route each pointer back to where it came from.
unsafe impl GlobalAlloc for Arena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.bump(layout) {
            Some(p) => p,
            // SAFETY: forwarded with the caller's (valid, non-zero-size) layout.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if self.contains(ptr) {
            // Roll back if this was the last allocation; otherwise leak it.
            let off = ptr as usize - self.base();
            let _ = self.top.compare_exchange(
                off + layout.size(),
                off,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        } else {
            // SAFETY: ptr came from System.alloc with this layout.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if self.contains(ptr) {
            // Grow or shrink in place when it is the last allocation.
            let off = ptr as usize - self.base();
            if let Some(new_end) = off.checked_add(new_size) {
                if new_end <= ARENA_SIZE
                    && self
                        .top
                        .compare_exchange(
                            off + layout.size(),
                            new_end,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        )
                        .is_ok()
                {
                    return ptr;
                }
            }
            // Shrinking an older allocation: keep it where it is.
            if new_size <= layout.size() {
                return ptr;
            }
        }
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        // SAFETY: new_layout is valid and non-zero-size (new_size > 0 per
        // the GlobalAlloc contract).
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both ranges are valid for min(old, new) bytes and do
            // not overlap (new is a fresh allocation).
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bump_rollback_realloc_and_overflow() {
        static A: Arena = Arena::new();
        let a = &A;
        let l = |size, align| Layout::from_size_align(size, align).unwrap();
        // SAFETY: (test) pointers are used within their layouts only.
        unsafe {
            let p1 = a.alloc(l(10, 1));
            let p2 = a.alloc(l(8, 8));
            assert_eq!(p2 as usize % 8, 0);
            assert!(p2 as usize >= p1 as usize + 10);
            p2.write_bytes(0xaa, 8);
            // Freeing the last allocation rolls back; the next one reuses it.
            a.dealloc(p2, l(8, 8));
            let p3 = a.alloc(l(8, 8));
            assert_eq!(p3, p2);
            // In-place growth of the last allocation keeps the contents.
            p3.write_bytes(0x5a, 8);
            let p4 = a.realloc(p3, l(8, 8), 4096);
            assert_eq!(p4, p3);
            assert_eq!(*p4.add(7), 0x5a);
            // Growth of an older allocation moves and copies it.
            p1.write_bytes(7, 10);
            let p5 = a.realloc(p1, l(10, 1), 100);
            assert_ne!(p5, p1);
            assert_eq!(std::slice::from_raw_parts(p5, 10), &[7u8; 10]);
            // Too big for the arena: served by System and freed there.
            let big = a.alloc(l(ARENA_SIZE * 2, 16));
            assert!(!big.is_null());
            assert!(!a.contains(big));
            a.dealloc(big, l(ARENA_SIZE * 2, 16));
            // Filling the arena falls back to System too.
            let rest = ARENA_SIZE - a.top.load(Ordering::Relaxed);
            let fill = a.alloc(l(rest, 1));
            assert!(a.contains(fill));
            let over = a.alloc(l(64, 8));
            assert!(!a.contains(over));
            a.dealloc(over, l(64, 8));
        }
    }
}
