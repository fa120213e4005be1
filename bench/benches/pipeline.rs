//! `make bench`, per-core pipeline: one worker's [`Pipeline::process`] on the
//! in-memory port, without root, at 1 k, 100 k and 1 M active flows. The
//! traffic is 60-byte IPv4 UDP frames from distinct clients to a VIP service
//! that DNATs to four weighted backends.
//!
//! * established: the table holds every flow; packets visit the flows in a
//!   shuffled order (lookup, counters, DNAT rewrite, incremental checksums,
//!   MAC rewrite), so the table's cache misses are those of real traffic;
//! * new flows: first packets into an emptied table, filling it to N (admit,
//!   policy decision, install of both directions, then the same rewrite);
//! * baseline: the same port loop and frames with a handler that only swaps
//!   the MACs and transmits: the I/O and frame-touch cost with no table.
//!
//! The host is shared and noisy: each round runs the three back to back, the
//! rounds repeat, and the medians are compared. Beside each median, the
//! instructions per packet of the same case, counted by callgrind in a
//! re-run of this benchmark (`bench/src/callgrind.rs`): a figure the host's
//! noise does not move (`HANDOFF_BENCH_INSTRUCTIONS=0` skips it). Results: a
//! table on stdout and `results/pipeline.json`.

use anyhow::{ensure, Context, Result};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use handoff::{
    flow::{config::PolicyConfig, Policy, Timestamp},
    io::{
        memory::{MemoryFrame, MemoryPort},
        FrameBuf, PacketIo, Verdict,
    },
    node::{
        pipeline::{Outbox, Pipeline},
        view::NodeView,
    },
    scope::{HashParams, Scope},
};
use handoff_bench::{callgrind, measure, plot};
use handoff_testbed::frames::{udp4, DST_MAC};
use serde::Serialize;
use std::{
    hint::black_box,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

const SIZES: [usize; 3] = [1_000, 100_000, 1_000_000];
/// Packets per established and per baseline measurement.
const PACKETS: usize = 2_000_000;
/// Fewest setups per new-flow measurement: a small table is emptied and
/// filled again until this many, so the timed span is not a few microseconds.
const MIN_SETUPS: usize = 500_000;
/// Frames injected, then timed through the port together: the clock is read
/// twice per slice, not per packet.
const SLICE: usize = 256;
/// Frames per `poll_rx`, as a worker's RX burst.
const BURST: usize = 64;
/// 14 (Ethernet) + 20 (IPv4) + 8 (UDP) + 18: a minimum Ethernet frame.
const PAYLOAD: [u8; 18] = [0x5a; 18];
const FRAME_LEN: usize = 60;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 9, 1);
const PORT: u16 = 53;
const BACKEND_PORT: u16 = 5353;
/// Past every default idle timeout: a sweep at `now + IDLE` removes all flows.
const IDLE: Duration = Duration::from_secs(3600);

/// Backends 10.1.0.1..=4 with weights 1..=4, each with its own MAC.
fn policy_toml(capacity: usize) -> String {
    let mut toml = format!(
        "[table]\ncapacity = {capacity}\n\n[[neighbor]]\nname = \"router\"\nmac = \"02:00:00:00:00:fe\"\n\n\
         [default]\naction = \"forward\"\ngateway = \"router\"\n\n\
         [[service]]\nvip = \"{VIP}\"\nprotocol = \"udp\"\nport = {PORT}\n"
    );
    for b in 1..=4 {
        toml += &format!(
            "[[service.backend]]\naddress = \"10.1.0.{b}\"\nport = {BACKEND_PORT}\nweight = {b}\nmac = \"02:00:00:00:01:0{b}\"\n"
        );
    }
    toml
}

/// splitmix64: a fixed, dependency-free shuffle so every run sees the same order.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The frames of N client flows to the VIP and the shuffled order they are sent in.
struct Traffic {
    frames: Vec<u8>,
    order: Vec<u32>,
}

impl Traffic {
    fn new(flows: usize) -> Self {
        let mut frames = Vec::with_capacity(flows * FRAME_LEN);
        for i in 0..flows as u32 {
            // 256 source ports per client address, clients from 172.16.0.0.
            let client = Ipv4Addr::from(0xac10_0000 + (i >> 8));
            let frame = udp4(client, VIP, 1024 + (i & 0xff) as u16, PORT, &PAYLOAD);
            frames.extend_from_slice(&frame);
        }
        let mut order: Vec<u32> = (0..flows as u32).collect();
        let mut rng = Rng(0x7069_7065);
        for i in (1..order.len()).rev() {
            order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
        }
        Self { frames, order }
    }

    fn frame(&self, flow: u32) -> &[u8] {
        let at = flow as usize * FRAME_LEN;
        &self.frames[at..at + FRAME_LEN]
    }
}

/// Sends `packets` frames, the flows in `traffic`'s order (cycling), through
/// `port` to `handle`. Injecting is the wire's work and is not timed; the
/// port's receive, the handler and the transmit drain are.
fn timed(
    port: &mut MemoryPort,
    traffic: &Traffic,
    packets: usize,
    mut handle: impl FnMut(&mut MemoryFrame) -> Verdict,
) -> Result<Duration> {
    let mut elapsed = Duration::ZERO;
    let mut next = 0;
    let mut sent = 0;
    let mut left = packets;
    while left > 0 {
        let n = left.min(SLICE);
        for _ in 0..n {
            port.inject(traffic.frame(traffic.order[next]))?;
            next = (next + 1) % traffic.order.len();
        }
        let start = Instant::now();
        sent += drive(port, n, &mut handle);
        elapsed += start.elapsed();
        left -= n;
    }
    ensure!(sent == packets, "transmitted {sent} of {packets} frames");
    Ok(elapsed)
}

/// The measured work on `n` injected frames: receive, `handle`, transmit.
/// Out of line and named so that callgrind collects inside it alone
/// ([`INSTRUCTIONS_IN`]).
#[inline(never)]
fn drive(port: &mut MemoryPort, n: usize, mut handle: impl FnMut(&mut MemoryFrame) -> Verdict) -> usize {
    let mut handled = 0;
    while handled < n {
        handled += port.poll_rx(&mut handle);
    }
    port.drain_tx(|frame| {
        black_box(frame);
    })
}

/// Callgrind's pattern for [`drive`]'s instances.
const INSTRUCTIONS_IN: &str = "*pipeline::drive*";
/// Callgrind's pattern for [`end_of_case`].
const CASE_MARKER: &str = "*pipeline::end_of_case*";
/// Set in the child run under callgrind: the flow count it measures.
const CHILD_ENV: &str = "HANDOFF_BENCH_CALLGRIND_FLOWS";
/// Packets per established and baseline case under callgrind: the count per
/// packet is steady long before this (it is a simulation, not a clock).
const COUNTED_PACKETS: usize = 100_000;

/// Marks the end of a case for callgrind (`--dump-after`); does nothing.
#[inline(never)]
fn end_of_case(case: Case) {
    black_box(case);
}

/// The child under callgrind: each case once at `flows` flows, in
/// [`COUNTED_CASES`] order, each followed by [`end_of_case`].
fn counted_child(flows: usize) -> Result<()> {
    let traffic = Traffic::new(flows);
    let mut worker = Worker::new((2 * flows).next_power_of_two())?;
    worker.empty()?;
    worker.run(&traffic, flows)?;
    end_of_case(Case::NewFlows);
    worker.run(&traffic, COUNTED_PACKETS)?;
    end_of_case(Case::Established);
    timed(&mut worker.port, &traffic, COUNTED_PACKETS, swap_macs)?;
    end_of_case(Case::Baseline);
    Ok(())
}

/// The cases [`counted_child`] runs, in order.
const COUNTED_CASES: [Case; 3] = [Case::NewFlows, Case::Established, Case::Baseline];

/// Instructions per packet of every case at `flows` flows, from a run of
/// this benchmark under callgrind.
fn instructions_per_packet(flows: usize) -> Result<Vec<(Case, f64)>> {
    let program = std::env::current_exe()?;
    let out_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../results/callgrind-pipeline-{flows}"));
    let totals = callgrind::count(&callgrind::Counted {
        program: &program,
        args: &[],
        env: &[(CHILD_ENV.to_string(), flows.to_string())],
        collect_in: Some(INSTRUCTIONS_IN),
        dump_after: CASE_MARKER,
        out_dir: &out_dir,
    })?;
    ensure!(
        totals.len() == COUNTED_CASES.len(),
        "callgrind wrote {} case dumps, expected {}",
        totals.len(),
        COUNTED_CASES.len()
    );
    Ok(COUNTED_CASES
        .iter()
        .zip(totals)
        .map(|(&case, ir)| {
            let packets = if case == Case::NewFlows { flows } else { COUNTED_PACKETS };
            (case, ir as f64 / packets as f64)
        })
        .collect())
}

fn swap_macs(frame: &mut MemoryFrame) -> Verdict {
    let bytes = frame.bytes_mut();
    for i in 0..6 {
        bytes.swap(i, i + 6);
    }
    Verdict::Transmit
}

/// One worker of a single-node, single-worker scope: every flow is its own.
struct Worker {
    pipeline: Pipeline,
    port: MemoryPort,
    out: Outbox,
    /// Nanoseconds; moves forward by [`IDLE`] at each emptying.
    clock: u64,
}

impl Worker {
    fn new(capacity: usize) -> Result<Self> {
        let config = PolicyConfig::parse(&policy_toml(capacity), Path::new("pipeline-bench.toml"))?;
        let policy = Arc::new(Policy::new(config)?);
        let hash = HashParams::default();
        let scope = Scope::initial(hash.buckets, &[0])?;
        let view = Arc::new(NodeView::new(0, hash, scope, 1, vec![Some(DST_MAC)]));
        Ok(Self {
            pipeline: Pipeline::new(0, DST_MAC, view, policy, 64)?,
            port: MemoryPort::new(SLICE, 128, BURST),
            out: Outbox::with_capacity(BURST),
            clock: 1,
        })
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_nanos(self.clock)
    }

    /// Expires every flow, untimed: the table is empty again, its memory
    /// already touched, as on a node that has run for a while.
    fn empty(&mut self) -> Result<()> {
        self.clock += IDLE.as_nanos() as u64;
        let now = self.now();
        let capacity = self.pipeline.table().capacity();
        self.pipeline.expire(now, capacity);
        ensure!(self.pipeline.table().is_empty(), "a full sweep left flows behind");
        Ok(())
    }

    /// Runs `packets` frames through the pipeline; fails unless every one
    /// was rewritten and transmitted.
    fn run(&mut self, traffic: &Traffic, packets: usize) -> Result<Duration> {
        let now = self.now();
        let Self {
            pipeline, port, out, ..
        } = self;
        let before = pipeline.counters();
        let elapsed = timed(port, traffic, packets, |frame| {
            let verdict = pipeline.process(frame, 0, now, out);
            // The worker drains the outbox after each burst; clearing it
            // after each frame keeps it within its preallocated capacity.
            out.installed.clear();
            verdict
        })?;
        let after = pipeline.counters();
        ensure!(
            after.tx - before.tx == packets as u64 && after.dropped() == 0,
            "not every packet took the DNAT path: {after:?}"
        );
        Ok(elapsed)
    }

    /// Empties the table and fills it with every flow, as often as it takes
    /// to reach [`MIN_SETUPS`]; the table is full when it returns.
    fn fill(&mut self, traffic: &Traffic) -> Result<(Duration, usize)> {
        let flows = traffic.order.len();
        let fills = MIN_SETUPS.div_ceil(flows);
        let created = self.pipeline.counters().created;
        let mut elapsed = Duration::ZERO;
        for _ in 0..fills {
            self.empty()?;
            elapsed += self.run(traffic, flows)?;
        }
        let setups = fills * flows;
        ensure!(
            self.pipeline.counters().created - created == setups as u64 && self.pipeline.table().len() == 2 * flows,
            "expected {setups} setups and {flows} connections in the table"
        );
        Ok((elapsed, setups))
    }
}

/// The DNAT path really runs: a first packet leaves for a backend, from the
/// node's MAC to the backend's.
fn check_path(traffic: &Traffic) -> Result<()> {
    let mut worker = Worker::new(1024)?;
    worker.port.inject(traffic.frame(0))?;
    let Worker {
        pipeline, port, out, ..
    } = &mut worker;
    port.poll_rx(|frame| pipeline.process(frame, 0, Timestamp::from_nanos(1), out));
    let sent = port.take_transmitted();
    let frame = sent.first().context("the first packet was not transmitted")?;
    let packet = SlicedPacket::from_ethernet(frame)?;
    let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Udp(udp))) = (packet.net, packet.transport) else {
        anyhow::bail!("not IPv4 UDP after the rewrite");
    };
    let backend = ip.header().destination();
    ensure!(
        backend[..3] == [10, 1, 0] && (1..=4).contains(&backend[3]) && udp.destination_port() == BACKEND_PORT,
        "sent to {backend:?}:{}, not a backend",
        udp.destination_port()
    );
    ensure!(
        frame[..6] == [2, 0, 0, 0, 1, backend[3]] && frame[6..12] == DST_MAC,
        "MACs not set for the backend"
    );
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Case {
    Established,
    NewFlows,
    Baseline,
}

#[derive(Debug, Serialize)]
struct Row {
    flows: usize,
    case: Case,
    /// Median over the rounds.
    mpps: f64,
    ns_per_packet: f64,
    /// Pipeline packets/s over baseline packets/s (medians).
    over_baseline: f64,
    /// Every round's ns per packet.
    samples_ns: Vec<f64>,
    /// Instructions per packet (callgrind), `None` when not counted.
    instructions_per_packet: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Summary {
    method: String,
    host_cpus: usize,
    frame_len: usize,
    packets_per_measurement: usize,
    min_setups_per_measurement: usize,
    rounds: usize,
    /// Flow table bytes (slab and index) per size.
    table_bytes: Vec<(usize, usize)>,
    rows: Vec<Row>,
}

fn ns_per(elapsed: Duration, packets: usize) -> f64 {
    elapsed.as_secs_f64() * 1e9 / packets as f64
}

/// One size's results.
struct Measured {
    /// Every round's ns per packet, by case.
    samples: Vec<(Case, Vec<f64>)>,
    /// Flow table bytes (slab and index).
    table_bytes: usize,
}

fn measure(flows: usize, rounds: usize) -> Result<Measured> {
    let traffic = Traffic::new(flows);
    check_path(&traffic)?;
    // Two entries per connection; a power of two keeps an entry at 128 bytes.
    let mut worker = Worker::new((2 * flows).next_power_of_two())?;
    // Warm-up, untimed: first touch of the table's pages, caches, branch predictors.
    worker.fill(&traffic)?;
    worker.run(&traffic, PACKETS / 10)?;
    timed(&mut worker.port, &traffic, PACKETS / 10, swap_macs)?;
    let mut samples = [Case::NewFlows, Case::Established, Case::Baseline].map(|c| (c, Vec::new()));
    for _ in 0..rounds {
        let (elapsed, setups) = worker.fill(&traffic)?;
        samples[0].1.push(ns_per(elapsed, setups));
        samples[1].1.push(ns_per(worker.run(&traffic, PACKETS)?, PACKETS));
        samples[2]
            .1
            .push(ns_per(timed(&mut worker.port, &traffic, PACKETS, swap_macs)?, PACKETS));
    }
    ensure!(
        worker.pipeline.table().counters().evicted == 0,
        "the table evicted: it is too small for {flows} flows"
    );
    Ok(Measured {
        samples: samples.into(),
        table_bytes: worker.pipeline.table().memory_bytes(),
    })
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    if let Ok(flows) = std::env::var(CHILD_ENV) {
        return counted_child(flows.parse().context(CHILD_ENV)?);
    }
    let count_instructions = std::env::var("HANDOFF_BENCH_INSTRUCTIONS").map_or(true, |v| v != "0");
    let rounds = measure::repeats(5).max(1);
    let method = format!(
        "median of {rounds} rounds; a round is new flows (an emptied table filled to N, repeated to >= {MIN_SETUPS} setups), \
         established ({PACKETS} packets over the N flows in a shuffled order) and baseline (the same packets, MAC swap only), \
         back to back on one thread; timed: poll_rx + handler + TX drain per slice of {SLICE} frames, the injection is not"
    );
    println!(
        "handoff pipeline micro-benchmark: one worker, in-memory port, {FRAME_LEN}-byte IPv4 UDP frames to a VIP, DNAT to 4 weighted backends"
    );
    println!("method: {method}");
    println!(
        "\n{:>9}  {:<12} {:>8} {:>9} {:>12} {:>10}",
        "flows", "case", "Mpps", "ns/pkt", "vs baseline", "instr/pkt"
    );
    let start = Instant::now();
    let mut rows = Vec::new();
    let mut table_bytes = Vec::new();
    for flows in SIZES {
        let Measured {
            samples,
            table_bytes: bytes,
        } = measure(flows, rounds).with_context(|| format!("{flows} flows"))?;
        table_bytes.push((flows, bytes));
        let baseline_ns = samples
            .iter()
            .find(|(c, _)| *c == Case::Baseline)
            .map(|(_, s)| measure::median(s.clone()).unwrap_or(f64::NAN))
            .context("no baseline")?;
        let instructions = if count_instructions {
            instructions_per_packet(flows).unwrap_or_else(|e| {
                println!("{flows:>9}  instructions not counted: {e:#} (HANDOFF_BENCH_INSTRUCTIONS=0 skips them)");
                Vec::new()
            })
        } else {
            Vec::new()
        };
        for (case, samples_ns) in samples {
            let ns = measure::median(samples_ns.clone()).unwrap_or(f64::NAN);
            let row = Row {
                flows,
                case,
                mpps: 1e3 / ns,
                ns_per_packet: ns,
                over_baseline: baseline_ns / ns,
                samples_ns,
                instructions_per_packet: instructions.iter().find(|(c, _)| *c == case).map(|&(_, i)| i),
            };
            println!(
                "{:>9}  {:<12} {:>8.2} {:>9.1} {:>12.2} {:>10}",
                row.flows,
                format!("{:?}", row.case),
                row.mpps,
                row.ns_per_packet,
                row.over_baseline,
                row.instructions_per_packet
                    .map_or_else(|| "-".into(), |i| format!("{i:.0}"))
            );
            rows.push(row);
        }
    }
    println!("(ran {:.1} s)", start.elapsed().as_secs_f64());
    let summary = Summary {
        method,
        host_cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        frame_len: FRAME_LEN,
        packets_per_measurement: PACKETS,
        min_setups_per_measurement: MIN_SETUPS,
        rounds,
        table_bytes,
        rows,
    };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../results");
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let path = dir.join("pipeline.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary)? + "\n")?;
    println!("wrote {}", path.display());
    plot_rows(&summary.rows, &dir)?;
    Ok(())
}

/// `results/pipeline.svg` (ns per packet against flows, every case) and,
/// when counted, `results/pipeline-instructions.svg` (instructions per packet).
fn plot_rows(rows: &[Row], dir: &Path) -> Result<()> {
    let by_case = |value: &dyn Fn(&Row) -> Option<f64>| -> Vec<plot::Series> {
        [Case::Established, Case::NewFlows, Case::Baseline]
            .into_iter()
            .map(|case| plot::Series {
                name: format!("{case:?}"),
                points: rows
                    .iter()
                    .filter(|r| r.case == case)
                    .filter_map(|r| Some((r.flows as f64, value(r)?)))
                    .collect(),
            })
            .collect()
    };
    let out = dir.join("pipeline.svg");
    plot::log_log_lines(
        &out,
        plot::Labels {
            title: "handoff per-core pipeline: time per packet (median)",
            x: "flows in the table",
            y: "ns per packet",
        },
        &by_case(&|r| Some(r.ns_per_packet)),
    )?;
    println!("wrote {}", out.display());
    if rows.iter().any(|r| r.instructions_per_packet.is_some()) {
        let out = dir.join("pipeline-instructions.svg");
        plot::log_log_lines(
            &out,
            plot::Labels {
                title: "handoff per-core pipeline: instructions per packet (callgrind)",
                x: "flows in the table",
                y: "instructions per packet",
            },
            &by_case(&|r| r.instructions_per_packet),
        )?;
        println!("wrote {}", out.display());
    }
    Ok(())
}
