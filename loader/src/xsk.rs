//! The node's steering program: one AF_XDP socket per RX queue.

use crate::{
    program::{read_reasons, LoadedProgram},
    AttachMode, LoaderError, ReasonCounts, Result, TestRunOutcome,
};
use aya::maps::{HashMap, MapData, PerCpuArray, XskMap};
use handoff_common::{
    edge::match_key,
    flow_key::{addr_words, IP_V4, IP_V6},
    names,
};
use std::{net::IpAddr, os::fd::AsRawFd};

/// The loaded steering program and its maps.
pub struct XskProgram {
    program: LoadedProgram,
    sockets: XskMap<MapData>,
    reasons: PerCpuArray<MapData, u64>,
    local_addrs: HashMap<MapData, [u32; 4], u32>,
}

impl XskProgram {
    /// Loads the steering program. Until a socket is registered for a queue,
    /// frames on that queue go to the kernel.
    pub fn load() -> Result<Self> {
        let mut program = LoadedProgram::load(crate::objects::XSK, names::PROG_XSK, &names::XSK_MAPS, &[], None)?;
        Ok(Self {
            sockets: program.take_map(names::MAP_XSKS)?,
            reasons: program.take_map(names::MAP_REASON_STATS)?,
            local_addrs: program.take_map(names::MAP_LOCAL_ADDRS)?,
            program,
        })
    }

    /// Attaches to the node's data-plane interface.
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<u32> {
        self.program.attach(interface, mode)
    }

    /// Detaches (also done when this value is dropped).
    pub fn detach(&mut self) -> Result<()> {
        self.program.detach()
    }

    /// Interfaces and ifindexes the program is attached to.
    pub fn attachments(&self) -> impl Iterator<Item = (&str, u32)> {
        self.program.attachments()
    }

    /// Steers RX queue `queue` to `socket`.
    pub fn register_socket(&mut self, queue: u32, socket: &impl AsRawFd) -> Result<()> {
        self.sockets
            .set(queue, socket.as_raw_fd(), 0)
            .map_err(|source| LoaderError::Map {
                map: names::MAP_XSKS,
                source: Box::new(source),
            })
    }

    /// Stops steering RX queue `queue`.
    pub fn unregister_socket(&mut self, queue: u32) -> Result<()> {
        self.sockets.unset(queue).map_err(|source| LoaderError::Map {
            map: names::MAP_XSKS,
            source: Box::new(source),
        })
    }

    /// Adds one of the host's own addresses: its traffic stays with the kernel.
    pub fn add_local_address(&mut self, addr: IpAddr) -> Result<()> {
        let version = if addr.is_ipv4() { IP_V4 } else { IP_V6 };
        self.local_addrs
            .insert(match_key(&addr_words(addr), version), 1, 0)
            .map_err(|source| LoaderError::Map {
                map: names::MAP_LOCAL_ADDRS,
                source: Box::new(source),
            })
    }

    /// Per-reason frame counts, summed over CPUs.
    pub fn reason_counts(&self) -> Result<ReasonCounts> {
        read_reasons(&self.reasons, names::MAP_REASON_STATS)
    }

    /// Runs the program on one frame with BPF_PROG_TEST_RUN.
    pub fn test_run(&self, frame: &[u8]) -> Result<TestRunOutcome> {
        self.program.test_run(frame)
    }
}

impl std::fmt::Debug for XskProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskProgram")
            .field("program", &self.program)
            .finish_non_exhaustive()
    }
}
