//! virtio-balloon device state and the reporting-queue processor.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, GuestAddress, GuestMemory, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::super::{ActivateError, GuestMem, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};

/// virtio device id of a memory balloon.
pub const TYPE_BALLOON: u32 = 5;
/// Feature bit: the driver reports free pages on the reporting queue.
pub const VIRTIO_BALLOON_F_REPORTING: u64 = 1 << 5;
/// Queue size offered (the driver reports at most 32 ranges at a time).
pub const QUEUE_SIZE: u16 = 64;
/// Queues: inflate, deflate, then (with REPORTING only, so the driver
/// numbers it 2) the reporting queue.
pub const NUM_QUEUES: usize = 3;
/// Index of the reporting queue.
pub const REPORTING_QUEUE: usize = 2;
/// Most descriptors of one chain looked at.
const MAX_CHAIN_DESCS: usize = 64;
/// Reported ranges must be whole host pages.
const PAGE_SIZE: u64 = 4096;

/// What happened to reports, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BalloonCounters {
    /// Ranges dropped from the host.
    pub reported_ranges: u64,
    /// Their bytes.
    pub reported_bytes: u64,
    /// Ranges refused: unaligned, empty, outside guest RAM, or across
    /// regions.
    pub bad_ranges: u64,
    /// `madvise` failures.
    pub madvise_errors: u64,
}

/// Drops `[addr, addr + len)` of guest RAM from the host, if it is whole
/// pages inside one guest memory region.
fn discard(mem: &GuestMem, addr: u64, len: u64, counters: &mut BalloonCounters) {
    let aligned = addr.is_multiple_of(PAGE_SIZE) && len.is_multiple_of(PAGE_SIZE) && len > 0;
    let host = aligned
        .then(|| mem.find_region(GuestAddress(addr)))
        .flatten()
        .and_then(|r| {
            let off = GuestAddress(addr).checked_offset_from(r.start_addr())?;
            (off.checked_add(len)? <= r.len()).then(|| (r.as_ptr() as usize) + off as usize)
        });
    let Some(host) = host else {
        counters.bad_ranges += 1;
        log::debug!("vmm: virtio-balloon: bad free page report {addr:#x}+{len:#x} ignored");
        return;
    };
    // SAFETY: [host, host + len) lies inside a guest RAM mapping owned by
    // `mem` (checked above); MADV_DONTNEED only drops its pages, which the
    // guest reported free: they read back as zeros (or the kernel file's
    // content where a kernel segment is mapped) when next touched.
    let r = unsafe { libc::madvise(host as *mut libc::c_void, len as usize, libc::MADV_DONTNEED) };
    if r == 0 {
        counters.reported_ranges += 1;
        counters.reported_bytes += len;
    } else {
        counters.madvise_errors += 1;
        log::debug!(
            "vmm: virtio-balloon: madvise {addr:#x}+{len:#x}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Serves the reporting queue: every descriptor of every chain is a free
/// range of guest memory to drop; chains are returned with length 0.
/// Returns whether any chain was completed.
pub fn process_reporting_queue(
    mem: &GuestMem,
    queue: &mut Queue,
    counters: &mut BalloonCounters,
) -> bool {
    let mut used_any = false;
    // Bounded by the queue size: each pass consumes a chain or stops.
    for _ in 0..=usize::from(QUEUE_SIZE) {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            break;
        };
        let head = chain.head_index();
        for d in chain.take(MAX_CHAIN_DESCS) {
            discard(mem, d.addr().raw_value(), u64::from(d.len()), counters);
        }
        if let Err(e) = queue.add_used(mem, head, 0) {
            log::error!("vmm: virtio-balloon: add_used: {e}");
            break;
        }
        used_any = true;
    }
    used_any
}

/// Returns every chain of an inflate/deflate queue unused: the balloon
/// never asks for pages, so a driver posting there is ignored.
fn drain_queue(mem: &GuestMem, queue: &mut Queue) -> bool {
    let mut used_any = false;
    for _ in 0..=usize::from(QUEUE_SIZE) {
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            break;
        };
        if queue.add_used(mem, chain.head_index(), 0).is_err() {
            break;
        }
        used_any = true;
    }
    used_any
}

/// The virtio-balloon device.
pub struct Balloon {
    acked_features: u64,
    queue_sizes: [u16; NUM_QUEUES],
    queues: Vec<Queue>,
    mem: Option<GuestMem>,
    interrupt: Interrupt,
    queue_evts: Vec<EventFd>,
    counters: BalloonCounters,
}

impl Balloon {
    /// A balloon signalling `interrupt`.
    pub fn new(interrupt: Interrupt) -> std::io::Result<Self> {
        let queue_evts = (0..NUM_QUEUES)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Balloon {
            acked_features: 0,
            queue_sizes: [QUEUE_SIZE; NUM_QUEUES],
            queues: Vec::new(),
            mem: None,
            interrupt,
            queue_evts,
            counters: BalloonCounters::default(),
        })
    }

    /// The eventfds the driver's QueueNotify signals, by queue index.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// Report counters.
    pub fn counters(&self) -> BalloonCounters {
        self.counters
    }

    /// Serves queue `index` after a notification.
    pub fn process_queue_event(&mut self, index: usize) {
        let (Some(queue), Some(mem)) = (self.queues.get_mut(index), self.mem.as_ref()) else {
            return;
        };
        if !queue.ready() {
            return;
        }
        let used = if index == REPORTING_QUEUE {
            let before = self.counters.reported_bytes;
            let used = process_reporting_queue(mem, queue, &mut self.counters);
            log::trace!(
                "vmm: virtio-balloon: {} KiB reported free",
                (self.counters.reported_bytes - before) >> 10
            );
            used
        } else {
            drain_queue(mem, queue)
        };
        if used {
            self.interrupt.signal_used_queue();
        }
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        TYPE_BALLOON
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }
    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_REPORTING
    }
    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // num_pages, actual, free_page_hint_cmd_id, poison_val: all 0.
        data.fill(0);
    }
    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        // The driver writes `actual` (always 0 here).
        log::trace!("vmm: virtio-balloon: config write at {offset:#x} ignored");
    }
    fn activate(&mut self, mem: GuestMem, queues: Vec<Queue>) -> Result<(), ActivateError> {
        if queues.len() != NUM_QUEUES {
            return Err(ActivateError::QueueCount {
                expected: NUM_QUEUES,
                got: queues.len(),
            });
        }
        // inflate and deflate always; the reporting queue with its feature.
        let needed = if self.acked_features & VIRTIO_BALLOON_F_REPORTING != 0 {
            NUM_QUEUES
        } else {
            REPORTING_QUEUE
        };
        if let Some(i) = queues[..needed].iter().position(|q| !q.is_valid(&mem)) {
            return Err(ActivateError::InvalidQueue(i));
        }
        self.queues = queues;
        self.mem = Some(mem);
        // Reports may have been queued before activation: the event loop
        // serves them (activation runs on a vCPU thread).
        for evt in &self.queue_evts {
            if let Err(e) = evt.write(1) {
                log::error!("vmm: virtio-balloon: waking the event loop: {e}");
            }
        }
        Ok(())
    }
    fn reset(&mut self) {
        self.queues.clear();
        self.mem = None;
        self.acked_features = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestMemoryMmap};

    const F_WRITE: u16 = 2;
    const F_NEXT: u16 = 1;
    const MEM: u64 = 16 << 20;

    #[test]
    fn reported_ranges_are_dropped_and_bad_ones_refused() {
        let m: GuestMemoryMmap<()> =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        // Dirty 1 MiB at 8 MiB; it must read back as zeros once reported.
        let dirty = GuestAddress(8 << 20);
        m.write_slice(&vec![0xab; 1 << 20], dirty).unwrap();
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(
            &[
                // A good range, then bad ones in the same chain.
                RawDescriptor::from(SplitDescriptor::new(8 << 20, 1 << 20, F_WRITE | F_NEXT, 1)),
                RawDescriptor::from(SplitDescriptor::new(
                    (8 << 20) + 1,
                    4096,
                    F_WRITE | F_NEXT,
                    2,
                )),
                RawDescriptor::from(SplitDescriptor::new(MEM - 4096, 8192, F_WRITE | F_NEXT, 3)),
                RawDescriptor::from(SplitDescriptor::new(MEM << 4, 4096, F_WRITE | F_NEXT, 4)),
                RawDescriptor::from(SplitDescriptor::new(
                    u64::MAX - 4095,
                    4096,
                    F_WRITE | F_NEXT,
                    5,
                )),
                RawDescriptor::from(SplitDescriptor::new(4096, 0, F_WRITE, 0)),
            ],
            0,
        )
        .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let mut c = BalloonCounters::default();
        assert!(process_reporting_queue(&m, &mut q, &mut c));
        assert_eq!(
            c,
            BalloonCounters {
                reported_ranges: 1,
                reported_bytes: 1 << 20,
                bad_ranges: 5,
                madvise_errors: 0,
            }
        );
        let mut back = vec![0xffu8; 1 << 20];
        m.read_slice(&mut back, dirty).unwrap();
        assert!(back.iter().all(|&b| b == 0));
        // The chain was returned; nothing more to do.
        assert_eq!(vq.used().idx().load(), 1);
        assert!(!process_reporting_queue(&m, &mut q, &mut c));
    }

    #[test]
    fn activation_and_features() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut b = Balloon::new(Interrupt::new(evt)).unwrap();
        assert_eq!(b.device_type(), TYPE_BALLOON);
        assert_eq!(
            b.avail_features(),
            VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_REPORTING
        );
        let mut cfg = [0xffu8; 16];
        b.read_config(0, &mut cfg);
        assert_eq!(cfg, [0; 16]);
        let m: GuestMemoryMmap<()> =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        let qs = || {
            (0..NUM_QUEUES as u64)
                .map(|i| {
                    MockSplitQueue::create(&m, GuestAddress(i * 0x10000), 16)
                        .create_queue::<Queue>()
                        .unwrap()
                })
                .collect::<Vec<_>>()
        };
        assert!(matches!(
            b.activate(m.clone(), qs().into_iter().take(2).collect()),
            Err(ActivateError::QueueCount {
                expected: 3,
                got: 2
            })
        ));
        b.set_acked_features(VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_REPORTING);
        b.activate(m.clone(), qs()).unwrap();
        for e in b.queue_evts() {
            assert_eq!(e.read().unwrap(), 1);
        }
        // Empty queues: nothing to do, no interrupt.
        for i in 0..NUM_QUEUES + 1 {
            b.process_queue_event(i);
        }
        b.reset();
        b.process_queue_event(REPORTING_QUEUE);
        assert_eq!(b.counters(), BalloonCounters::default());
    }
}
