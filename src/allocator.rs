//! The C allocator's settings for one command.
//!
//! A run of crabbox is short and builds its state from nothing: a
//! 10,000-member pond's pages, leases, peers and rendered files, tens of
//! MiB made and dropped within a second. glibc's defaults are made for
//! processes that live long and must hand memory back: the heap grows by
//! 128 KiB at a time (a `brk` or `mprotect` call each, then a page fault
//! for every page), a freed block over 128 KiB goes back to the kernel at
//! once, and the next one like it is mapped and faulted in afresh. For a
//! command that exits soon after, that churn was a tenth of planning a
//! 10,000-member pond. So the heap grows 32 MiB at a time, keeps what is
//! freed (up to 128 MiB), and serves blocks up to 32 MiB itself. Memory
//! is only reserved by this, not touched: a small pond's command uses no
//! more than before, and a 10,000-member plan peaks ~14 MiB higher.
//!
//! The heaps per thread stay as they are: one heap for every thread took
//! 30 MiB off that plan's peak, but an apply's fifty parallel steps (and
//! the blocking threads writing their claims) then waited on its lock and
//! spent two to four times the CPU.

/// Tunes the C allocator for a short command (see the module
/// documentation). glibc's only: other C libraries keep their defaults.
pub fn tune_for_a_command() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MIB: libc::c_int = 1 << 20;
        for (param, value) in [
            (libc::M_TOP_PAD, 32 * MIB),
            (libc::M_MMAP_THRESHOLD, 32 * MIB),
            (libc::M_TRIM_THRESHOLD, 128 * MIB),
        ] {
            // SAFETY: mallopt changes settings of glibc's allocator, which
            // is thread-safe; a value it refuses leaves the default.
            unsafe {
                libc::mallopt(param, value);
            }
        }
    }
}
