//! `handoff doctor` on a real interface: the binary runs inside a
//! namespace of this run, against one end of a veth pair, and reads what
//! the kernel says. GRO on is reported with the ethtool command that turns
//! it off, and reads ok once that command has run; with a node's
//! configuration, an MTU without room for the fabric header fails (exit
//! status non-zero) with the `ip link` command, and passes once it is set.

use handoff_testbed::{
    binaries::binary,
    netns::{veth, VethEnd},
    privileged, Netns, RunPrefix,
};
use serde_json::Value;
use std::path::PathBuf;

/// A directory of this run's, removed on every exit path.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `handoff doctor ARGS --json` in `ns`: its exit success and report.
fn doctor(ns: &Netns, args: &[&str]) -> (bool, Vec<Value>) {
    let out = ns
        .command(binary("handoff").unwrap())
        .arg("doctor")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), report["checks"].as_array().unwrap().clone())
}

fn check<'a>(checks: &'a [Value], name: &str) -> &'a Value {
    checks
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {checks:#?}"))
}

#[test]
fn doctor_reports_gro_and_a_small_mtu_with_their_commands_and_ok_once_fixed() {
    if !privileged("doctor_reports_gro_and_a_small_mtu_with_their_commands_and_ok_once_fixed") {
        return;
    }
    let prefix = RunPrefix::new();
    let a = Netns::create(&prefix, "doc-a").unwrap();
    let b = Netns::create(&prefix, "doc-b").unwrap();
    let (if_a, if_b) = (prefix.ifname("da"), prefix.ifname("db"));
    let end = |ns, name: &str| VethEnd {
        ns,
        name: name.to_string(),
        mac: None,
    };
    veth(&end(&a, &if_a), &end(&b, &if_b), 2).unwrap();
    let dir = TempDir(std::env::temp_dir().join(format!("handoff-{prefix}-doctor")));
    std::fs::create_dir_all(&dir.0).unwrap();

    // GRO on: a warning naming the command; the driver is read from the kernel.
    a.exec("ethtool", &["-K", &if_a, "gro", "on"]).unwrap();
    let (_, checks) = doctor(&a, &["--interface", &if_a]);
    let gro = check(&checks, &format!("offloads {if_a}"));
    assert_ne!(gro["status"], "ok", "{gro}");
    assert!(gro["found"].as_str().unwrap().contains("GRO on"), "{gro}");
    assert_eq!(gro["remedy"], format!("ethtool -K {if_a} gro off"), "{gro}");
    assert_eq!(check(&checks, &format!("link {if_a}"))["status"], "ok");
    let driver = check(&checks, &format!("driver {if_a}"));
    assert!(
        driver["found"].as_str().unwrap().starts_with("veth: native XDP"),
        "{driver}"
    );
    assert!(
        check(&checks, &format!("queues {if_a}"))["found"]
            .as_str()
            .unwrap()
            .starts_with("2 RX queues"),
        "{checks:#?}"
    );

    // The remedy, run as printed, makes it ok.
    let remedy: Vec<String> = gro["remedy"].as_str().unwrap().split(' ').map(String::from).collect();
    let args: Vec<&str> = remedy[1..].iter().map(String::as_str).collect();
    a.exec(&remedy[0], &args).unwrap();
    let (_, checks) = doctor(&a, &["--interface", &if_a]);
    let gro = check(&checks, &format!("offloads {if_a}"));
    assert_eq!(gro["status"], "ok", "{gro}");
    assert_eq!(gro["remedy"], Value::Null);

    // A node's configuration: MTU 1500 leaves no room for the fabric header
    // under ip_mtu 1500. Its [tls] section is missing, which the loader's
    // error names; the interface is still checked.
    let config = dir.0.join("fd-a.toml");
    std::fs::write(
        &config,
        format!(
            r#"[node]
name = "fd-a"
id = 0
interface = "{if_a}"
queues = [0, 1]
xdp_mode = "skb"
bind_mode = "copy"
offloads = "check"
local_addresses = ["10.0.1.11"]
policy = "policy.toml"
admin_socket = "{}/fd-a.sock"
control_listen = "10.0.1.11:7700"
ip_mtu = 1500

[[members]]
name = "fd-a"
id = 0
mac = "02:00:00:00:00:01"
control = "10.0.1.11:7700"
"#,
            dir.0.display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let (success, checks) = doctor(&a, &["--config", config]);
    assert!(!success, "a failing check makes the exit status non-zero: {checks:#?}");
    let mtu = check(&checks, &format!("mtu {if_a}"));
    assert_eq!(mtu["status"], "fail", "{mtu}");
    assert_eq!(mtu["remedy"], format!("ip link set dev {if_a} mtu 1516"), "{mtu}");
    let loaded = check(&checks, "config");
    assert_eq!(loaded["status"], "fail", "{loaded}");
    assert!(loaded["found"].as_str().unwrap().contains("tls"), "{loaded}");
    assert_eq!(check(&checks, &format!("queues {if_a}"))["status"], "ok", "{checks:#?}");
    assert_eq!(check(&checks, "admin socket")["status"], "ok", "{checks:#?}");

    a.ip(&["link", "set", "dev", &if_a, "mtu", "1516"]).unwrap();
    let (_, checks) = doctor(&a, &["--config", config]);
    assert_eq!(check(&checks, &format!("mtu {if_a}"))["status"], "ok", "{checks:#?}");
    // GRO back on, under offloads = "check": the node would refuse to start.
    a.exec("ethtool", &["-K", &if_a, "gro", "on"]).unwrap();
    let (_, checks) = doctor(&a, &["--config", config]);
    assert_eq!(
        check(&checks, &format!("offloads {if_a}"))["status"],
        "fail",
        "{checks:#?}"
    );
}
