//! Putting the guest kernel (an ELF `vmlinux`) into guest memory.
//!
//! Copying the ~9.5 MB of loadable segments into fresh guest pages costs
//! thousands of page faults plus the memcpy, which dominated the VMM's set-up
//! time. Instead, each `PT_LOAD` segment's whole pages are mapped straight
//! from the file over the corresponding part of the (anonymous, untouched)
//! guest RAM mapping: `mmap(MAP_PRIVATE | MAP_FIXED)` at the segment's host
//! address. The guest then faults file pages in lazily from the page cache,
//! and its own writes (`.data`, alternatives patching) become private
//! copy-on-write pages; the file is never written. What cannot be mapped is
//! copied:
//!
//! - the partial first and last page of a segment (the file continues with
//!   unrelated bytes, and the rest of the page may belong to the bss or to
//!   another segment);
//! - a whole segment whose file offset and guest address are not congruent
//!   modulo the page size, or that spans two guest memory regions;
//! - everything (linux-loader's [`Elf::load`], the former path) when the
//!   file is not a plain little-endian ELF64 whose segments lie inside the
//!   file and guest memory without overlapping, when the file may be
//!   modified by another user (see below), when an `mmap` fails, or when
//!   [`COPY_KERNEL_ENV`] is set.
//!
//! The bss (`p_memsz > p_filesz`) stays anonymous memory, zero because guest
//! RAM is fresh; the entry point is the ELF header's, as with linux-loader.
//!
//! Memory ownership: the overlays lie inside the guest RAM mapping that
//! `GuestMemoryMmap` owns; its `munmap` of the whole region on drop removes
//! them with it (no separate bookkeeping). KVM sees one memslot per region
//! either way; the overlays are made before the memslots are registered.
//!
//! Caveat: `MAP_PRIVATE` pages the guest has not touched yet still reflect
//! later *in-place* writes to the kernel file (and reading a page cut off by
//! an in-place truncation fails with SIGBUS/EFAULT). A kernel that VMs may be
//! running must therefore be replaced by creating a new file and renaming it
//! (or unlinking the old one first), never rewritten in place: `install` (as
//! `make kernel` uses: it unlinks, then creates with `O_EXCL`),
//! `kernel-config/build.sh` (copies into a fresh directory, then renames) and
//! `mv` do that; `cp` onto the old file does not. To keep other users from
//! changing a running guest's kernel this way, the file is only mapped when
//! it is owned by root or by the VMM's effective user and is not writable by
//! group or others; otherwise it is copied.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use linux_loader::elf::{Elf64_Ehdr, Elf64_Phdr, PT_LOAD};
use linux_loader::loader::{elf::Elf, KernelLoader};
use vm_memory::{
    Address, ByteValued, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};

/// Benchmark/diagnostic knob: when set (to anything), the kernel is always
/// copied into guest memory (the pre-mapping path) instead of mapped.
pub const COPY_KERNEL_ENV: &str = "BERTH_VMM_COPY_KERNEL";

/// Most program headers a kernel may have (Linux has about five).
const MAX_PHDRS: usize = 64;

/// Errors loading the kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// Opening the kernel failed.
    #[error("opening kernel {0}")]
    Open(PathBuf, #[source] std::io::Error),
    /// Loading the kernel ELF failed (copy path).
    #[error("loading kernel {0}")]
    Load(PathBuf, #[source] linux_loader::loader::Error),
    /// Reading a segment's partial page from the file failed.
    #[error("reading kernel {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// Writing a segment's partial page into guest memory failed.
    #[error("copying kernel {0} into guest memory")]
    Write(PathBuf, #[source] vm_memory::GuestMemoryError),
}

/// One step of placing a segment in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Map `len` bytes (whole pages) of the file at `offset` to `guest`.
    Map {
        /// Guest physical address (page aligned).
        guest: GuestAddress,
        /// File offset (page aligned).
        offset: u64,
        /// Length (a multiple of the page size).
        len: u64,
    },
    /// Copy `len` bytes of the file at `offset` to `guest`.
    Copy {
        /// Guest physical address.
        guest: GuestAddress,
        /// File offset.
        offset: u64,
        /// Length.
        len: u64,
    },
}

/// How the kernel will be, or was, placed.
#[derive(Debug)]
enum Plan {
    /// Map and copy per `ops` (maps first), entry from the ELF header.
    Mapped { entry: GuestAddress, ops: Vec<Op> },
    /// linux-loader's `Elf::load` (copies everything).
    Copy,
}

/// A kernel file opened and, if possible, already mapped into guest memory;
/// [`PreparedKernel::finish`] does the copying that remains.
#[derive(Debug)]
pub struct PreparedKernel {
    path: PathBuf,
    file: File,
    plan: Plan,
}

/// Whether a kernel file with this owner and mode may be mapped by a VMM
/// running as `euid`: `Err(reason)` if another user could rewrite it in place.
pub fn mapping_allowed(owner: u32, mode: u32, euid: u32) -> Result<(), &'static str> {
    if mode & libc::S_IFMT != libc::S_IFREG {
        return Err("not a regular file");
    }
    if owner != 0 && owner != euid {
        return Err("owned by another user");
    }
    if mode & 0o022 != 0 {
        return Err("writable by group or others");
    }
    Ok(())
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ps = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(ps).ok().filter(|p| *p > 0).unwrap_or(4096)
}

/// Reads the ELF header and program headers; `Err(reason)` if the file is
/// not something this module maps (linux-loader then loads it or reports
/// the error).
fn read_headers(file: &File) -> Result<(Elf64_Ehdr, Vec<Elf64_Phdr>), &'static str> {
    let mut ehdr = Elf64_Ehdr::default();
    file.read_exact_at(ehdr.as_mut_slice(), 0)
        .map_err(|_| "no ELF header")?;
    let id = &ehdr.e_ident;
    if id[..4] != [0x7f, b'E', b'L', b'F'] {
        return Err("not an ELF file");
    }
    // EI_CLASS = ELFCLASS64, EI_DATA = ELFDATA2LSB.
    if id[4] != 2 || id[5] != 1 {
        return Err("not a little-endian ELF64 file");
    }
    if usize::from(ehdr.e_phentsize) != std::mem::size_of::<Elf64_Phdr>()
        || usize::from(ehdr.e_phnum) > MAX_PHDRS
        || ehdr.e_phoff < std::mem::size_of::<Elf64_Ehdr>() as u64
    {
        return Err("unusual program header table");
    }
    let mut phdrs = Vec::with_capacity(usize::from(ehdr.e_phnum));
    for i in 0..u64::from(ehdr.e_phnum) {
        let mut phdr = Elf64_Phdr::default();
        let at = ehdr
            .e_phoff
            .checked_add(i * std::mem::size_of::<Elf64_Phdr>() as u64)
            .ok_or("program header offset overflows")?;
        file.read_exact_at(phdr.as_mut_slice(), at)
            .map_err(|_| "truncated program header table")?;
        phdrs.push(phdr);
    }
    Ok((ehdr, phdrs))
}

/// Host address of guest range `[addr, addr + len)` if it lies inside one
/// region of `mem`.
fn host_range(mem: &GuestMemoryMmap<()>, addr: GuestAddress, len: u64) -> Option<u64> {
    let region = mem.find_region(addr)?;
    let off = addr.checked_offset_from(region.start_addr())?;
    if off.checked_add(len)? > region.len() {
        return None;
    }
    let host = region.get_host_address(MemoryRegionAddress(off)).ok()?;
    Some(host as u64)
}

/// Plans how to place the `PT_LOAD` segments of `phdrs` (from a file of
/// `file_len` bytes) in `mem`: whole pages mapped, the rest copied; `Err`
/// if the file must go through linux-loader instead.
pub fn plan_segments(
    mem: &GuestMemoryMmap<()>,
    phdrs: &[Elf64_Phdr],
    file_len: u64,
    page: u64,
) -> Result<Vec<Op>, &'static str> {
    let loads: Vec<&Elf64_Phdr> = phdrs
        .iter()
        .filter(|p| p.p_type == PT_LOAD && p.p_filesz > 0)
        .collect();
    let mut ranges = Vec::with_capacity(loads.len());
    for p in &loads {
        let file_end = p
            .p_offset
            .checked_add(p.p_filesz)
            .ok_or("segment file range overflows")?;
        if file_end > file_len {
            return Err("segment extends past the end of the file");
        }
        let mem_end = p
            .p_paddr
            .checked_add(p.p_memsz.max(p.p_filesz))
            .ok_or("segment address range overflows")?;
        if !mem.address_in_range(GuestAddress(p.p_paddr))
            || !mem.address_in_range(GuestAddress(mem_end - 1))
        {
            return Err("segment outside guest memory");
        }
        ranges.push((p.p_paddr, mem_end));
    }
    ranges.sort_unstable();
    if ranges.windows(2).any(|w| w[0].1 > w[1].0) {
        return Err("segments overlap");
    }

    let mut maps = Vec::new();
    let mut copies = Vec::new();
    for p in loads {
        let (paddr, offset, filesz) = (p.p_paddr, p.p_offset, p.p_filesz);
        let whole = Op::Copy {
            guest: GuestAddress(paddr),
            offset,
            len: filesz,
        };
        let host = match host_range(mem, GuestAddress(paddr), filesz) {
            Some(h) if h % page == offset % page => h,
            // Spans two regions, or offset and address not congruent.
            _ => {
                copies.push(whole);
                continue;
            }
        };
        // Whole pages inside [paddr, paddr + filesz), in host terms.
        let head = (page - host % page) % page;
        let map_len = filesz.saturating_sub(head) / page * page;
        if map_len == 0 {
            copies.push(whole);
            continue;
        }
        if head > 0 {
            copies.push(Op::Copy {
                guest: GuestAddress(paddr),
                offset,
                len: head,
            });
        }
        maps.push(Op::Map {
            guest: GuestAddress(paddr + head),
            offset: offset + head,
            len: map_len,
        });
        let tail = filesz - head - map_len;
        if tail > 0 {
            copies.push(Op::Copy {
                guest: GuestAddress(paddr + head + map_len),
                offset: offset + head + map_len,
                len: tail,
            });
        }
    }
    // Maps first: a copy must never be replaced by a later map.
    maps.extend(copies);
    Ok(maps)
}

/// Maps `len` bytes of `file` at `offset` over guest memory at `guest`
/// (an [`Op::Map`] from [`plan_segments`]).
fn map_segment(
    mem: &GuestMemoryMmap<()>,
    file: &File,
    guest: GuestAddress,
    offset: u64,
    len: u64,
) -> std::io::Result<()> {
    let invalid = || std::io::Error::from_raw_os_error(libc::EINVAL);
    let host = host_range(mem, guest, len).ok_or_else(invalid)?;
    let offset = libc::off_t::try_from(offset).map_err(|_| invalid())?;
    let len = usize::try_from(len).map_err(|_| invalid())?;
    // SAFETY: [host, host + len) lies inside one guest RAM mapping owned by
    // `mem` (checked by `host_range`), page aligned (planned so), and not yet
    // referenced by anything but `mem`: no vCPU runs, no memslot is
    // registered yet and no device holds guest buffers. MAP_FIXED replaces
    // those pages with a private file mapping of the same size and
    // protection, so every pointer into the region stays valid; `mem`'s
    // munmap of the whole region on drop unmaps it too.
    let ret = unsafe {
        libc::mmap(
            host as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
            file.as_raw_fd(),
            offset,
        )
    };
    if ret == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    if ret as u64 != host {
        // Cannot happen with MAP_FIXED.
        return Err(invalid());
    }
    Ok(())
}

impl PreparedKernel {
    /// Opens the kernel at `path` and, when `allow_map` and the file
    /// qualifies, maps its segments' whole pages into `mem` (see the module
    /// documentation). Call before guest memory is registered with KVM.
    pub fn prepare(
        mem: &GuestMemoryMmap<()>,
        path: &Path,
        allow_map: bool,
    ) -> Result<Self, KernelError> {
        let file = File::open(path).map_err(|e| KernelError::Open(path.to_owned(), e))?;
        let plan = if allow_map {
            match Self::map(mem, &file) {
                Ok((entry, ops)) => Plan::Mapped { entry, ops },
                Err(reason) => {
                    log::debug!(
                        "vmm: kernel {}: copying it into guest memory ({reason})",
                        path.display()
                    );
                    Plan::Copy
                }
            }
        } else {
            log::debug!(
                "vmm: kernel {}: copying it into guest memory ({COPY_KERNEL_ENV} set)",
                path.display()
            );
            Plan::Copy
        };
        Ok(PreparedKernel {
            path: path.to_owned(),
            file,
            plan,
        })
    }

    /// Checks the file, plans and performs the maps; returns the entry point
    /// and the plan (whose copies remain to do).
    fn map(mem: &GuestMemoryMmap<()>, file: &File) -> Result<(GuestAddress, Vec<Op>), String> {
        let meta = file.metadata().map_err(|e| format!("fstat: {e}"))?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        mapping_allowed(meta.uid(), meta.mode(), euid).map_err(str::to_string)?;
        let (ehdr, phdrs) = read_headers(file).map_err(str::to_string)?;
        if ehdr.e_entry < crate::arch::x86_64::layout::HIMEM_START.raw_value() {
            return Err("entry point below 1 MiB".into());
        }
        let ops = plan_segments(mem, &phdrs, meta.len(), page_size()).map_err(str::to_string)?;
        let (mut maps, mut mapped) = (0, 0);
        for op in &ops {
            if let Op::Map { guest, offset, len } = *op {
                // On failure, segments mapped so far are simply overwritten
                // by the copy (into their private pages): same contents.
                map_segment(mem, file, guest, offset, len)
                    .map_err(|e| format!("mmap of {len:#x} bytes at {guest:#x?} failed: {e}"))?;
                maps += 1;
                mapped += len;
            }
        }
        log::debug!(
            "vmm: kernel: {maps} segments mapped copy-on-write ({} KiB), {} partial pages to copy",
            mapped >> 10,
            ops.len() - maps
        );
        Ok((GuestAddress(ehdr.e_entry), ops))
    }

    /// Whether segments were mapped (false: everything is copied).
    pub fn mapped(&self) -> bool {
        matches!(self.plan, Plan::Mapped { .. })
    }

    /// Copies what was not mapped into `mem` (everything, on the copy path);
    /// returns the kernel entry point.
    pub fn finish(&self, mem: &GuestMemoryMmap<()>) -> Result<GuestAddress, KernelError> {
        let read_err = |e| KernelError::Read(self.path.clone(), e);
        match &self.plan {
            Plan::Copy => {
                let mut file = self.file.try_clone().map_err(read_err)?;
                let res = Elf::load(
                    mem,
                    None,
                    &mut file,
                    Some(crate::arch::x86_64::layout::HIMEM_START),
                )
                .map_err(|e| KernelError::Load(self.path.clone(), e))?;
                Ok(res.kernel_load)
            }
            Plan::Mapped { entry, ops } => {
                let mut buf = Vec::new();
                for op in ops {
                    if let Op::Copy { guest, offset, len } = *op {
                        let len = usize::try_from(len).map_err(|_| {
                            read_err(std::io::Error::from_raw_os_error(libc::EFBIG))
                        })?;
                        buf.resize(len, 0);
                        self.file
                            .read_exact_at(&mut buf, offset)
                            .map_err(read_err)?;
                        mem.write_slice(&buf, guest)
                            .map_err(|e| KernelError::Write(self.path.clone(), e))?;
                    }
                }
                Ok(*entry)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    const PAGE: u64 = 4096;

    fn phdr(paddr: u64, offset: u64, filesz: u64, memsz: u64) -> Elf64_Phdr {
        Elf64_Phdr {
            p_type: PT_LOAD,
            p_offset: offset,
            p_paddr: paddr,
            p_vaddr: paddr,
            p_filesz: filesz,
            p_memsz: memsz,
            p_align: PAGE,
            ..Default::default()
        }
    }

    /// Byte at file offset `i`: differs between neighbouring pages.
    fn pattern(i: u64) -> u8 {
        (i.wrapping_mul(7) ^ (i >> 12).wrapping_mul(13) ^ 0x5a) as u8
    }

    /// Writes an ELF64 file with `phdrs` (headers at 0, pattern bytes
    /// everywhere else up to `len`).
    fn write_elf(path: &Path, entry: u64, phdrs: &[Elf64_Phdr], len: u64) {
        let mut data: Vec<u8> = (0..len).map(pattern).collect();
        let mut ehdr = Elf64_Ehdr::default();
        ehdr.e_ident[..4].copy_from_slice(&[0x7f, b'E', b'L', b'F']);
        ehdr.e_ident[4] = 2;
        ehdr.e_ident[5] = 1;
        ehdr.e_ident[6] = 1;
        ehdr.e_type = 2;
        ehdr.e_machine = 62;
        ehdr.e_version = 1;
        ehdr.e_entry = entry;
        ehdr.e_phoff = 64;
        ehdr.e_ehsize = 64;
        ehdr.e_phentsize = std::mem::size_of::<Elf64_Phdr>() as u16;
        ehdr.e_phnum = phdrs.len() as u16;
        data[..64].copy_from_slice(ehdr.as_slice());
        for (i, p) in phdrs.iter().enumerate() {
            let at = 64 + i * 56;
            data[at..at + 56].copy_from_slice(p.as_slice());
        }
        let mut f = File::create(path).unwrap();
        f.write_all(&data).unwrap();
        f.set_permissions(std::fs::Permissions::from_mode(0o644))
            .unwrap();
    }

    fn guest(mem: &GuestMemoryMmap<()>, addr: u64, len: u64) -> Vec<u8> {
        let mut buf = vec![0u8; len as usize];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    fn file_bytes(offset: u64, len: u64) -> Vec<u8> {
        (offset..offset + len).map(pattern).collect()
    }

    fn maps_of(path: &Path) -> usize {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let name = path.display().to_string();
        maps.lines().filter(|l| l.ends_with(&name)).count()
    }

    // Segment A: page aligned, 2 whole pages + a partial one, then bss.
    // Segment B: offset and address not congruent: copied whole.
    // Segment C: starts and ends mid-page: head and tail copied, one page mapped.
    fn segments() -> [Elf64_Phdr; 3] {
        [
            phdr(0x20_0000, 0x1000, 0x2800, 0x5000),
            phdr(0x30_0010, 0x4000, 0x1800, 0x1800),
            phdr(0x40_0800, 0x6800, 0x2000, 0x2000),
        ]
    }

    #[test]
    fn plan_maps_whole_pages_and_copies_the_rest() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
        let ops = plan_segments(&mem, &segments(), 0x10000, PAGE).unwrap();
        let g = GuestAddress;
        assert_eq!(
            ops,
            [
                Op::Map {
                    guest: g(0x20_0000),
                    offset: 0x1000,
                    len: 0x2000
                },
                Op::Map {
                    guest: g(0x40_1000),
                    offset: 0x7000,
                    len: 0x1000
                },
                Op::Copy {
                    guest: g(0x20_2000),
                    offset: 0x3000,
                    len: 0x800
                },
                Op::Copy {
                    guest: g(0x30_0010),
                    offset: 0x4000,
                    len: 0x1800
                },
                Op::Copy {
                    guest: g(0x40_0800),
                    offset: 0x6800,
                    len: 0x800
                },
                Op::Copy {
                    guest: g(0x40_2000),
                    offset: 0x8000,
                    len: 0x800
                },
            ]
        );
        // Refusals: past the end of the file, outside memory, overlapping.
        assert!(plan_segments(&mem, &segments(), 0x8000, PAGE).is_err());
        let out = [phdr(0x7f_f000, 0x1000, 0x2000, 0x2000)];
        assert!(plan_segments(&mem, &out, 0x10000, PAGE).is_err());
        let overlap = [
            phdr(0x20_0000, 0x1000, 0x1000, 0x3000),
            phdr(0x20_2000, 0x3000, 0x1000, 0x1000),
        ];
        assert!(plan_segments(&mem, &overlap, 0x10000, PAGE).is_err());
    }

    #[test]
    fn segment_across_regions_is_copied() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 1 << 20),
            (GuestAddress(1 << 20), 1 << 20),
        ])
        .unwrap();
        let seg = [phdr(0xf_f000, 0x1000, 0x2000, 0x2000)];
        assert_eq!(
            plan_segments(&mem, &seg, 0x10000, PAGE).unwrap(),
            [Op::Copy {
                guest: GuestAddress(0xf_f000),
                offset: 0x1000,
                len: 0x2000
            }]
        );
    }

    #[test]
    fn mapped_kernel_matches_file_and_stays_private() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("vmlinux");
        write_elf(&path, 0x20_0000, &segments(), 0x10000);
        let original = std::fs::read(&path).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();

        let kernel = PreparedKernel::prepare(&mem, &path, true).unwrap();
        assert!(kernel.mapped());
        assert_eq!(maps_of(&path), 2, "two segments mapped from the file");
        let entry = kernel.finish(&mem).unwrap();
        assert_eq!(entry, GuestAddress(0x20_0000));

        for p in segments() {
            let got = guest(&mem, p.p_paddr, p.p_filesz);
            assert_eq!(got, file_bytes(p.p_offset, p.p_filesz), "{p:x?}");
            // bss and the rest of the tail page: zero, not the file's bytes.
            let bss = guest(&mem, p.p_paddr + p.p_filesz, p.p_memsz - p.p_filesz + 0x100);
            assert!(bss.iter().all(|b| *b == 0), "{p:x?}");
        }
        // Before segment C's head, in its first page: untouched.
        assert!(guest(&mem, 0x40_0000, 0x800).iter().all(|b| *b == 0));

        // Guest writes to a mapped page are private.
        mem.write_slice(&[0xee; 16], GuestAddress(0x20_0000))
            .unwrap();
        assert_eq!(guest(&mem, 0x20_0000, 16), [0xee; 16]);
        assert_eq!(std::fs::read(&path).unwrap(), original);

        // Dropping guest memory unmaps the overlays with it.
        drop(mem);
        assert_eq!(maps_of(&path), 0);
    }

    #[test]
    fn copy_path_gives_the_same_memory() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("vmlinux");
        write_elf(&path, 0x20_0000, &segments(), 0x10000);
        let load = |allow_map| {
            let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
            let k = PreparedKernel::prepare(&mem, &path, allow_map).unwrap();
            assert_eq!(k.mapped(), allow_map);
            let entry = k.finish(&mem).unwrap();
            (entry, guest(&mem, 0x20_0000, 0x30_0000))
        };
        assert_eq!(load(true), load(false));

        // A group-writable file is copied, not mapped.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
        let k = PreparedKernel::prepare(&mem, &path, true).unwrap();
        assert!(!k.mapped());
        assert_eq!(k.finish(&mem).unwrap(), GuestAddress(0x20_0000));
    }

    #[test]
    fn mapping_policy() {
        let reg = libc::S_IFREG;
        assert!(mapping_allowed(0, reg | 0o644, 0).is_ok());
        assert!(mapping_allowed(0, reg | 0o644, 1000).is_ok());
        assert!(mapping_allowed(1000, reg | 0o600, 1000).is_ok());
        assert!(mapping_allowed(1000, reg | 0o644, 0).is_err());
        assert!(mapping_allowed(0, reg | 0o664, 0).is_err());
        assert!(mapping_allowed(0, reg | 0o646, 0).is_err());
        assert!(mapping_allowed(0, libc::S_IFDIR | 0o755, 0).is_err());
    }

    #[test]
    fn not_an_elf_goes_to_linux_loader() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("bzImage");
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
        let k = PreparedKernel::prepare(&mem, &path, true).unwrap();
        assert!(!k.mapped());
        assert!(matches!(k.finish(&mem), Err(KernelError::Load(..))));
    }
}
