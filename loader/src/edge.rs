//! The edge sprayer: members, the two-generation hash scope, match sets, counters.

use crate::{
    pins::{self, PinState},
    program::{read_reasons, LoadedProgram},
    AttachMode, LoaderError, ReasonCounts, Result, TestRunOutcome,
};
use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    Array, DevMap, HashMap, Map, MapData, PerCpuArray,
};
use handoff_common::{
    counters::TrafficCounter,
    edge::{match_key, EdgeSettings, Member, IPV4_MAPPED_PREFIX_BITS, MEMBER_ENABLED, NO_MEMBER},
    flow_key::{addr_words, IP_V4, IP_V6},
    hash::HashMode,
    names::{self, limits},
};
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    str::FromStr,
    time::{Duration, Instant},
};

/// How long after a flip the loader waits before it overwrites the generation
/// that was active: longer than any XDP invocation that may still hold the
/// old generation index (programs run under rcu_read_lock in NAPI poll,
/// net/core/dev.c, for microseconds).
pub const GENERATION_GRACE: Duration = Duration::from_millis(50);

/// An IP prefix, `10.0.9.0/24` or `fd00::/64`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Prefix {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length in bits.
    pub len: u8,
}

impl Prefix {
    /// The LPM key: IPv4 prefixes live in the IPv4-mapped IPv6 space.
    fn lpm_key(&self) -> Key<[u32; 4]> {
        let (version, bits) = match self.addr {
            IpAddr::V4(_) => (IP_V4, IPV4_MAPPED_PREFIX_BITS + self.len as u32),
            IpAddr::V6(_) => (IP_V6, self.len as u32),
        };
        Key::new(bits, match_key(&addr_words(self.addr), version))
    }
}

impl FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|e| format!("bad address in prefix {s:?}: {e}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            Some(l) => l
                .parse::<u8>()
                .map_err(|e| format!("bad length in prefix {s:?}: {e}"))?,
            None => max,
        };
        if len > max {
            return Err(format!("prefix {s:?} is longer than {max} bits"));
        }
        Ok(Self { addr, len })
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// What [`EdgeProgram::publish_scope`] did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ScopeWrite {
    /// The generation now active.
    pub generation: u32,
    /// Slots written into that generation (only the ones that differed).
    pub slots_written: usize,
}

/// The scope a pinned sprayer forwarded by when this process took it over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedScope {
    /// The active generation.
    pub generation: u32,
    /// The version published with it.
    pub version: u64,
    /// Its table: bucket -> member id, [`NO_MEMBER`] for none.
    pub table: Vec<u32>,
    /// The hash mode it sprays with.
    pub hash_mode: HashMode,
    /// The hash seed it sprays with.
    pub hash_seed: u32,
}

/// The loaded edge sprayer and its maps.
pub struct EdgeProgram {
    program: LoadedProgram,
    settings_map: Array<MapData, EdgeSettings>,
    active_map: Array<MapData, u32>,
    scope_map: Array<MapData, u32>,
    versions_map: Array<MapData, u64>,
    members_map: Array<MapData, Member>,
    member_macs: HashMap<MapData, [u8; 6], u32>,
    egress_map: DevMap<MapData>,
    member_stats: PerCpuArray<MapData, TrafficCounter>,
    reasons: PerCpuArray<MapData, u64>,
    dst_match: LpmTrie<MapData, [u32; 4], u32>,
    src_match: LpmTrie<MapData, [u32; 4], u32>,
    local_addrs: HashMap<MapData, [u32; 4], u32>,
    settings: EdgeSettings,
    members: Vec<Option<Member>>,
    /// What each generation holds in the kernel, so a publish writes only the
    /// slots that changed (the kernel's array starts zeroed, so do these).
    shadow: [Vec<u32>; 2],
    active_generation: u32,
    last_flip: Option<Instant>,
    /// Where maps and links are pinned, if anywhere.
    pin_dir: Option<PathBuf>,
    /// What the pinned maps held at load, if they held a published scope.
    published: Option<PublishedScope>,
}

impl EdgeProgram {
    /// Loads the sprayer with `buckets` buckets per scope generation (a power
    /// of two). It passes every frame to the kernel until the first
    /// [`Self::publish_scope`]. Nothing is pinned: the sprayer is detached
    /// when this value is dropped or the process exits.
    pub fn load(buckets: u32) -> Result<Self> {
        Self::load_in(buckets, None)
    }

    /// Loads the sprayer with its maps pinned in `dir` (on a bpffs; created
    /// if missing): the maps an earlier run pinned there are taken over, as
    /// they are, when they fit `buckets` (else a clear error says what to
    /// remove); otherwise new ones are pinned. [`Self::published`] then
    /// tells the scope the sprayer forwards by; [`Self::attach`] takes over
    /// the pinned links. Nothing is written into the maps here.
    pub fn load_pinned(buckets: u32, dir: &Path) -> Result<Self> {
        check_buckets(buckets)?;
        pins::prepare_dir(dir)?;
        let state = pins::inspect(dir, buckets)?;
        let started = Instant::now();
        let mut program = Self::load_in(buckets, Some(dir))?;
        let loaded = started.elapsed();
        if state == PinState::Complete {
            program.read_back()?;
        }
        tracing::info!(
            dir = %dir.display(),
            ?state,
            load_ms = loaded.as_millis(),
            read_back_ms = (started.elapsed() - loaded).as_millis(),
            "edge sprayer loaded with pinned maps"
        );
        Ok(program)
    }

    fn load_in(buckets: u32, pin_dir: Option<&Path>) -> Result<Self> {
        check_buckets(buckets)?;
        let pinned: Vec<&'static str> = pins::edge_map_shapes(buckets)
            .iter()
            .map(|(name, _)| *name)
            .filter(|&name| name != names::MAP_SCOPE_VERSIONS)
            .collect();
        let mut program = LoadedProgram::load(
            crate::objects::EDGE,
            names::PROG_EDGE,
            &names::EDGE_MAPS,
            &[(names::MAP_SCOPE, 2 * buckets)],
            pin_dir.map(|dir| (dir, pinned.as_slice())),
        )?;
        Ok(Self {
            versions_map: versions_map(pin_dir)?,
            settings_map: program.take_map(names::MAP_EDGE_SETTINGS)?,
            active_map: program.take_map(names::MAP_ACTIVE_GENERATION)?,
            scope_map: program.take_map(names::MAP_SCOPE)?,
            members_map: program.take_map(names::MAP_MEMBERS)?,
            member_macs: program.take_map(names::MAP_MEMBER_MACS)?,
            egress_map: program.take_map(names::MAP_EGRESS)?,
            member_stats: program.take_map(names::MAP_MEMBER_STATS)?,
            reasons: program.take_map(names::MAP_REASON_STATS)?,
            dst_match: program.take_map(names::MAP_DST_MATCH)?,
            src_match: program.take_map(names::MAP_SRC_MATCH)?,
            local_addrs: program.take_map(names::MAP_LOCAL_ADDRS)?,
            program,
            settings: EdgeSettings {
                bucket_mask: buckets - 1,
                hash_mode: HashMode::Directional as u32,
                hash_seed: 0,
                ready: 0,
            },
            members: vec![None; limits::MAX_MEMBERS as usize],
            shadow: [vec![0; buckets as usize], vec![0; buckets as usize]],
            active_generation: 0,
            last_flip: None,
            pin_dir: pin_dir.map(Path::to_path_buf),
            published: None,
        })
    }

    /// Reads what taken-over maps hold into the shadows: settings, members,
    /// both generations and their versions.
    fn read_back(&mut self) -> Result<()> {
        let map_error = |map: &'static str| {
            move |source: aya::maps::MapError| LoaderError::Map {
                map,
                source: Box::new(source),
            }
        };
        let settings = self
            .settings_map
            .get(&0, 0)
            .map_err(map_error(names::MAP_EDGE_SETTINGS))?;
        for id in 0..limits::MAX_MEMBERS {
            let member = self.members_map.get(&id, 0).map_err(map_error(names::MAP_MEMBERS))?;
            self.members[id as usize] = (member.flags & MEMBER_ENABLED != 0).then_some(member);
        }
        self.sync_member_macs()?;
        let buckets = self.buckets();
        for (generation, shadow) in self.shadow.iter_mut().enumerate() {
            let base = generation as u32 * buckets;
            for (bucket, slot) in shadow.iter_mut().enumerate() {
                *slot = self
                    .scope_map
                    .get(&(base + bucket as u32), 0)
                    .map_err(map_error(names::MAP_SCOPE))?;
            }
        }
        self.active_generation = self
            .active_map
            .get(&0, 0)
            .map_err(map_error(names::MAP_ACTIVE_GENERATION))?
            & 1;
        // Only a published scope is taken over: a run that died before its
        // first publish left the program passing everything.
        if settings.ready != 0 {
            let version = self
                .versions_map
                .get(&self.active_generation, 0)
                .map_err(map_error(names::MAP_SCOPE_VERSIONS))?;
            self.published = Some(PublishedScope {
                generation: self.active_generation,
                version,
                table: self.active_table().to_vec(),
                hash_mode: HashMode::from_raw(settings.hash_mode),
                hash_seed: settings.hash_seed,
            });
            // A flip right after the takeover must still wait out packets
            // the earlier run's last flip may have left in flight.
            self.last_flip = Some(Instant::now());
        }
        self.settings = EdgeSettings {
            bucket_mask: self.settings.bucket_mask,
            ..settings
        };
        Ok(())
    }

    /// The scope the pinned maps held at load, when an earlier run had
    /// published one: the sprayer forwards by it.
    pub fn published(&self) -> Option<&PublishedScope> {
        self.published.as_ref()
    }

    /// The pin directory, if the sprayer is pinned.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    /// Buckets per generation.
    pub fn buckets(&self) -> u32 {
        self.settings.bucket_mask + 1
    }

    /// Sets the hash mode and seed. Nodes must use the same values.
    pub fn set_hash(&mut self, mode: HashMode, seed: u32) -> Result<()> {
        self.settings.hash_mode = mode as u32;
        self.settings.hash_seed = seed;
        self.write_settings()
    }

    fn write_settings(&mut self) -> Result<()> {
        self.settings_map
            .set(0, self.settings, 0)
            .map_err(|source| LoaderError::Map {
                map: names::MAP_EDGE_SETTINGS,
                source: Box::new(source),
            })
    }

    /// Attaches the sprayer to `interface`, where cluster traffic enters.
    /// Pinned, it goes through the link pinned for `interface`: an earlier
    /// run's link gets this program in its place atomically (it keeps the
    /// mode it was created in), or a new link is created and pinned.
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<u32> {
        match &self.pin_dir {
            Some(dir) => {
                let pin = pins::link_pin(dir, interface);
                self.program
                    .attach_pinned(interface, mode, &pin)
                    .map(|(ifindex, _)| ifindex)
            }
            None => self.program.attach(interface, mode),
        }
    }

    /// Unpins, and so detaches, the links pinned for interfaces other than
    /// `keep`; returns those interfaces. Nothing when not pinned.
    pub fn detach_others(&mut self, keep: &[String]) -> Result<Vec<String>> {
        let Some(dir) = &self.pin_dir else {
            return Ok(Vec::new());
        };
        let mut gone = Vec::new();
        for interface in pins::pinned_link_interfaces(dir)? {
            if keep.contains(&interface) {
                continue;
            }
            let pin = pins::link_pin(dir, &interface);
            std::fs::remove_file(&pin).map_err(|source| LoaderError::Pin {
                what: "link",
                path: pin,
                source: Box::new(source),
            })?;
            gone.push(interface);
        }
        Ok(gone)
    }

    /// Detaches the sprayer (also done when this value is dropped, unless
    /// it is pinned: then only this call, or removing the pins, detaches it).
    pub fn detach(&mut self) -> Result<()> {
        self.program.detach()
    }

    /// Configures member `id`: frames for it leave through `egress_ifindex`
    /// with destination MAC `dst_mac` and source MAC `src_mac`. Cluster
    /// traffic that arrives from `dst_mac` (the member's own MAC) is dropped
    /// from then on, never sprayed back (`drop_from_member`).
    pub fn set_member(&mut self, id: u32, dst_mac: [u8; 6], src_mac: [u8; 6], egress_ifindex: u32) -> Result<()> {
        check_member_id(id)?;
        self.egress_map
            .set(id, egress_ifindex, None, 0)
            .map_err(|source| LoaderError::XdpMap {
                map: names::MAP_EGRESS,
                source: Box::new(source),
            })?;
        let member = Member {
            dst_mac,
            src_mac,
            flags: MEMBER_ENABLED,
        };
        self.members_map.set(id, member, 0).map_err(|source| LoaderError::Map {
            map: names::MAP_MEMBERS,
            source: Box::new(source),
        })?;
        self.members[id as usize] = Some(member);
        self.sync_member_macs()
    }

    /// Removes member `id`. Refused while a scope generation still maps a bucket to it.
    pub fn remove_member(&mut self, id: u32) -> Result<()> {
        check_member_id(id)?;
        if self.shadow.iter().any(|g| g.contains(&id)) {
            return Err(LoaderError::Invalid {
                what: "member removal",
                detail: format!("member {id} still owns buckets in a scope generation"),
            });
        }
        self.members_map
            .set(id, Member::default(), 0)
            .map_err(|source| LoaderError::Map {
                map: names::MAP_MEMBERS,
                source: Box::new(source),
            })?;
        self.members[id as usize] = None;
        self.sync_member_macs()
    }

    /// Makes `MEMBER_MACS` hold exactly the configured members' MACs (each
    /// with the lowest id that has it), so the sprayer drops cluster traffic
    /// a member sends back instead of spraying it again. Entries are added
    /// before stale ones go: a MAC that stays a member's is never missing.
    fn sync_member_macs(&mut self) -> Result<()> {
        let map_error = |source| LoaderError::Map {
            map: names::MAP_MEMBER_MACS,
            source: Box::new(source),
        };
        let mut wanted: Vec<([u8; 6], u32)> = Vec::new();
        for (id, member) in self.members.iter().enumerate() {
            if let Some(m) = member {
                if !wanted.iter().any(|(mac, _)| *mac == m.dst_mac) {
                    wanted.push((m.dst_mac, id as u32));
                }
            }
        }
        for (mac, id) in &wanted {
            self.member_macs.insert(mac, id, 0).map_err(map_error)?;
        }
        let present = self
            .member_macs
            .keys()
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(map_error)?;
        for mac in present {
            if !wanted.iter().any(|(m, _)| *m == mac) {
                self.member_macs.remove(&mac).map_err(map_error)?;
            }
        }
        Ok(())
    }

    /// Adds a destination prefix (VIPs) that makes a packet cluster traffic.
    pub fn add_destination_match(&mut self, prefix: Prefix) -> Result<()> {
        self.dst_match
            .insert(&prefix.lpm_key(), 1, 0)
            .map_err(|source| LoaderError::Map {
                map: names::MAP_DST_MATCH,
                source: Box::new(source),
            })
    }

    /// Adds a source prefix (backends) that makes a packet cluster traffic.
    pub fn add_source_match(&mut self, prefix: Prefix) -> Result<()> {
        self.src_match
            .insert(&prefix.lpm_key(), 1, 0)
            .map_err(|source| LoaderError::Map {
                map: names::MAP_SRC_MATCH,
                source: Box::new(source),
            })
    }

    /// Makes the destination prefixes exactly `prefixes` (adds the missing,
    /// then removes the others, which taken-over maps may hold).
    pub fn set_destination_matches(&mut self, prefixes: &[Prefix]) -> Result<()> {
        sync_trie(&mut self.dst_match, names::MAP_DST_MATCH, prefixes)
    }

    /// Makes the source prefixes exactly `prefixes`.
    pub fn set_source_matches(&mut self, prefixes: &[Prefix]) -> Result<()> {
        sync_trie(&mut self.src_match, names::MAP_SRC_MATCH, prefixes)
    }

    /// Makes the host's own addresses exactly `addrs`.
    pub fn set_local_addresses(&mut self, addrs: &[IpAddr]) -> Result<()> {
        for addr in addrs {
            self.add_local_address(*addr)?;
        }
        let wanted: Vec<[u32; 4]> = addrs.iter().map(|a| local_key(*a)).collect();
        let map_error = |source| LoaderError::Map {
            map: names::MAP_LOCAL_ADDRS,
            source: Box::new(source),
        };
        let present = self.local_addrs.keys().collect::<std::result::Result<Vec<_>, _>>();
        for key in present.map_err(map_error)? {
            if !wanted.contains(&key) {
                self.local_addrs.remove(&key).map_err(map_error)?;
            }
        }
        Ok(())
    }

    /// Adds one of the host's own addresses: always passed to the kernel.
    pub fn add_local_address(&mut self, addr: IpAddr) -> Result<()> {
        self.local_addrs
            .insert(local_key(addr), 1, 0)
            .map_err(|source| LoaderError::Map {
                map: names::MAP_LOCAL_ADDRS,
                source: Box::new(source),
            })
    }

    /// The active generation (0 or 1).
    pub fn active_generation(&self) -> u32 {
        self.active_generation
    }

    /// The table of the active generation, as last published.
    pub fn active_table(&self) -> &[u32] {
        &self.shadow[self.active_generation as usize]
    }

    /// Publishes `table` (bucket -> member id, [`NO_MEMBER`] for none) as
    /// scope `version`: writes the slots that differ and the version into
    /// the inactive generation, then makes it active with one 4-byte map
    /// write. A packet reads the generation once, so it sees either the old
    /// table or the new one, never a mix; a restarted daemon reads the
    /// version beside the table it finds active.
    pub fn publish_scope(&mut self, version: u64, table: &[u32]) -> Result<ScopeWrite> {
        if table.len() != self.buckets() as usize {
            return Err(LoaderError::Invalid {
                what: "scope table",
                detail: format!("{} slots, expected {}", table.len(), self.buckets()),
            });
        }
        if let Some((bucket, member)) = table
            .iter()
            .enumerate()
            .find(|(_, &m)| m != NO_MEMBER && self.members.get(m as usize).is_none_or(Option::is_none))
        {
            return Err(LoaderError::Invalid {
                what: "scope table",
                detail: format!("bucket {bucket} maps to member {member}, which is not configured"),
            });
        }
        if let Some(flipped) = self.last_flip {
            let since = flipped.elapsed();
            if since < GENERATION_GRACE {
                std::thread::sleep(GENERATION_GRACE - since);
            }
        }
        let generation = self.active_generation ^ 1;
        let base = generation * self.buckets();
        let mut slots_written = 0;
        for (bucket, (&want, have)) in table
            .iter()
            .zip(self.shadow[generation as usize].iter_mut())
            .enumerate()
        {
            if want != *have {
                self.scope_map
                    .set(base + bucket as u32, want, 0)
                    .map_err(|source| LoaderError::Map {
                        map: names::MAP_SCOPE,
                        source: Box::new(source),
                    })?;
                *have = want;
                slots_written += 1;
            }
        }
        self.versions_map
            .set(generation, version, 0)
            .map_err(|source| LoaderError::Map {
                map: names::MAP_SCOPE_VERSIONS,
                source: Box::new(source),
            })?;
        self.active_map
            .set(0, generation, 0)
            .map_err(|source| LoaderError::Map {
                map: names::MAP_ACTIVE_GENERATION,
                source: Box::new(source),
            })?;
        self.active_generation = generation;
        self.last_flip = Some(Instant::now());
        if self.settings.ready == 0 {
            self.settings.ready = 1;
            self.write_settings()?;
        }
        Ok(ScopeWrite {
            generation,
            slots_written,
        })
    }

    /// Per-reason frame counts, summed over CPUs.
    pub fn reason_counts(&self) -> Result<ReasonCounts> {
        read_reasons(&self.reasons, names::MAP_REASON_STATS)
    }

    /// Packets and bytes sprayed to each configured member, summed over CPUs.
    pub fn member_counts(&self) -> Result<Vec<(u32, TrafficCounter)>> {
        let mut out = Vec::new();
        for (id, member) in self.members.iter().enumerate() {
            if member.is_none() {
                continue;
            }
            let values = self
                .member_stats
                .get(&(id as u32), 0)
                .map_err(|source| LoaderError::Map {
                    map: names::MAP_MEMBER_STATS,
                    source: Box::new(source),
                })?;
            out.push((
                id as u32,
                values.iter().fold(TrafficCounter::default(), |a, b| a.plus(*b)),
            ));
        }
        Ok(out)
    }

    /// Runs the sprayer on one frame with BPF_PROG_TEST_RUN (no attach needed).
    pub fn test_run(&self, frame: &[u8]) -> Result<TestRunOutcome> {
        self.program.test_run(frame)
    }
}

impl std::fmt::Debug for EdgeProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeProgram")
            .field("program", &self.program)
            .field("settings", &self.settings)
            .field("active_generation", &self.active_generation)
            .finish_non_exhaustive()
    }
}

fn check_buckets(buckets: u32) -> Result<()> {
    if !buckets.is_power_of_two() || !(2..=limits::MAX_BUCKETS).contains(&buckets) {
        return Err(LoaderError::Invalid {
            what: "bucket count",
            detail: format!("{buckets} is not a power of two in 2..={}", limits::MAX_BUCKETS),
        });
    }
    Ok(())
}

/// The map of scope versions: new, or pinned in `dir` (taken over when it
/// is there already).
fn versions_map(dir: Option<&Path>) -> Result<Array<MapData, u64>> {
    let map_error = |source| LoaderError::Map {
        map: names::MAP_SCOPE_VERSIONS,
        source: Box::new(source),
    };
    let Some(dir) = dir else {
        return Array::create(2, 0).map_err(map_error);
    };
    let path = dir.join(names::MAP_SCOPE_VERSIONS);
    if !path.exists() {
        Array::<MapData, u64>::create(2, 0)
            .map_err(map_error)?
            .pin(&path)
            .map_err(|source| LoaderError::Pin {
                what: "map",
                path: path.clone(),
                source: Box::new(source),
            })?;
    }
    MapData::from_pin(&path)
        .and_then(|data| Array::try_from(Map::Array(data)))
        .map_err(map_error)
}

/// The key of a local address.
fn local_key(addr: IpAddr) -> [u32; 4] {
    let version = if addr.is_ipv4() { IP_V4 } else { IP_V6 };
    match_key(&addr_words(addr), version)
}

/// Makes `trie` hold exactly `prefixes`.
fn sync_trie(trie: &mut LpmTrie<MapData, [u32; 4], u32>, map: &'static str, prefixes: &[Prefix]) -> Result<()> {
    let map_error = |source| LoaderError::Map {
        map,
        source: Box::new(source),
    };
    let wanted: Vec<(u32, [u32; 4])> = prefixes
        .iter()
        .map(|p| {
            let key = p.lpm_key();
            (key.prefix_len(), key.data())
        })
        .collect();
    for (len, data) in &wanted {
        trie.insert(&Key::new(*len, *data), 1, 0).map_err(map_error)?;
    }
    let present = trie
        .keys()
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(map_error)?;
    for key in present {
        if !wanted.contains(&(key.prefix_len(), key.data())) {
            trie.remove(&key).map_err(map_error)?;
        }
    }
    Ok(())
}

fn check_member_id(id: u32) -> Result<()> {
    if id >= limits::MAX_MEMBERS {
        return Err(LoaderError::Invalid {
            what: "member id",
            detail: format!("{id} is not below {}", limits::MAX_MEMBERS),
        });
    }
    Ok(())
}
