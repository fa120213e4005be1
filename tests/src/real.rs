//! Real, unmodified Debian programs on the test bed (installed by
//! `scripts/bootstrap`): nginx serves HTTP, `socat` echoes UDP and `iperf3`
//! takes bulk TCP on the services; `curl`, `wrk`, `iperf3`, `ping` and the
//! bench's `udp-probe` run in the client namespace against the VIPs.
//!
//! Every program runs inside a namespace of this run. Servers are started
//! with [`Cluster::spawn`] (stopped by pid with the cluster); every client
//! run goes through `timeout`, so no run outlives its bound.

use crate::{
    cluster::{arg, socket_string, url_host, wait_until, Cluster, Family, NsRef},
    service_path::{HTTP_PORT, IPERF_PORT, IPERF_SERVICE, SOCAT_UDP_PORT},
};
use anyhow::{bail, Context, Result};
use std::{
    path::{Path, PathBuf},
    process::ExitStatus,
    time::{Duration, Instant},
};

/// The sizes of the HTTP objects every service serves: one byte, just
/// under and over one segment, two segments, a 27 KB page, 1 MiB, 10 MiB.
pub const HTTP_SIZES: [usize; 6] = [1, 1_400, 3_000, 27_000, 1_048_576, 10_485_760];

/// The files nginx serves, identical on every service (one directory).
#[derive(Clone, Debug)]
pub struct HttpObjects {
    /// The document root.
    pub dir: PathBuf,
}

impl HttpObjects {
    /// Writes one file of each of [`HTTP_SIZES`] under `dir`, with
    /// pseudo-random content (seeded by `seed`).
    pub fn generate(dir: &Path, seed: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut state = seed | 1;
        for size in HTTP_SIZES {
            let bytes: Vec<u8> = (0..size)
                .map(|_| {
                    state ^= state >> 12;
                    state ^= state << 25;
                    state ^= state >> 27;
                    (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
                })
                .collect();
            let path = dir.join(Self::name(size));
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(Self { dir: dir.to_path_buf() })
    }

    /// The file name of the object of `size` bytes.
    pub fn name(size: usize) -> String {
        format!("object-{size}.bin")
    }

    /// The content of the object of `size` bytes.
    pub fn content(&self, size: usize) -> Result<Vec<u8>> {
        let path = self.dir.join(Self::name(size));
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// Its URL through the VIP of `family`.
    pub fn url(family: Family, size: usize) -> String {
        format!("http://{}:{HTTP_PORT}/{}", url_host(family.vip()), Self::name(size))
    }
}

/// FNV-1a, 64 bits: a short fingerprint of a body for messages.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Describes how `got` differs from `want` (`None` when equal).
pub fn body_difference(want: &[u8], got: &[u8]) -> Option<String> {
    if want == got {
        return None;
    }
    let first = want
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(want.len().min(got.len()));
    Some(format!(
        "{} bytes (fnv {:016x}) instead of {} (fnv {:016x}), first difference at byte {first}",
        got.len(),
        fingerprint(got),
        want.len(),
        fingerprint(want)
    ))
}

/// What a bounded program run printed and how it ended.
#[derive(Debug)]
pub struct ProgramRun {
    /// The command line, for messages.
    pub command: String,
    /// How it ended (`timeout` exits 124 when the bound stopped it).
    pub status: ExitStatus,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

impl ProgramRun {
    /// True when it exited 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Whether `timeout` had to stop it.
    pub fn timed_out(&self) -> bool {
        self.status.code() == Some(124) || self.status.code() == Some(137)
    }

    /// The command, its exit and its stderr, for a failure message.
    pub fn describe(&self) -> String {
        format!(
            "`{}` exited {}{}\nstderr: {}",
            self.command,
            self.status,
            if self.timed_out() {
                " (stopped by its time bound)"
            } else {
                ""
            },
            self.stderr.trim()
        )
    }
}

/// The `timeout` bound (`-k 2 <seconds>`) in front of every client program.
fn bounded(limit: Duration, program: &str, args: &[String]) -> Vec<String> {
    let mut all = vec![
        arg("-k"),
        arg(2),
        arg(format!("{:.1}", limit.as_secs_f64())),
        arg(program),
    ];
    all.extend(args.iter().cloned());
    all
}

impl Cluster {
    /// Runs `program args` in `ns` under `timeout` (at most `limit`, then
    /// SIGTERM, and SIGKILL 2 s later) and returns what it did.
    pub fn run_bounded(&self, ns: NsRef, limit: Duration, program: &str, args: &[String]) -> Result<ProgramRun> {
        let mut cmd = self.ns(ns).command("timeout");
        cmd.args(bounded(limit, program, args))
            .stdin(std::process::Stdio::null());
        let out = cmd.output().with_context(|| format!("running {program} in {ns:?}"))?;
        Ok(ProgramRun {
            command: format!("{program} {}", args.join(" ")),
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Starts `program args` in `ns` under `timeout` as a process of the
    /// cluster named `name` (its output in the log directory); returns its
    /// index for [`Cluster::process`].
    pub fn spawn_bounded(
        &mut self,
        name: &str,
        ns: NsRef,
        limit: Duration,
        program: &str,
        args: &[String],
    ) -> Result<usize> {
        self.spawn(name, ns, Path::new("timeout"), &bounded(limit, program, args))
    }

    /// Waits until `ns` has a `protocol` ("tcp" or "udp") socket listening
    /// on `port` for each of `addresses`.
    fn wait_listening(&self, ns: NsRef, protocol: &str, port: u16, addresses: &[String]) -> Result<()> {
        let flag = if protocol == "tcp" { "-Hltn" } else { "-Hlun" };
        let mut last = String::new();
        let ready = wait_until(Duration::from_secs(10), || {
            last = self.ns(ns).exec("ss", &[flag]).unwrap_or_default();
            addresses
                .iter()
                .all(|a| last.split_whitespace().any(|w| w == format!("{a}:{port}")))
        });
        if !ready {
            bail!("nothing listens on {protocol} {addresses:?} port {port} in {ns:?}: {last}");
        }
        Ok(())
    }

    /// Starts the real servers on the services: nginx (every service, both
    /// families, serving `objects`), a `socat` UDP echo (every service, one
    /// per family) and `iperf3 -s` (on [`IPERF_SERVICE`], one per family),
    /// and waits until each listens.
    pub fn start_real_services(&mut self, objects: &HttpObjects) -> Result<()> {
        for i in 0..self.services.len() {
            let name = self.services[i].name.clone();
            let (ip, ip6) = (self.services[i].port.ip, self.services[i].port.ip6);
            let dir = self.log_dir.join(format!("nginx-{name}"));
            std::fs::create_dir_all(&dir)?;
            let config = format!(
                "daemon off;\nuser root;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log warn;\nevents {{\n  worker_connections 1024;\n}}\nhttp {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n  fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n  default_type application/octet-stream;\n  sendfile on;\n  keepalive_requests 1000000;\n  keepalive_timeout 60s;\n  server {{\n    listen {ip}:{HTTP_PORT};\n    listen [{ip6}]:{HTTP_PORT};\n    root {root};\n  }}\n}}\n",
                dir = dir.display(),
                root = objects.dir.display(),
            );
            let conf = self.write_file(&format!("nginx-{name}.conf"), &config)?;
            self.spawn(
                &format!("{name}-nginx"),
                NsRef::Service(i),
                Path::new("nginx"),
                &[
                    arg("-p"),
                    arg(dir.display()),
                    arg("-e"),
                    arg(dir.join("error.log").display()),
                    arg("-c"),
                    arg(conf.display()),
                ],
            )?;
            for (family, address) in [("4", ip.to_string()), ("6", format!("[{ip6}]"))] {
                // One child per datagram (`fork`), which answers it and
                // exits after 1 s of silence; -b: datagrams up to 64 KiB.
                self.spawn(
                    &format!("{name}-socat{family}"),
                    NsRef::Service(i),
                    Path::new("socat"),
                    &[
                        arg("-T"),
                        arg(1),
                        arg("-b"),
                        arg(65_536),
                        arg(format!("UDP{family}-RECVFROM:{SOCAT_UDP_PORT},bind={address},fork")),
                        arg("PIPE"),
                    ],
                )?;
            }
            if i == IPERF_SERVICE {
                self.start_iperf3_servers(i)?;
            }
        }
        for i in 0..self.services.len() {
            let (ip, ip6) = (self.services[i].port.ip, self.services[i].port.ip6);
            let both = [ip.to_string(), format!("[{ip6}]")];
            let ns = NsRef::Service(i);
            self.wait_listening(ns, "tcp", HTTP_PORT, &both)
                .with_context(|| format!("nginx: {}", self.log_tail(&format!("{}-nginx", self.services[i].name))))?;
            self.wait_listening(ns, "udp", SOCAT_UDP_PORT, &both)?;
        }
        Ok(())
    }

    /// Starts `iperf3 -s` on service `i`, one per address family (each
    /// bound to the service's address of that family, so a v4 and a v6
    /// test may run at once), and waits until both listen.
    pub fn start_iperf3_servers(&mut self, i: usize) -> Result<()> {
        let name = self.services[i].name.clone();
        let (ip, ip6) = (self.services[i].port.ip, self.services[i].port.ip6);
        for address in [ip.to_string(), ip6.to_string()] {
            self.spawn(
                &format!("{name}-iperf3-{address}"),
                NsRef::Service(i),
                Path::new("iperf3"),
                &[arg("-s"), arg("-B"), arg(&address), arg("-p"), arg(IPERF_PORT)],
            )?;
        }
        self.wait_listening(
            NsRef::Service(i),
            "tcp",
            IPERF_PORT,
            &[ip.to_string(), format!("[{ip6}]")],
        )
    }

    /// The last lines of the stderr of the process named `name`.
    pub fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.log_dir.join(format!("{name}.err"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The client namespace's TCP counters (`/proc/net/snmp`, `Tcp:` line) by name.
    pub fn client_tcp_counters(&self) -> Result<std::collections::HashMap<String, i64>> {
        let text = self.client.exec("cat", &["/proc/net/snmp"])?;
        let mut lines = text.lines().filter(|l| l.starts_with("Tcp:"));
        let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
            bail!("no Tcp lines in /proc/net/snmp: {text}");
        };
        Ok(names
            .split_whitespace()
            .skip(1)
            .zip(values.split_whitespace().skip(1))
            .filter_map(|(n, v)| Some((n.to_string(), v.parse().ok()?)))
            .collect())
    }

    /// Every node's drop and kernel-drop counters that are not zero, and
    /// its rx/tx, in one line per node: the evidence to print beside a
    /// failure.
    pub fn node_counters_summary(&self) -> String {
        (0..self.nodes.len())
            .map(|i| match self.node_stats(i) {
                Ok(stats) => {
                    let mut parts = Vec::new();
                    if let Some(totals) = stats["totals"].as_object() {
                        for (k, v) in totals {
                            let n = v.as_u64().unwrap_or(0);
                            if (k.starts_with("drop") || k == "rx" || k == "tx" || k.contains("fragment")) && n > 0 {
                                parts.push(format!("{k}={n}"));
                            }
                        }
                    }
                    let kernel = kernel_drops(&stats);
                    if kernel > 0 {
                        parts.push(format!("kernel_drops={kernel}"));
                    }
                    format!("{}: {}", self.nodes[i].name, parts.join(" "))
                }
                Err(e) => format!("{}: no stats: {e:#}", self.nodes[i].name),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The kernel's drops in a node's stats: its `kernel_*` totals.
fn kernel_drops(stats: &serde_json::Value) -> u64 {
    stats["totals"]
        .as_object()
        .map(|totals| {
            totals
                .iter()
                .filter(|(k, _)| k.starts_with("kernel_"))
                .map(|(_, v)| v.as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

/// What `ping` reported: `(transmitted, received)`.
pub fn parse_ping(stdout: &str) -> Option<(u64, u64)> {
    let line = stdout.lines().find(|l| l.contains("packets transmitted"))?;
    let mut numbers = line
        .split(',')
        .filter_map(|part| part.split_whitespace().next()?.parse::<u64>().ok());
    Some((numbers.next()?, numbers.next()?))
}

/// What `wrk` reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WrkReport {
    /// Requests completed.
    pub requests: u64,
    /// Bytes read.
    pub read: String,
    /// Socket errors: connect, read, write, timeout.
    pub socket_errors: [u64; 4],
    /// Non-2xx or 3xx responses.
    pub non_2xx: u64,
    /// Requests per second.
    pub requests_per_s: f64,
}

/// Parses `wrk`'s summary.
pub fn parse_wrk(stdout: &str) -> Option<WrkReport> {
    let mut report = WrkReport::default();
    let mut seen_requests = false;
    for line in stdout.lines().map(str::trim) {
        if let Some((count, rest)) = line.split_once(" requests in ") {
            report.requests = count.trim().parse().ok()?;
            report.read = rest.rsplit_once(", ").map(|(_, r)| r.to_string()).unwrap_or_default();
            seen_requests = true;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            let values: Vec<u64> = rest
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse().ok())
                .collect();
            if values.len() == 4 {
                report.socket_errors = [values[0], values[1], values[2], values[3]];
            }
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            report.non_2xx = rest.trim().parse().ok()?;
        } else if let Some(rest) = line.strip_prefix("Requests/sec:") {
            report.requests_per_s = rest.trim().parse().unwrap_or(0.0);
        }
    }
    seen_requests.then_some(report)
}

/// What `iperf3 --json` reported at the end of a test.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Iperf3Report {
    /// Bits per second the server received, all streams.
    pub received_bps: f64,
    /// Bytes the server received.
    pub bytes: u64,
    /// The sender's retransmitted segments.
    pub retransmits: u64,
}

/// The arguments of `iperf3` as a client of the server at `server`:
/// 8 parallel streams for `seconds`, a 5 s connect timeout, a JSON report.
pub fn iperf3_client_args(server: std::net::IpAddr, seconds: u32) -> Vec<String> {
    vec![
        arg("--client"),
        arg(server),
        arg("--port"),
        arg(IPERF_PORT),
        arg("--parallel"),
        arg(8),
        arg("--time"),
        arg(seconds),
        arg("--connect-timeout"),
        arg(5000),
        arg("--json"),
    ]
}

/// Reads `iperf3 --json` output; `Err` when it is no JSON, carries an
/// `error`, or moved no bytes.
pub fn parse_iperf3(stdout: &str) -> Result<Iperf3Report, String> {
    let json: serde_json::Value = serde_json::from_str(stdout).map_err(|e| format!("iperf3 printed no JSON ({e})"))?;
    if let Some(error) = json.get("error") {
        return Err(format!("iperf3 reported an error: {error}"));
    }
    let end = &json["end"];
    let report = Iperf3Report {
        received_bps: end["sum_received"]["bits_per_second"].as_f64().unwrap_or(0.0),
        bytes: end["sum_received"]["bytes"].as_u64().unwrap_or(0),
        retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
    };
    if report.bytes == 0 {
        return Err("iperf3 moved no bytes".into());
    }
    Ok(report)
}

/// The `udp-probe` arguments for `sizes` against the socat echo on the VIP
/// of `family`, reporting to `json`: one round, then more until
/// `repeat_for_s` seconds have passed; it gives up after 16 failed sizes
/// or `deadline_s`.
pub fn udp_probe_args(family: Family, sizes: &str, json: &Path, repeat_for_s: u32, deadline_s: u32) -> Vec<String> {
    vec![
        arg("udp-probe"),
        arg("--target"),
        socket_string(family.vip(), SOCAT_UDP_PORT),
        arg("--sizes"),
        arg(sizes),
        arg("--timeout-ms"),
        arg(500),
        arg("--retries"),
        arg(2),
        arg("--repeat-for-s"),
        arg(repeat_for_s),
        arg("--deadline-s"),
        arg(deadline_s),
        arg("--max-failures"),
        arg(16),
        arg("--json"),
        arg(json.display()),
    ]
}

impl Cluster {
    /// Fetches the object of `size` through the VIP of `family` with curl and
    /// compares it byte for byte; `Err` names what went wrong.
    pub fn fetch(&self, objects: &HttpObjects, family: Family, size: usize, tag: &str) -> Result<Duration, String> {
        let out = self.log_dir.join(format!("curl-{tag}-{}-{size}.bin", family.name()));
        let _ = std::fs::remove_file(&out);
        let url = HttpObjects::url(family, size);
        let started = Instant::now();
        let run = self
            .run_bounded(
                NsRef::Client,
                Duration::from_secs(60),
                "curl",
                &[
                    arg("--silent"),
                    arg("--show-error"),
                    arg("--fail"),
                    arg("--connect-timeout"),
                    arg(5),
                    arg("--max-time"),
                    arg(50),
                    arg("--output"),
                    arg(out.display()),
                    arg("--write-out"),
                    arg("%{http_code} %{size_download}"),
                    arg(&url),
                ],
            )
            .map_err(|e| format!("{e:#}"))?;
        let elapsed = started.elapsed();
        if !run.success() {
            return Err(format!(
                "{} {size} B: curl {url} failed: {} (stdout {:?})",
                family.name(),
                run.describe(),
                run.stdout
            ));
        }
        let want = objects.content(size).map_err(|e| format!("{e:#}"))?;
        let got = std::fs::read(&out).map_err(|e| format!("{}: {e}", out.display()))?;
        let _ = std::fs::remove_file(&out);
        if let Some(diff) = body_difference(&want, &got) {
            return Err(format!("{} {size} B: {url}: body differs: {diff}", family.name()));
        }
        Ok(elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_summary_parses() {
        let out = "PING 10.77.9.1 (10.77.9.1) 56(84) bytes of data.\n\n--- 10.77.9.1 ping statistics ---\n3 packets transmitted, 2 received, 33.3333% packet loss, time 2003ms\n";
        assert_eq!(parse_ping(out), Some((3, 2)));
        let errors = "3 packets transmitted, 0 received, +3 errors, 100% packet loss, time 2047ms\n";
        assert_eq!(parse_ping(errors), Some((3, 0)));
    }

    #[test]
    fn wrk_summary_parses() {
        let out = "Running 5s test @ http://10.77.9.1:80/object-27000.bin\n  2 threads and 16 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     4.21ms    2.00ms  30.00ms   80.00%\n  12345 requests in 5.00s, 318.00MB read\n  Socket errors: connect 0, read 1, write 0, timeout 2\n  Non-2xx or 3xx responses: 3\nRequests/sec:   2469.00\nTransfer/sec:     63.60MB\n";
        let r = parse_wrk(out).unwrap();
        assert_eq!(r.requests, 12345);
        assert_eq!(r.read, "318.00MB read");
        assert_eq!(r.socket_errors, [0, 1, 0, 2]);
        assert_eq!(r.non_2xx, 3);
        assert!((r.requests_per_s - 2469.0).abs() < 0.1);
        assert_eq!(parse_wrk("unable to connect"), None);
    }

    #[test]
    fn iperf3_json_parses_and_errors_are_named() {
        let ok = r#"{"start":{},"end":{"sum_sent":{"bytes":100,"retransmits":3},"sum_received":{"bytes":90,"bits_per_second":1.5e9}}}"#;
        assert_eq!(
            parse_iperf3(ok),
            Ok(Iperf3Report {
                received_bps: 1.5e9,
                bytes: 90,
                retransmits: 3
            })
        );
        let failed = r#"{"start":{},"end":{},"error":"unable to connect to server: Connection refused"}"#;
        assert!(parse_iperf3(failed).unwrap_err().contains("Connection refused"));
        assert!(parse_iperf3("iperf3: error").is_err());
    }

    #[test]
    fn bodies_compare_with_the_first_difference() {
        assert_eq!(body_difference(b"abc", b"abc"), None);
        let d = body_difference(b"abcd", b"abXd").unwrap();
        assert!(d.contains("first difference at byte 2"), "{d}");
        let d = body_difference(b"abcd", b"ab").unwrap();
        assert!(d.starts_with("2 bytes") && d.contains("instead of 4"), "{d}");
    }
}
