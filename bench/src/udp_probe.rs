//! `udp-probe`: one datagram of every size in a range to a UDP echo server,
//! each checked to come back whole and unchanged. The server is whatever
//! echoes (the tests use `socat`); the probe is only the bounded client.
//!
//! Sizes go one at a time: a datagram is sent, and the probe waits up to
//! `--timeout-ms` for the identical datagram to come back, sending it again
//! up to `--retries` times. Anything else that arrives meanwhile (a late
//! echo of an earlier size, a corrupted one) is counted and ignored. The
//! run is bounded by the number of sizes times (1 + retries) times the
//! timeout, and by `--deadline-s`.

use crate::link_sender::LinkSender;
use anyhow::{bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use std::{
    net::{SocketAddr, UdpSocket},
    ops::RangeInclusive,
    path::PathBuf,
    time::{Duration, Instant},
};

/// Schema name of [`ProbeReport`].
pub const PROBE_SCHEMA: &str = "handoff-udp-probe/1";

/// Arguments of `handoff-bench udp-probe`.
#[derive(Args, Debug, Clone)]
pub struct UdpProbeArgs {
    /// The echo server (`10.77.9.1:7001`, `[fd77:9::1]:7001`).
    #[arg(long)]
    pub target: SocketAddr,
    /// Payload sizes in bytes: sizes and ranges, comma separated (`1-1472`, `1,100,1400-1472`).
    #[arg(long, value_delimiter = ',', value_parser = parse_size_range, required = true)]
    pub sizes: Vec<RangeInclusive<usize>>,
    /// How long to wait for each echo, in milliseconds.
    #[arg(long, default_value_t = 500)]
    pub timeout_ms: u64,
    /// How many times a datagram with no echo is sent again.
    #[arg(long, default_value_t = 2)]
    pub retries: u32,
    /// Probe every size this many times in a row.
    #[arg(long, default_value_t = 1)]
    pub rounds: u32,
    /// Then start more rounds until this many seconds have passed (a run
    /// that spans an event, e.g. a migration); 0: none.
    #[arg(long, default_value_t = 0.0)]
    pub repeat_for_s: f64,
    /// Stop (and report what is left as not tried) after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    pub deadline_s: f64,
    /// Stop (and report what is left as not tried) once this many sizes
    /// failed; 0: never. Bounds a run against a path that drops them all.
    #[arg(long, default_value_t = 0)]
    pub max_failures: u64,
    /// Send every datagram as a raw frame on this interface with an
    /// 802.1Q priority tag (VID 0, PCP `--pcp`) instead of through the
    /// socket; echoes still arrive on the socket. Needs `--dst-mac`.
    #[arg(long, requires = "dst_mac")]
    pub priority_tag_on: Option<String>,
    /// The next hop's MAC for `--priority-tag-on`.
    #[arg(long, value_parser = crate::link_sender::parse_mac)]
    pub dst_mac: Option<[u8; 6]>,
    /// The priority (PCP, 0..=7) of the tag.
    #[arg(long, default_value_t = 5)]
    pub pcp: u8,
    /// Write the JSON report here instead of stdout.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// What the probe saw.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeReport {
    /// Always [`PROBE_SCHEMA`].
    pub schema: String,
    /// The echo server.
    pub target: String,
    /// Sizes probed, in all rounds (each counts once per round).
    pub probed: u64,
    /// Sizes whose echo came back whole and unchanged.
    pub echoed: u64,
    /// Sizes echoed only after a retry.
    pub retried: u64,
    /// Datagrams sent in all (first tries and retries).
    pub sent: u64,
    /// Received datagrams that were not the echo waited for: a late echo of
    /// an earlier size or try, or one whose length or bytes differ.
    pub unexpected: u64,
    /// Sizes never echoed, in order (a size repeats once per round it failed).
    pub failed: Vec<usize>,
    /// The first failed sizes, with the receive error the last try saw.
    pub failures: Vec<ProbeFailure>,
    /// Sizes left when the deadline passed.
    pub not_tried: u64,
    /// The slowest echo, in microseconds.
    pub max_rtt_us: u64,
    /// Wall time of the run, in seconds.
    pub duration_s: f64,
}

/// A size whose echo never came.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeFailure {
    /// The payload size.
    pub size: usize,
    /// The round it failed in (from 0).
    pub round: u32,
    /// What the last receive reported (a timeout, a refused port, ...).
    pub error: String,
}

impl ProbeReport {
    /// True when every probed size came back.
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.not_tried == 0 && self.echoed == self.probed
    }
}

/// `N` or `A-B`.
pub fn parse_size_range(s: &str) -> Result<RangeInclusive<usize>, String> {
    let parse = |v: &str| v.trim().parse::<usize>().map_err(|e| format!("{v:?}: {e}"));
    let range = match s.split_once('-') {
        Some((a, b)) => parse(a)?..=parse(b)?,
        None => parse(s)?..=parse(s)?,
    };
    if range.is_empty() || *range.end() > 65_507 {
        return Err(format!("{s:?}: need 0 <= A <= B <= 65507"));
    }
    Ok(range)
}

/// The payload of `size` bytes for try `attempt` of round `round`: a
/// pattern that differs from one size, round and try to the next, so that a
/// late echo is never taken for the one awaited.
pub fn payload(size: usize, round: u32, attempt: u32) -> Vec<u8> {
    let mut state = ((size as u64) << 40) ^ (u64::from(round) << 8) ^ u64::from(attempt) ^ 0x9e37_79b9_7f4a_7c15;
    (0..size)
        .map(|_| {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// Runs the probe (every size, round after round; see [`UdpProbeArgs`]).
pub fn run(args: &UdpProbeArgs) -> Result<ProbeReport> {
    let bind: SocketAddr = if args.target.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let socket = UdpSocket::bind(bind).context("binding the probe's socket")?;
    socket
        .connect(args.target)
        .with_context(|| format!("connecting to {}", args.target))?;
    let link = match (&args.priority_tag_on, args.dst_mac) {
        (Some(interface), Some(mac)) => Some(LinkSender::priority_tagged(interface, mac, args.pcp)?),
        _ => None,
    };
    let local = socket.local_addr().context("the probe's own address")?;
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let deadline = Instant::now() + Duration::from_secs_f64(args.deadline_s.max(0.0));
    let sizes: Vec<usize> = args.sizes.iter().flat_map(|r| r.clone()).collect();
    let start = Instant::now();
    let mut report = ProbeReport {
        schema: PROBE_SCHEMA.into(),
        target: args.target.to_string(),
        probed: 0,
        echoed: 0,
        retried: 0,
        sent: 0,
        unexpected: 0,
        failed: Vec::new(),
        failures: Vec::new(),
        not_tried: 0,
        max_rtt_us: 0,
        duration_s: 0.0,
    };
    let mut buf = vec![0u8; 65_536];
    let repeat_for = Duration::from_secs_f64(args.repeat_for_s.max(0.0));
    let mut round = 0;
    while round < args.rounds || start.elapsed() < repeat_for {
        for (i, &size) in sizes.iter().enumerate() {
            let gave_up = args.max_failures > 0 && report.failed.len() as u64 >= args.max_failures;
            if gave_up || Instant::now() >= deadline {
                let rounds_left = args.rounds.saturating_sub(round + 1);
                report.not_tried += (sizes.len() - i) as u64 + u64::from(rounds_left) * sizes.len() as u64;
                report.duration_s = start.elapsed().as_secs_f64();
                return Ok(report);
            }
            report.probed += 1;
            let mut last_error = String::from("no echo");
            let mut echoed = false;
            for attempt in 0..=args.retries {
                let data = payload(size, round, attempt);
                let sent_at = Instant::now();
                let sent = match &link {
                    Some(link) => link
                        .send(local, args.target, &data)
                        .map(|()| size)
                        .map_err(std::io::Error::other),
                    None => socket.send(&data),
                };
                match sent {
                    Ok(n) if n == size => {}
                    Ok(n) => bail!("sent {n} bytes of a {size}-byte datagram"),
                    // An ICMP error of an earlier try (port unreachable)
                    // comes back on the next call: note it, try again.
                    Err(e) => {
                        last_error = format!("send: {e}");
                        continue;
                    }
                }
                report.sent += 1;
                let wait_until = sent_at + timeout;
                loop {
                    let now = Instant::now();
                    if now >= wait_until {
                        last_error = format!("no echo within {} ms", timeout.as_millis());
                        break;
                    }
                    socket.set_read_timeout(Some(wait_until - now))?;
                    match socket.recv(&mut buf) {
                        Ok(n) if n == size && buf[..n] == data[..] => {
                            echoed = true;
                            let rtt = sent_at.elapsed().as_micros() as u64;
                            report.max_rtt_us = report.max_rtt_us.max(rtt);
                            break;
                        }
                        Ok(_) => report.unexpected += 1,
                        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                            last_error = format!("no echo within {} ms", timeout.as_millis());
                            break;
                        }
                        Err(e) => {
                            last_error = format!("recv: {e}");
                            // A refused port answers at once: wait out the
                            // timeout anyway so retries are spaced alike.
                            std::thread::sleep(wait_until.saturating_duration_since(Instant::now()));
                            break;
                        }
                    }
                }
                if echoed {
                    if attempt > 0 {
                        report.retried += 1;
                    }
                    break;
                }
            }
            if echoed {
                report.echoed += 1;
            } else {
                report.failed.push(size);
                if report.failures.len() < 32 {
                    report.failures.push(ProbeFailure {
                        size,
                        round,
                        error: last_error,
                    });
                }
            }
        }
        round += 1;
    }
    report.duration_s = start.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_numbers_and_ranges() {
        assert_eq!(parse_size_range("1-1472"), Ok(1..=1472));
        assert_eq!(parse_size_range("7"), Ok(7..=7));
        assert!(parse_size_range("9-3").is_err());
        assert!(parse_size_range("70000").is_err());
    }

    #[test]
    fn payloads_differ_between_tries_and_rounds() {
        assert_eq!(payload(100, 0, 0).len(), 100);
        assert_eq!(payload(100, 0, 0), payload(100, 0, 0));
        assert_ne!(payload(100, 0, 0), payload(100, 0, 1));
        assert_ne!(payload(100, 0, 0), payload(100, 1, 0));
    }

    #[test]
    fn a_local_echo_passes_every_size_and_a_silent_port_fails_each() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let target = server.local_addr().unwrap();
        let echo = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            server.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            while let Ok((n, from)) = server.recv_from(&mut buf) {
                server.send_to(&buf[..n], from).unwrap();
            }
        });
        let args = UdpProbeArgs {
            target,
            sizes: vec![1..=40, 1472..=1472, 9000..=9000],
            timeout_ms: 500,
            retries: 1,
            rounds: 2,
            deadline_s: 30.0,
            repeat_for_s: 0.0,
            max_failures: 0,
            priority_tag_on: None,
            dst_mac: None,
            pcp: 5,
            json: None,
        };
        let report = run(&args).unwrap();
        assert!(report.ok(), "{report:?}");
        assert_eq!(report.probed, 84);
        echo.join().unwrap();

        // Nobody listens there now.
        let silent = UdpProbeArgs {
            sizes: vec![5..=6],
            timeout_ms: 50,
            rounds: 1,
            ..args
        };
        let report = run(&silent).unwrap();
        assert!(!report.ok());
        assert_eq!(report.failed, vec![5, 6]);
        assert_eq!(report.failures.len(), 2);
        // Giving up after the first failure leaves the rest untried.
        let report = run(&UdpProbeArgs {
            sizes: vec![5..=9],
            max_failures: 1,
            rounds: 2,
            ..silent
        })
        .unwrap();
        assert_eq!((report.failed.len(), report.not_tried), (1, 9), "{report:?}");
    }
}
