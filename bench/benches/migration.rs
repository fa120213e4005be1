//! `make bench`, migration cost: what handing a worker's connections to an
//! inheritor costs, by table size (1 k, 10 k, 100 k, 1 M connections), in
//! process and without traffic, so the numbers are the procedure's own:
//!
//! export (scan + wire form) → encode (`FlowRecords` frames of the control
//! protocol) → decode → import (reply direction derived, installed) → cut
//! (redirect) → purge.
//!
//! The baseline in the same run is a plain copy of the same table's records
//! (what any snapshot costs at least); the ratio shows the protocol's
//! overhead on top. Loss and reordering under load are measured end to end
//! by the `disengage_e2e` test and `make demo`, not here.
//! Beside the times, the instructions per connection of the handover and
//! of the copy, from a re-run under callgrind (`bench/src/callgrind.rs`;
//! `HANDOFF_BENCH_INSTRUCTIONS=0` skips them).
//! Results: a table on stdout and `results/migration.json`.

use anyhow::{Context, Result};
use handoff::{
    control::{
        codec::{decode_frame, encode, Envelope},
        flow::{FlowRecord as WireRecord, RecordVersion},
        ids::{Incarnation, MigrationSerial, NodeId, Sender},
        message::{Body, FlowRecords},
    },
    flow::{config::PolicyConfig, Decision, FlowRecord, FlowTable, Owner, Policy, TableConfig, Timestamp},
    migration::{handover, wire},
    node::{handover::RECORDS_PER_CHUNK, view::NodeView},
    scope::{HashParams, Scope},
};
use handoff_bench::{callgrind, plot};
use handoff_common::flow_key::FlowKey;
use serde::Serialize;
use std::{
    net::Ipv4Addr,
    num::NonZeroU64,
    path::{Path, PathBuf},
    time::Instant,
};

const SIZES: [usize; 4] = [1_000, 10_000, 100_000, 1_000_000];

const POLICY: &str = r#"
[[neighbor]]
name = "router"
mac = "02:00:00:00:00:fe"

[default]
action = "forward"
gateway = "router"

[[service]]
vip = "10.0.9.1"
protocol = "udp"
port = 53
[[service.backend]]
address = "10.1.0.1"
port = 5353
[[service.backend]]
address = "10.1.0.2"
port = 5353
"#;

#[derive(Debug, Serialize)]
struct Row {
    connections: usize,
    export_ms: f64,
    encode_ms: f64,
    bytes: usize,
    decode_import_ms: f64,
    cut_ms: f64,
    purge_ms: f64,
    total_ms: f64,
    baseline_copy_ms: f64,
    total_over_copy: f64,
    /// Instructions per connection, export to purge (callgrind).
    instructions_per_connection: Option<f64>,
    /// Instructions per connection of the baseline copy (callgrind).
    copy_instructions_per_connection: Option<f64>,
}

fn table(connections: usize, owner: Owner) -> Result<FlowTable> {
    let config = TableConfig {
        capacity: (2 * connections + 2).next_power_of_two(),
        ..TableConfig::default()
    };
    Ok(FlowTable::new(&config, owner)?)
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

fn run(connections: usize, policy: &Policy) -> Result<Row> {
    let hash = HashParams::default();
    let next = NodeView::new(0, hash, Scope::initial(hash.buckets, &[1])?, 1, vec![]);
    let mut old = table(connections, Owner { node: 0, worker: 0 })?;
    let now = Timestamp::from_nanos(1);
    for i in 0..connections {
        let src = Ipv4Addr::from(0x0a00_0000 + (i / 50_000) as u32);
        let key = FlowKey::new(src.into(), "10.0.9.1".parse()?, 1024 + (i % 50_000) as u16, 53, 17);
        let Decision::Install { reverse_key, actions } = policy.decide(&key) else {
            anyhow::bail!("the policy dropped {key}");
        };
        old.install(key, reverse_key, actions, now)?;
    }

    end_of_step();
    let baseline = Instant::now();
    let copy: Vec<FlowRecord> = old.records().collect();
    let baseline_copy_ms = ms(baseline);
    drop(copy);
    end_of_step();

    let start = Instant::now();
    let outgoing = handover::export(&old, &next);
    let records = outgoing
        .iter()
        .map(|o| wire::to_wire(&o.record, policy, now))
        .collect::<Result<Vec<_>, _>>()?;
    let export_ms = ms(start);

    let t = Instant::now();
    let sender = Sender::Node(NodeId::new(0)?);
    let frames = records
        .chunks(RECORDS_PER_CHUNK)
        .enumerate()
        .map(|(chunk, records)| {
            let body = Body::FlowRecords(FlowRecords {
                serial: MigrationSerial(1),
                chunk: chunk as u32,
                records: records.iter().copied().map(WireRecord::V2).collect(),
            });
            encode(&Envelope::new(sender, Incarnation(1), NonZeroU64::MIN, body))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let encode_ms = ms(t);
    let bytes = frames.iter().map(Vec::len).sum();

    let t = Instant::now();
    let mut heir = table(connections, Owner { node: 1, worker: 0 })?;
    let me = heir.local_owner();
    for frame in &frames {
        let Body::FlowRecords(m) = decode_frame(frame)?.body else {
            anyhow::bail!("decoded something else");
        };
        for record in m.records {
            let WireRecord::V2(record) = record.translate(RecordVersion::V2)? else {
                anyhow::bail!("not a V2 record");
            };
            let record = wire::from_wire(&record, policy, now)?;
            handover::import(&mut heir, record, me, now, now)?;
        }
    }
    let decode_import_ms = ms(t);
    anyhow::ensure!(
        heir.len() == old.len(),
        "imported {} of {} entries",
        heir.len(),
        old.len()
    );

    let t = Instant::now();
    let cut = handover::cut(&mut old, &next).len();
    let cut_ms = ms(t);
    let t = Instant::now();
    let purged = handover::purge(&mut old);
    let purge_ms = ms(t);
    anyhow::ensure!(
        cut == connections && purged == connections && old.is_empty(),
        "cut {cut}, purged {purged}"
    );
    let total_ms = ms(start);
    end_of_step();
    Ok(Row {
        connections,
        export_ms,
        encode_ms,
        bytes,
        decode_import_ms,
        cut_ms,
        purge_ms,
        total_ms,
        baseline_copy_ms,
        total_over_copy: total_ms / baseline_copy_ms.max(1e-6),
        instructions_per_connection: None,
        copy_instructions_per_connection: None,
    })
}

/// Marks the end of a step of [`run`] for callgrind (`--dump-after`): the
/// table's set-up, the baseline copy, the handover. Does nothing.
#[inline(never)]
fn end_of_step() {
    std::hint::black_box(());
}

/// Set in the child run under callgrind: the connection count it measures.
const CHILD_ENV: &str = "HANDOFF_BENCH_CALLGRIND_CONNECTIONS";

/// Instructions per connection of the handover (export to purge) and of
/// the baseline copy at `connections`, from one [`run`] of this benchmark
/// under callgrind (every instruction between two [`end_of_step`] calls).
fn instructions_per_connection(connections: usize) -> Result<(f64, f64)> {
    let program = std::env::current_exe()?;
    let out_dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../results/callgrind-migration-{connections}"));
    let steps = callgrind::count(&callgrind::Counted {
        program: &program,
        args: &[],
        env: &[(CHILD_ENV.to_string(), connections.to_string())],
        collect_in: None,
        dump_after: "*migration::end_of_step*",
        out_dir: &out_dir,
    })?;
    let [_set_up, copy, handover] = steps[..] else {
        anyhow::bail!("callgrind wrote {} step dumps, expected 3", steps.len());
    };
    let per = |ir: u64| ir as f64 / connections as f64;
    Ok((per(handover), per(copy)))
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let policy = Policy::new(PolicyConfig::parse(POLICY, Path::new("policy.toml"))?)?;
    if let Ok(connections) = std::env::var(CHILD_ENV) {
        run(connections.parse().context(CHILD_ENV)?, &policy)?;
        return Ok(());
    }
    let count_instructions = std::env::var("HANDOFF_BENCH_INSTRUCTIONS").map_or(true, |v| v != "0");
    println!("handoff migration cost, in process, one worker to one inheritor (best of 3 per size)");
    println!(
        "{:>11} {:>10} {:>10} {:>12} {:>14} {:>8} {:>9} {:>10} {:>11} {:>8} {:>11} {:>11}",
        "connections",
        "export ms",
        "encode ms",
        "bytes",
        "decode+imp ms",
        "cut ms",
        "purge ms",
        "total ms",
        "copy ms",
        "ratio",
        "instr/conn",
        "copy instr"
    );
    let mut rows = Vec::new();
    for connections in SIZES {
        let mut best = (0..3)
            .map(|_| run(connections, &policy))
            .collect::<Result<Vec<_>>>()
            .with_context(|| format!("{connections} connections"))?
            .into_iter()
            .min_by(|a, b| a.total_ms.total_cmp(&b.total_ms))
            .context("no run")?;
        if count_instructions {
            match instructions_per_connection(connections) {
                Ok((handover, copy)) => {
                    best.instructions_per_connection = Some(handover);
                    best.copy_instructions_per_connection = Some(copy);
                }
                Err(e) => println!(
                    "{connections:>11} instructions not counted: {e:#} (HANDOFF_BENCH_INSTRUCTIONS=0 skips them)"
                ),
            }
        }
        let instructions = |i: Option<f64>| i.map_or_else(|| "-".to_string(), |i| format!("{i:.0}"));
        println!(
            "{:>11} {:>10.2} {:>10.2} {:>12} {:>14.2} {:>8.2} {:>9.2} {:>10.2} {:>11.2} {:>8.1} {:>11} {:>11}",
            best.connections,
            best.export_ms,
            best.encode_ms,
            best.bytes,
            best.decode_import_ms,
            best.cut_ms,
            best.purge_ms,
            best.total_ms,
            best.baseline_copy_ms,
            best.total_over_copy,
            instructions(best.instructions_per_connection),
            instructions(best.copy_instructions_per_connection)
        );
        rows.push(best);
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("migration.json"), serde_json::to_string_pretty(&rows)? + "\n")?;
    println!("wrote results/migration.json");
    plot_rows(&rows, &dir)?;
    Ok(())
}

/// `results/migration-time.svg` (each step's ms and the baseline copy's
/// against connections) and `results/migration-bytes.svg` (bytes on the
/// wire against connections), on log axes.
fn plot_rows(rows: &[Row], dir: &Path) -> Result<()> {
    let series = |name: &str, value: fn(&Row) -> f64| plot::Series {
        name: name.into(),
        points: rows.iter().map(|r| (r.connections as f64, value(r))).collect(),
    };
    plot::log_log_lines(
        &dir.join("migration-time.svg"),
        plot::Labels {
            title: "handoff handover in process: time per step (best of 3)",
            x: "connections",
            y: "ms",
        },
        &[
            series("total", |r| r.total_ms),
            series("export", |r| r.export_ms),
            series("encode", |r| r.encode_ms),
            series("decode + import", |r| r.decode_import_ms),
            series("cut", |r| r.cut_ms),
            series("purge", |r| r.purge_ms),
            series("baseline: copy the records", |r| r.baseline_copy_ms),
        ],
    )?;
    plot::log_log_lines(
        &dir.join("migration-bytes.svg"),
        plot::Labels {
            title: "handoff handover: bytes on the wire",
            x: "connections",
            y: "bytes",
        },
        &[series("FlowRecords frames", |r| r.bytes as f64)],
    )?;
    println!("wrote results/migration-time.svg and results/migration-bytes.svg");
    Ok(())
}
