//! The benchmark baseline: MAC rewrite and redirect, nothing else.

use crate::{program::LoadedProgram, AttachMode, LoaderError, Result};
use aya::maps::{Array, DevMap, MapData};
use handoff_common::{
    edge::{Member, MEMBER_ENABLED},
    names,
};

/// The loaded baseline program.
pub struct BaselineProgram {
    program: LoadedProgram,
    egress: DevMap<MapData>,
    member: Array<MapData, Member>,
}

impl BaselineProgram {
    /// Loads the baseline program. Until [`Self::set_target`] it drops every
    /// frame (a null sink).
    pub fn load() -> Result<Self> {
        let mut program = LoadedProgram::load(
            crate::objects::BASELINE,
            names::PROG_BASELINE,
            &names::BASELINE_MAPS,
            &[],
            None,
        )?;
        Ok(Self {
            egress: program.take_map(names::MAP_BASELINE_EGRESS)?,
            member: program.take_map(names::MAP_BASELINE_MEMBER)?,
            program,
        })
    }

    /// Sends every frame out of `egress_ifindex` with the given MACs.
    pub fn set_target(&mut self, dst_mac: [u8; 6], src_mac: [u8; 6], egress_ifindex: u32) -> Result<()> {
        self.egress
            .set(0, egress_ifindex, None, 0)
            .map_err(|source| LoaderError::XdpMap {
                map: names::MAP_BASELINE_EGRESS,
                source: Box::new(source),
            })?;
        self.member
            .set(
                0,
                Member {
                    dst_mac,
                    src_mac,
                    flags: MEMBER_ENABLED,
                },
                0,
            )
            .map_err(|source| LoaderError::Map {
                map: names::MAP_BASELINE_MEMBER,
                source: Box::new(source),
            })
    }

    /// Attaches to the ingress interface.
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<u32> {
        self.program.attach(interface, mode)
    }
}

impl std::fmt::Debug for BaselineProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BaselineProgram")
            .field("program", &self.program)
            .finish_non_exhaustive()
    }
}
