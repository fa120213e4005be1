//! What every benchmark in `benches/` needs: its knobs from the environment
//! and the median of repeated rounds.

/// Packets per run: `HANDOFF_BENCH_PACKETS`, else `default`.
pub fn packets_per_run(default: u64) -> u64 {
    env_or("HANDOFF_BENCH_PACKETS", default)
}

/// Rounds per measurement: `HANDOFF_BENCH_REPEATS`, else `default`.
pub fn repeats(default: usize) -> usize {
    env_or("HANDOFF_BENCH_REPEATS", default)
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The median of `values` (the upper one of an even count); `None` if empty.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_takes_the_middle_of_sorted_values() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), Some(3.0));
        assert_eq!(median(Vec::new()), None);
    }
}
