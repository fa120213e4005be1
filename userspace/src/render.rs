//! The `handoff` CLI's human output: aligned tables (comfy-table, no
//! borders, columns two spaces apart, numbers right-aligned) and one-line
//! summaries of the admin socket's answers. `--json` bypasses all of this
//! and prints the answers as the daemon sent them (`admin`).
//!
//! Everything here renders a value it is given and never fails: a field
//! that is missing or of an unexpected type prints as `-`, so a daemon of
//! another build still gets readable output.

use crate::admin::AdminResponse;
use comfy_table::{presets::NOTHING, CellAlignment, Table, TableComponent};
use serde_json::{Map, Value};

/// A record table with more columns than this is printed transposed: one
/// row per field, one column per record (a node's workers, for example).
pub const MAX_COLUMNS: usize = 9;

/// How a column's cells line up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    /// Text: flush left.
    Left,
    /// Numbers: flush right, so digits of equal weight line up.
    Right,
}

/// An aligned table: `header`, a rule of dashes, then `rows`; columns are
/// two spaces apart, with no border and no trailing blanks. `align[i]`
/// aligns column `i` (header included); missing entries are
/// [`Align::Left`], short rows end in empty cells. An empty `header`
/// prints the rows alone (a key/value list).
pub fn table(header: &[&str], rows: &[Vec<String>], align: &[Align]) -> String {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    if !header.is_empty() {
        t.set_style(TableComponent::HeaderLines, '-');
        t.set_header(header.to_vec());
    }
    let columns = rows.iter().map(Vec::len).chain([header.len()]).max().unwrap_or(0);
    for row in rows {
        let mut row = row.clone();
        row.resize(columns, String::new());
        t.add_row(row);
    }
    for (i, column) in t.column_iter_mut().enumerate() {
        // No left border: the first column starts at the line's start.
        column.set_padding((u16::from(i > 0), 1));
        column.set_cell_alignment(match align.get(i) {
            Some(Align::Right) => CellAlignment::Right,
            _ => CellAlignment::Left,
        });
    }
    t.trim_fmt()
}

/// `handoff doctor`'s report: a table of the checks (name, status, what
/// was found), then one `to do` line per check that is not ok, with its
/// remedy.
pub fn doctor(report: &crate::doctor::Report) -> String {
    let rows: Vec<Vec<String>> = report
        .checks
        .iter()
        .map(|c| vec![c.name.clone(), c.status.name().into(), c.found.clone()])
        .collect();
    let mut out = table(&["check", "status", "found"], &rows, &[]);
    let todo: Vec<Vec<String>> = report
        .checks
        .iter()
        .filter_map(|c| c.remedy.as_ref().map(|r| vec![format!("{}:", c.name), r.clone()]))
        .collect();
    if !todo.is_empty() {
        out.push_str("\n\nto do\n");
        out.push_str(&table(&[], &todo, &[]));
    }
    out
}

/// A scalar as an operator reads it: strings bare, `-` for null, `yes` and
/// `no` for booleans, whole numbers as they are, fractions to 0.1, a list
/// of scalars comma separated, an object as `{key: value, ...}`.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::Bool(true) => "yes".into(),
        Value::Bool(false) => "no".into(),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => u.to_string(),
            (None, Some(i), _) => i.to_string(),
            (None, None, Some(f)) => format!("{f:.1}"),
            _ => n.to_string(),
        },
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(", "),
        Value::Object(fields) => format!(
            "{{{}}}",
            fields
                .iter()
                .map(|(k, v)| format!("{k}: {}", cell(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Right-aligned when every cell is a number or `-`.
fn align_of(cells: &[&str]) -> Align {
    let numeric = |c: &&str| *c == "-" || c.parse::<f64>().is_ok();
    if !cells.is_empty() && cells.iter().all(numeric) {
        Align::Right
    } else {
        Align::Left
    }
}

fn aligns(rows: &[Vec<String>], columns: usize) -> Vec<Align> {
    (0..columns)
        .map(|i| {
            let cells: Vec<&str> = rows.iter().filter_map(|r| r.get(i)).map(String::as_str).collect();
            align_of(&cells)
        })
        .collect()
}

fn is_record_list(value: &Value) -> bool {
    matches!(value, Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_object))
}

/// `record`'s fields with nested objects flattened to dotted names.
fn flatten(prefix: &str, record: &Map<String, Value>, out: &mut Vec<(String, Value)>) {
    for (key, value) in record {
        let name = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            Value::Object(inner) => flatten(&name, inner, out),
            Value::Array(items) if is_record_list(value) => {
                for (i, item) in items.iter().enumerate() {
                    if let Value::Object(inner) = item {
                        flatten(&format!("{name}[{i}]"), inner, out);
                    }
                }
            }
            other => out.push((name, other.clone())),
        }
    }
}

/// The fields that name a record, most telling first.
const LABELS: [&str; 3] = ["name", "worker", "id"];

/// What names record `i` in a transposed table's header.
fn label(record: &Map<String, Value>, i: usize) -> String {
    LABELS
        .iter()
        .find_map(|k| record.get(*k).filter(|v| !v.is_null()))
        .map_or_else(|| format!("#{i}"), cell)
}

/// A list of records as a table: one row each, or, past [`MAX_COLUMNS`]
/// fields, one row per field and one column per record.
pub fn records(items: &[Value]) -> String {
    let flat: Vec<Vec<(String, Value)>> = items
        .iter()
        .map(|item| {
            let mut out = Vec::new();
            if let Value::Object(fields) = item {
                flatten("", fields, &mut out);
            }
            out
        })
        .collect();
    let mut columns: Vec<String> = Vec::new();
    for (name, _) in flat.iter().flatten() {
        if !columns.contains(name) {
            columns.push(name.clone());
        }
    }
    // What names a record comes first, in the order of [`LABELS`].
    columns.sort_by_key(|c| LABELS.iter().position(|l| l == c).unwrap_or(LABELS.len()));
    let get = |record: &[(String, Value)], column: &str| {
        record
            .iter()
            .find(|(name, _)| name == column)
            .map_or_else(|| "-".to_string(), |(_, v)| cell(v))
    };
    if columns.len() <= MAX_COLUMNS {
        let rows: Vec<Vec<String>> = flat
            .iter()
            .map(|record| columns.iter().map(|c| get(record, c)).collect())
            .collect();
        let header: Vec<&str> = columns.iter().map(String::as_str).collect();
        return table(&header, &rows, &aligns(&rows, columns.len()));
    }
    let labels: Vec<String> = items
        .iter()
        .enumerate()
        .map(|(i, item)| item.as_object().map_or_else(|| format!("#{i}"), |r| label(r, i)))
        .collect();
    let rows: Vec<Vec<String>> = columns
        .iter()
        .map(|c| {
            std::iter::once(c.clone())
                .chain(flat.iter().map(|record| get(record, c)))
                .collect()
        })
        .collect();
    let header: Vec<&str> = std::iter::once("field")
        .chain(labels.iter().map(String::as_str))
        .collect();
    let mut align = vec![Align::Left];
    align.extend(aligns(&rows, header.len()).into_iter().skip(1));
    table(&header, &rows, &align)
}

/// An answer of `status` or `stats` (any JSON object): its plain fields as
/// an aligned key/value list, then each nested object as its own titled
/// section (`control:`, `control.sessions:`, ...), then each list of
/// records as a table ([`records`]).
pub fn document(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(fields) => section(&mut out, "", fields),
        other => out.push_str(&cell(other)),
    }
    out
}

fn section(out: &mut String, path: &str, fields: &Map<String, Value>) {
    let start = |out: &mut String, title: &str| {
        if !out.is_empty() {
            out.push_str("\n\n");
        }
        if !title.is_empty() {
            out.push_str(title);
            out.push_str(":\n");
        }
    };
    let name = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    let plain: Vec<Vec<String>> = fields
        .iter()
        .filter(|(_, v)| !v.is_object() && !is_record_list(v))
        .map(|(k, v)| vec![k.clone(), cell(v)])
        .collect();
    if !plain.is_empty() || fields.is_empty() {
        start(out, path);
        if plain.is_empty() {
            out.push('-');
        } else {
            out.push_str(&table(&[], &plain, &aligns(&plain, 2)));
        }
    }
    for (key, value) in fields {
        if let Value::Object(inner) = value {
            section(out, &name(key), inner);
        }
    }
    for (key, value) in fields {
        if let (true, Value::Array(items)) = (is_record_list(value), value) {
            start(out, &name(key));
            out.push_str(&records(items));
        }
    }
}

/// The fields a phase record carries besides its name and times, as
/// `key value, key value`: its `detail` object's fields and the facts
/// noted on it later (`flows_copied`, `moved_buckets`, ...).
pub fn phase_detail(phase: &Value) -> String {
    let mut parts = Vec::new();
    let mut add = |key: &str, value: &Value| {
        if !value.is_null() {
            parts.push(format!("{key} {}", cell(value)));
        }
    };
    match phase.get("detail") {
        Some(Value::Object(detail)) => detail.iter().for_each(|(k, v)| add(k, v)),
        Some(Value::Null) | None => {}
        Some(other) => add("detail", other),
    }
    if let Value::Object(fields) = phase {
        for (key, value) in fields {
            if !matches!(key.as_str(), "phase" | "at_ms" | "ms" | "detail") {
                add(key, value);
            }
        }
    }
    parts.join(", ")
}

/// A migration's progress line, printed as its phase starts:
/// `[   12.3 ms] Copy: started`, or with what the phase starts with
/// (`Select: buckets_by_inheritor {1: 21845, 2: 21846}`); a report within
/// the copy as `[  512.0 ms] Copy: 1200/3400 connections, 117.19 KiB`.
pub fn progress_line(line: &Value) -> String {
    let detail = match line.get("progress") {
        Some(p) if p.is_object() => format!(
            "{}/{} connections, {}",
            cell(&p["flows_copied"]),
            cell(&p["flows_total"]),
            indicatif::HumanBytes(p["bytes_sent"].as_u64().unwrap_or(0))
        ),
        _ => phase_detail(line),
    };
    format!(
        "[{:>9.1} ms] {}: {}",
        line["at_ms"].as_f64().unwrap_or(0.0),
        line["phase"].as_str().unwrap_or("?"),
        if detail.is_empty() { "started" } else { &detail }
    )
}

/// A finished migration of `node`: `fd-a: Disengaged after 812.3 ms
/// (migration 3)`, then a table of its phases, each with its duration and
/// its own detail.
pub fn migration_report(node: &str, report: &Value) -> String {
    let rows: Vec<Vec<String>> = report["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            vec![
                p["phase"].as_str().unwrap_or("?").to_string(),
                p["ms"].as_f64().map_or_else(|| "-".into(), |ms| format!("{ms:.1}")),
                phase_detail(p),
            ]
        })
        .collect();
    format!(
        "{node}: {} after {:.1} ms (migration {})\n{}",
        report["status"].as_str().unwrap_or("?"),
        report["total_ms"].as_f64().unwrap_or(0.0),
        cell(&report["serial"]),
        table(
            &["phase", "ms", "detail"],
            &rows,
            &[Align::Left, Align::Right, Align::Left]
        )
    )
}

/// A rate as an operator reads it: whole numbers, `-` when unknown.
fn per_second(rate: Option<f64>) -> String {
    // `+ 0.0` turns an empty sum's -0 into 0.
    rate.map_or_else(|| "-".into(), |r| format!("{:.0}", r + 0.0))
}

/// `handoff top`'s frame: a table of the edge's members (status, flows,
/// packets/s sprayed to each), then one of the nodes, a line per node
/// (worker `all`) and one per worker: packets/s received and sent, flows,
/// drops/s and the top drop reasons as `reason rate/s (total)`.
pub fn top_frame(frame: &crate::top::Frame) -> String {
    let members: Vec<Vec<String>> = frame
        .members
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                m.status.clone(),
                m.flows.map_or_else(|| "-".into(), |f| f.to_string()),
                per_second(Some(m.sprayed_pps)),
            ]
        })
        .collect();
    let drops = |r: &crate::top::Rates| {
        if r.top_drops.is_empty() {
            "-".to_string()
        } else {
            r.top_drops
                .iter()
                .map(|d| format!("{} {:.0}/s ({})", d.reason, d.per_second, d.total))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let row = |node: &str, worker: String, r: Option<&crate::top::Rates>| {
        vec![
            node.to_string(),
            worker,
            per_second(r.map(|r| r.rx_pps)),
            per_second(r.map(|r| r.tx_pps)),
            r.map_or_else(|| "-".into(), |r| r.flows.to_string()),
            per_second(r.map(|r| r.drops_per_second)),
            r.map_or_else(|| "-".into(), drops),
        ]
    };
    let mut nodes = Vec::new();
    for n in &frame.nodes {
        if let Some(error) = &n.error {
            let mut cells = vec![n.node.clone()];
            cells.resize(6, "-".into());
            cells.push(format!("unreachable: {error}"));
            nodes.push(cells);
            continue;
        }
        nodes.push(row(&n.node, "all".into(), n.total.as_ref()));
        for (worker, rates) in &n.workers {
            nodes.push(row(&n.node, worker.to_string(), Some(rates)));
        }
    }
    let right = [
        Align::Left,
        Align::Left,
        Align::Right,
        Align::Right,
        Align::Right,
        Align::Right,
    ];
    let mut out = format!(
        "refresh {}, rates over {:.1} s\n\n{}",
        frame.refresh,
        frame.interval_s,
        table(
            &["member", "status", "flows", "sprayed/s"],
            &members,
            &[Align::Left, Align::Left, Align::Right, Align::Right]
        )
    );
    if !nodes.is_empty() {
        out.push_str("\n\n");
        out.push_str(&table(
            &["node", "worker", "rx/s", "tx/s", "flows", "drops/s", "top drops"],
            &nodes,
            &right,
        ));
    }
    out
}

/// Any answer but a migration's, for a human: status and stats as a
/// [`document`], a scope change as one line, an error as its message.
pub fn response(response: &AdminResponse) -> String {
    match response {
        AdminResponse::Status(v)
        | AdminResponse::Stats(v)
        | AdminResponse::Services(v)
        | AdminResponse::PolicyChanged(v) => document(v),
        AdminResponse::ScopeChanged {
            version,
            moved_buckets,
            generation,
        } => format!("scope version {version} (generation {generation}): {moved_buckets} buckets moved"),
        AdminResponse::MemberChanged { member, id, change } => format!("member {member} (id {id}) {change}"),
        AdminResponse::Progress(line) => progress_line(line),
        AdminResponse::Done(report) => migration_report(report["node"].as_str().unwrap_or("node"), report),
        AdminResponse::Error { message } => format!("error: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The byte offset in `line` where `text` ends, found after `from`.
    fn end_of(line: &str, text: &str) -> usize {
        line.find(text).unwrap_or_else(|| panic!("{text:?} not in {line:?}")) + text.len()
    }

    #[test]
    fn a_table_lines_every_row_up_under_its_header() {
        let rows = vec![
            vec!["fd-a".to_string(), "7".to_string(), "Active".to_string()],
            vec!["fd-bb".to_string(), "1234567".to_string(), "Disengaged".to_string()],
            vec!["c".to_string(), "42".to_string(), "-".to_string()],
        ];
        let text = table(
            &["name", "packets", "status"],
            &rows,
            &[Align::Left, Align::Right, Align::Left],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "header, rule, 3 rows:\n{text}");
        assert!(lines[1].chars().all(|c| c == '-' || c == ' '), "{text}");
        assert!(lines.iter().all(|l| !l.ends_with(' ')), "{text}");
        // Left-aligned columns start at one offset, right-aligned ones end at one.
        let name_at: Vec<usize> = [0, 2, 3, 4]
            .iter()
            .map(|&i| lines[i].find(['n', 'f', 'c']).unwrap())
            .collect();
        assert!(name_at.iter().all(|&o| o == 0), "{text}");
        let packets_end = end_of(lines[0], "packets");
        for (line, value) in lines[2..].iter().zip(["7", "1234567", "42"]) {
            assert_eq!(end_of(line, &format!(" {value}")), packets_end, "{text}");
        }
        let status_at = lines[0].find("status").unwrap();
        for (line, value) in lines[2..].iter().zip(["Active", "Disengaged", "-"]) {
            assert_eq!(line.rfind(value).unwrap(), status_at, "{text}");
        }
        // Two spaces between the widest cells of adjacent columns.
        assert!(lines[3].starts_with("fd-bb  1234567  Disengaged"), "{text}");
    }

    #[test]
    fn records_align_and_wide_ones_turn_on_their_side() {
        let members = json!([
            {"name": "fd-a", "id": 0, "in_scope": true, "buckets": 21845, "status": "Active"},
            {"name": "fd-b", "id": 1, "in_scope": false, "buckets": 0, "status": null},
        ]);
        let text = records(members.as_array().unwrap());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["name", "id", "buckets", "in_scope", "status"]
        );
        let end = end_of(lines[0], "buckets");
        assert_eq!(end_of(lines[2], "21845"), end, "{text}");
        assert_eq!(end_of(lines[3], " 0"), end, "{text}");
        assert!(lines[3].contains("no") && lines[3].ends_with('-'), "{text}");

        let wide: Vec<Value> = (0..2)
            .map(|w| {
                let counters: Map<String, Value> = (0..12).map(|c| (format!("c{c}"), json!(w * 1000 + c))).collect();
                json!({"worker": w, "counters": counters})
            })
            .collect();
        let text = records(&wide);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["field", "0", "1"],
            "{text}"
        );
        assert_eq!(lines.len(), 2 + 13, "a row per field:\n{text}");
        let row = lines.iter().find(|l| l.starts_with("counters.c11 ")).unwrap();
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            ["counters.c11", "11", "1011"]
        );
        assert_eq!(end_of(row, "1011"), lines[0].len(), "{text}");
    }

    #[test]
    fn a_document_puts_each_nested_object_and_list_under_its_own_title() {
        let stats = json!({
            "reasons": {"sprayed": 120000, "drop_truncated": 0},
            "members": [{"name": "fd-a", "id": 0, "packets": 40000, "bytes": 5120000}],
            "control": {"sessions_accepted": 3, "refused": {"caps": 1}},
        });
        let text = document(&stats);
        let titles: Vec<&str> = text.lines().filter(|l| l.ends_with(':')).collect();
        assert_eq!(
            titles,
            ["control:", "control.refused:", "reasons:", "members:"],
            "{text}"
        );
        assert!(
            !text.contains('{') && !text.contains('"'),
            "no JSON in human output:\n{text}"
        );
        let reasons: Vec<&str> = text
            .lines()
            .skip_while(|l| *l != "reasons:")
            .skip(1)
            .take_while(|l| !l.is_empty())
            .collect();
        assert_eq!(reasons.len(), 2, "{text}");
        assert_eq!(end_of(reasons[0], "0"), end_of(reasons[1], "120000"), "{text}");
    }

    /// A report as the edge's migration driver writes it: each phase's
    /// start detail in `detail`, what it found out noted beside it.
    fn disengage_report() -> Value {
        json!({
            "serial": 3, "mode": "Disengage", "node": 0, "status": "Disengaged", "total_ms": 812.34,
            "phases": [
                {"phase": "Select", "at_ms": 0.0, "detail": {"buckets_by_inheritor": {"1": 21845, "2": 21846}}, "ms": 3.2},
                {"phase": "Copy", "at_ms": 3.2, "detail": null, "flows_copied": 3400, "deltas_sent": 12, "ms": 288.0},
                {"phase": "Broadcast", "at_ms": 291.2, "detail": null, "flows_handed_over": 3400, "ms": 40.2},
                {"phase": "Flip", "at_ms": 331.4, "detail": {"scope_version": 2}, "moved_buckets": 21845, "ms": 20.0},
                {"phase": "Drain", "at_ms": 351.4, "detail": null, "ms": 460.0},
                {"phase": "Purge", "at_ms": 811.4, "detail": null, "ms": 0.94},
            ]
        })
    }

    #[test]
    fn each_phase_line_shows_its_own_detail_and_no_json() {
        let text = migration_report("fd-a", &disengage_report());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "fd-a: Disengaged after 812.3 ms (migration 3)");
        let row = |phase: &str| *lines.iter().find(|l| l.starts_with(&format!("{phase} "))).unwrap();
        assert!(
            row("Select").ends_with("buckets_by_inheritor {1: 21845, 2: 21846}"),
            "{text}"
        );
        assert!(row("Copy").ends_with("deltas_sent 12, flows_copied 3400"), "{text}");
        assert!(row("Broadcast").ends_with("flows_handed_over 3400"), "{text}");
        assert!(!row("Broadcast").contains("flows_copied"), "{text}");
        assert!(row("Flip").ends_with("scope_version 2, moved_buckets 21845"), "{text}");
        assert!(row("Drain").ends_with("460.0"), "{text}");
        // The ms column ends at one offset on every row.
        let end = end_of(lines[1], "ms");
        for (phase, ms) in [("Select", "3.2"), ("Copy", "288.0"), ("Purge", "0.9")] {
            assert_eq!(end_of(row(phase), &format!(" {ms}")), end, "{text}");
        }
        assert!(!text.contains('"') && !text.contains("\"phases\""), "{text}");
    }

    #[test]
    fn a_progress_line_names_its_phase_and_only_its_own_detail() {
        let report = disengage_report();
        assert_eq!(
            progress_line(&report["phases"][0]),
            "[      0.0 ms] Select: buckets_by_inheritor {1: 21845, 2: 21846}"
        );
        let copy_started = json!({"phase": "Copy", "at_ms": 3.2, "detail": null});
        assert_eq!(progress_line(&copy_started), "[      3.2 ms] Copy: started");
        let flip = json!({"phase": "Flip", "at_ms": 331.4, "detail": {"scope_version": 2}});
        assert_eq!(progress_line(&flip), "[    331.4 ms] Flip: scope_version 2");
    }

    #[test]
    fn a_report_within_the_copy_shows_its_counts() {
        let within = json!({"phase": "Copy", "at_ms": 512.0,
            "progress": {"flows_copied": 1200, "flows_total": 3400, "deltas_sent": 0, "bytes_sent": 120_000}});
        assert_eq!(
            progress_line(&within),
            "[    512.0 ms] Copy: 1200/3400 connections, 117.19 KiB"
        );
    }

    #[test]
    fn a_top_frame_lines_up_nodes_and_workers() {
        use crate::top::{DropRate, Frame, MemberRow, NodeRow, Rates};
        let rates = |rx: f64, flows: u64, drops: Vec<DropRate>| Rates {
            rx_pps: rx,
            tx_pps: rx,
            flows,
            drops_per_second: drops.iter().map(|d| d.per_second).sum(),
            top_drops: drops,
        };
        let frame = Frame {
            refresh: 2,
            interval_s: 1.0,
            members: vec![MemberRow {
                name: "fd-a".into(),
                status: "Active".into(),
                flows: Some(3400),
                sprayed_pps: 2000.4,
            }],
            nodes: vec![
                NodeRow {
                    node: "fd-a".into(),
                    total: Some(rates(
                        12000.0,
                        3400,
                        vec![DropRate {
                            reason: "drop_no_flow".into(),
                            per_second: 3.0,
                            total: 40,
                        }],
                    )),
                    workers: vec![(0, rates(5.0, 1, Vec::new()))],
                    error: None,
                },
                NodeRow {
                    node: "/run/handoff/fd-b.sock".into(),
                    total: None,
                    workers: Vec::new(),
                    error: Some("no admin socket".into()),
                },
            ],
        };
        let text = top_frame(&frame);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "refresh 2, rates over 1.0 s");
        let row = |first: &str, second: &str| {
            *lines
                .iter()
                .find(|l| l.split_whitespace().take(2).eq([first, second]))
                .unwrap_or_else(|| panic!("no row {first} {second}:\n{text}"))
        };
        assert_eq!(
            row("fd-a", "Active").split_whitespace().collect::<Vec<_>>(),
            ["fd-a", "Active", "3400", "2000"]
        );
        let header = row("node", "worker");
        let all = row("fd-a", "all");
        let worker = row("fd-a", "0");
        assert!(worker.contains(" 0  -"), "no -0 for no drops: {text}");
        assert_eq!(end_of(all, "12000"), end_of(header, "rx/s"), "{text}");
        assert_eq!(end_of(worker, " 5"), end_of(header, "rx/s"), "{text}");
        assert!(all.ends_with("drop_no_flow 3/s (40)"), "{text}");
        assert!(
            row("/run/handoff/fd-b.sock", "-").ends_with("unreachable: no admin socket"),
            "{text}"
        );
    }

    #[test]
    fn a_scope_change_and_an_error_read_as_sentences() {
        let changed = AdminResponse::ScopeChanged {
            version: 3,
            moved_buckets: 21845,
            generation: 1,
        };
        assert_eq!(
            response(&changed),
            "scope version 3 (generation 1): 21845 buckets moved"
        );
        let error = AdminResponse::Error {
            message: "no member named \"fd-z\"".into(),
        };
        assert_eq!(response(&error), "error: no member named \"fd-z\"");
    }
}
