//! The edge's pin directory on a bpffs: its maps under their names
//! (`names::MAP_*`) and one XDP link per interface (`link-<interface>`).
//!
//! Pinned, the sprayer outlives the daemon: the kernel keeps a pinned
//! bpf_link attached and its program's maps alive, so packets keep being
//! sprayed by the last published scope while the daemon restarts. The next
//! run finds the pins, checks that they fit its configuration and takes them
//! over (see `EdgeProgram::load_pinned`).

use crate::{LoaderError, Result};
use aya::maps::{MapData, MapType};
use handoff_common::{
    counters::{Reason, TrafficCounter},
    edge::{EdgeSettings, Member},
    names::{self, limits},
};
use std::{
    ffi::CString,
    mem::size_of,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

/// `f_type` of a bpffs mount (include/uapi/linux/magic.h, BPF_FS_MAGIC).
pub const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// File name prefix of the pinned XDP links; the interface name follows.
const LINK_PREFIX: &str = "link-";

/// A map as the kernel describes it: what must match for a pinned map to
/// stand in for the one the object defines.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MapShape {
    /// Map type.
    pub map_type: MapType,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes (per CPU for per-CPU maps).
    pub value_size: u32,
    /// Capacity.
    pub max_entries: u32,
}

impl MapShape {
    const fn new(map_type: MapType, key_size: usize, value_size: usize, max_entries: u32) -> Self {
        Self {
            map_type,
            key_size: key_size as u32,
            value_size: value_size as u32,
            max_entries,
        }
    }

    /// The shape of the map pinned at `path`.
    fn of_pin(path: &Path) -> Result<Self> {
        let pin_error = |source: aya::maps::MapError| LoaderError::Pin {
            what: "map",
            path: path.to_path_buf(),
            source: Box::new(source),
        };
        let info = MapData::from_pin(path).and_then(|m| m.info()).map_err(pin_error)?;
        Ok(Self {
            map_type: info.map_type().map_err(pin_error)?,
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        })
    }
}

/// Every map the edge pins, with the shape a sprayer of `buckets` buckets
/// needs: the object's definitions in `xdp-ebpf/programs/src/bin/edge/maps.rs`
/// (LPM keys are the 4-byte prefix length and 16 address bytes; a devmap
/// value is `struct bpf_devmap_val`), plus the scope versions that only
/// userspace reads.
pub fn edge_map_shapes(buckets: u32) -> [(&'static str, MapShape); 12] {
    const KEY: usize = size_of::<u32>();
    const ADDR: usize = size_of::<[u32; 4]>();
    [
        (
            names::MAP_EDGE_SETTINGS,
            MapShape::new(MapType::Array, KEY, size_of::<EdgeSettings>(), 1),
        ),
        (
            names::MAP_ACTIVE_GENERATION,
            MapShape::new(MapType::Array, KEY, size_of::<u32>(), 1),
        ),
        (
            names::MAP_SCOPE,
            MapShape::new(MapType::Array, KEY, size_of::<u32>(), 2 * buckets),
        ),
        (
            names::MAP_SCOPE_VERSIONS,
            MapShape::new(MapType::Array, KEY, size_of::<u64>(), 2),
        ),
        (
            names::MAP_MEMBERS,
            MapShape::new(MapType::Array, KEY, size_of::<Member>(), limits::MAX_MEMBERS),
        ),
        (
            names::MAP_MEMBER_MACS,
            MapShape::new(MapType::Hash, size_of::<[u8; 6]>(), KEY, limits::MAX_MEMBERS),
        ),
        (
            names::MAP_EGRESS,
            MapShape::new(MapType::DevMap, KEY, 2 * size_of::<u32>(), limits::MAX_MEMBERS),
        ),
        (
            names::MAP_MEMBER_STATS,
            MapShape::new(
                MapType::PerCpuArray,
                KEY,
                size_of::<TrafficCounter>(),
                limits::MAX_MEMBERS,
            ),
        ),
        (
            names::MAP_REASON_STATS,
            MapShape::new(MapType::PerCpuArray, KEY, size_of::<u64>(), Reason::COUNT),
        ),
        (
            names::MAP_DST_MATCH,
            MapShape::new(
                MapType::LpmTrie,
                KEY + ADDR,
                size_of::<u32>(),
                limits::MAX_MATCH_PREFIXES,
            ),
        ),
        (
            names::MAP_SRC_MATCH,
            MapShape::new(
                MapType::LpmTrie,
                KEY + ADDR,
                size_of::<u32>(),
                limits::MAX_MATCH_PREFIXES,
            ),
        ),
        (
            names::MAP_LOCAL_ADDRS,
            MapShape::new(MapType::Hash, ADDR, size_of::<u32>(), limits::MAX_LOCAL_ADDRS),
        ),
    ]
}

/// What a pin directory holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinState {
    /// No map pinned: this run creates and pins them.
    Empty,
    /// Every map pinned, each of the right shape: this run takes them over.
    Complete,
}

/// Decides whether the maps `found` (in the order of `expected`; `None`
/// where nothing is pinned) can be taken over. `buckets` only words the
/// scope's error. Pure logic: the caller reads the directory.
pub fn classify(
    expected: &[(&'static str, MapShape)],
    found: &[Option<MapShape>],
    buckets: u32,
) -> std::result::Result<PinState, String> {
    let missing: Vec<&str> = expected
        .iter()
        .zip(found)
        .filter(|(_, f)| f.is_none())
        .map(|((name, _), _)| *name)
        .collect();
    if missing.len() == expected.len() {
        return Ok(PinState::Empty);
    }
    if !missing.is_empty() {
        return Err(format!(
            "maps {} are not pinned while others are: an earlier run stopped half-way, something removed them, or another version of handoff (one without these maps) pinned the others",
            missing.join(", ")
        ));
    }
    for ((name, want), got) in expected.iter().zip(found) {
        let Some(got) = got else { continue };
        if got == want {
            continue;
        }
        if *name == names::MAP_SCOPE && got.map_type == want.map_type {
            return Err(format!(
                "the pinned edge has {} buckets per scope generation, this configuration asks for {buckets} (edge.buckets)",
                got.max_entries / 2
            ));
        }
        return Err(format!(
            "map {name} is pinned as {got:?}, this build needs {want:?} (pinned by another version of handoff?)"
        ));
    }
    Ok(PinState::Complete)
}

/// The pin file of the XDP link on `interface`.
pub fn link_pin(dir: &Path, interface: &str) -> PathBuf {
    dir.join(format!("{LINK_PREFIX}{interface}"))
}

/// The interfaces with a pinned link in `dir`.
pub fn pinned_link_interfaces(dir: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(dir).map_err(|e| LoaderError::PinDir {
        path: dir.to_path_buf(),
        detail: format!("cannot list it: {e}"),
    })?;
    let mut interfaces: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(LINK_PREFIX))
                .map(str::to_string)
        })
        .collect();
    interfaces.sort();
    Ok(interfaces)
}

/// The filesystem type (`statfs.f_type`, statfs(2)) of `path`: compare with
/// [`BPF_FS_MAGIC`].
///
/// # Errors
/// The `statfs` call's error (no such path, no permission).
pub fn fs_type(path: &Path) -> std::io::Result<i64> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statfs is plain data; all-zero is a valid value.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is NUL-terminated and outlives the call; `stat` is a
    // valid out-pointer of the right type.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast, reason = "f_type's width differs between libc targets")]
    Ok(stat.f_type as i64)
}

/// Fails unless `path` is on a bpffs.
pub fn check_bpffs(path: &Path) -> Result<()> {
    let found = fs_type(path).map_err(|e| LoaderError::PinDir {
        path: path.to_path_buf(),
        detail: format!("cannot statfs it: {e}"),
    })?;
    if found != BPF_FS_MAGIC {
        return Err(LoaderError::PinDir {
            path: path.to_path_buf(),
            detail: format!(
                "not on a bpffs (filesystem magic {found:#x}, bpffs is {BPF_FS_MAGIC:#x}): mount one first, e.g. `mount -t bpf bpf /sys/fs/bpf`"
            ),
        });
    }
    Ok(())
}

/// Makes sure `dir` exists on a bpffs, creating it (in a bpffs) if needed.
pub fn prepare_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        let parent = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        check_bpffs(parent)?;
        std::fs::create_dir(dir).map_err(|e| LoaderError::PinDir {
            path: dir.to_path_buf(),
            detail: format!("cannot create it: {e}"),
        })?;
    }
    check_bpffs(dir)
}

/// Reads the state of the maps pinned in `dir` for a sprayer of `buckets` buckets.
pub fn inspect(dir: &Path, buckets: u32) -> Result<PinState> {
    let expected = edge_map_shapes(buckets);
    let mut found = Vec::with_capacity(expected.len());
    for (name, _) in &expected {
        let path = dir.join(name);
        found.push(if path.exists() {
            Some(MapShape::of_pin(&path)?)
        } else {
            None
        });
    }
    classify(&expected, &found, buckets).map_err(|detail| LoaderError::PinDir {
        path: dir.to_path_buf(),
        detail: format!(
            "{detail}; `handoff edge-detach --config <edge.toml>` removes the pins (the sprayer stops until the edge starts again)"
        ),
    })
}

/// What [`remove`] took away.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// Interfaces whose link was unpinned (and so detached).
    pub links: Vec<String>,
    /// Maps unpinned.
    pub maps: Vec<&'static str>,
}

/// Unpins every link (the kernel detaches a link when its last reference
/// goes: nothing else holds one once the daemon is gone) and every map of
/// the edge in `dir`, then removes `dir` if it is empty. Nothing to do when
/// `dir` does not exist.
pub fn remove(dir: &Path) -> Result<Removed> {
    if !dir.exists() {
        return Ok(Removed::default());
    }
    check_bpffs(dir)?;
    let unpin = |path: PathBuf| {
        std::fs::remove_file(&path).map_err(|e| LoaderError::PinDir {
            path,
            detail: format!("cannot unpin it: {e}"),
        })
    };
    let mut removed = Removed::default();
    for interface in pinned_link_interfaces(dir)? {
        unpin(link_pin(dir, &interface))?;
        removed.links.push(interface);
    }
    for (name, _) in edge_map_shapes(limits::DEFAULT_BUCKETS) {
        let path = dir.join(name);
        if path.exists() {
            unpin(path)?;
            removed.maps.push(name);
        }
    }
    if std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(false) {
        std::fs::remove_dir(dir).map_err(|e| LoaderError::PinDir {
            path: dir.to_path_buf(),
            detail: format!("cannot remove it: {e}"),
        })?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(buckets: u32) -> Vec<Option<MapShape>> {
        edge_map_shapes(buckets).iter().map(|(_, s)| Some(*s)).collect()
    }

    #[test]
    fn nothing_pinned_is_a_fresh_start_and_everything_matching_is_taken_over() {
        let expected = edge_map_shapes(1024);
        assert_eq!(
            classify(&expected, &vec![None; expected.len()], 1024),
            Ok(PinState::Empty)
        );
        assert_eq!(classify(&expected, &found(1024), 1024), Ok(PinState::Complete));
    }

    #[test]
    fn another_bucket_count_names_both_counts_and_the_field() {
        let e = classify(&edge_map_shapes(1024), &found(65536), 1024).unwrap_err();
        assert!(
            e.contains("65536 buckets") && e.contains("asks for 1024") && e.contains("edge.buckets"),
            "{e}"
        );
    }

    #[test]
    fn a_partial_set_or_a_foreign_shape_is_refused_by_name() {
        let expected = edge_map_shapes(1024);
        let mut partial = found(1024);
        partial[3] = None;
        let e = classify(&expected, &partial, 1024).unwrap_err();
        assert!(e.contains(names::MAP_SCOPE_VERSIONS) && e.contains("half-way"), "{e}");
        let mut foreign = found(1024);
        foreign[4] = Some(MapShape {
            value_size: 24,
            ..expected[4].1
        });
        let e = classify(&expected, &foreign, 1024).unwrap_err();
        assert!(
            e.contains("map MEMBERS is pinned as") && e.contains("value_size: 24"),
            "{e}"
        );
    }

    #[test]
    fn pins_of_a_build_without_the_member_macs_are_refused_by_name() {
        // What a build before MEMBER_MACS pinned: every other map, its
        // reason counters shorter by the reasons added with it.
        let expected = edge_map_shapes(1024);
        let old: Vec<Option<MapShape>> = expected
            .iter()
            .map(|(name, shape)| match *name {
                names::MAP_MEMBER_MACS => None,
                names::MAP_REASON_STATS => Some(MapShape {
                    max_entries: Reason::COUNT - 4,
                    ..*shape
                }),
                _ => Some(*shape),
            })
            .collect();
        let e = classify(&expected, &old, 1024).unwrap_err();
        assert!(
            e.contains("maps MEMBER_MACS are not pinned") && e.contains("another version of handoff"),
            "{e}"
        );
    }

    #[test]
    fn a_directory_outside_a_bpffs_is_refused_with_the_magic() {
        let dir = std::env::temp_dir();
        let e = check_bpffs(&dir).unwrap_err().to_string();
        assert!(e.contains("not on a bpffs") && e.contains("0xcafe4a11"), "{e}");
        let e = prepare_dir(&dir.join("handoff-no-such-parent/pins"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot statfs") || e.contains("not on a bpffs"), "{e}");
    }

    #[test]
    fn link_pins_are_named_by_interface() {
        assert_eq!(link_pin(Path::new("/p"), "eth1"), PathBuf::from("/p/link-eth1"));
    }
}
