//! What the generator watches: processes' CPU and memory, the kernel's TCP memory and
//! listen-queue overflows, percentiles.

use serde_json::{json, Value};

// ---- watched processes ----

pub(crate) struct Watched {
    pub(crate) name: String,
    pub(crate) pid: u32,
}

pub(crate) fn parse_pids(specs: &[String]) -> Result<Vec<Watched>, String> {
    specs
        .iter()
        .map(|s| {
            let (name, pid) = s
                .split_once('=')
                .ok_or(format!("--pid {s}: want NAME=PID"))?;
            Ok(Watched {
                name: name.to_string(),
                pid: pid.parse().map_err(|_| format!("--pid {s}: bad pid"))?,
            })
        })
        .collect()
}

/// /proc reports CPU time in USER_HZ ticks, which Linux fixes at 100 on every ABI.
pub(crate) const USER_HZ: f64 = 100.0;

/// utime + stime of a process and all its threads, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')').map(|i| i + 2).unwrap_or(0)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 11 and 12 after the state field.
    (ticks(11) + ticks(12)) / USER_HZ
}

pub(crate) fn rss_kib(pid: u32) -> f64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return f64::NAN;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// Pages of memory the kernel charges to TCP sockets (system-wide).
pub(crate) fn tcp_mem_pages() -> f64 {
    std::fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("TCP:")).and_then(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.iter()
                    .position(|x| *x == "mem")
                    .and_then(|i| f.get(i + 1))
                    .and_then(|v| v.parse().ok())
            })
        })
        .unwrap_or(f64::NAN)
}

pub(crate) fn cpu_snapshot(w: &[Watched]) -> Vec<f64> {
    w.iter().map(|p| cpu_seconds(p.pid)).collect()
}

pub(crate) fn cpu_delta(w: &[Watched], before: &[f64]) -> Value {
    let now = cpu_snapshot(w);
    let mut m = serde_json::Map::new();
    for (i, p) in w.iter().enumerate() {
        m.insert(p.name.clone(), json!(now[i] - before[i]));
    }
    Value::Object(m)
}

pub(crate) fn self_cpu() -> f64 {
    cpu_seconds(std::process::id())
}

pub(crate) fn percentile(sorted: &[u64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    Some(sorted[i] as f64 / 1000.0)
}
