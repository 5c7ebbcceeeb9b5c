//! What the kernel grants a reconnect storm: the accept queue (capped by
//! `net.core.somaxconn`) and the open-files limit. The arithmetic is pure and tested here;
//! the two system calls and the /proc read are thin wrappers around it.

// The lints table denies unsafe code; this module is one of the two exceptions: getrlimit/setrlimit have no safe wrapper in std.
#![allow(unsafe_code)]

use std::io;

use crate::config::Config;

/// Descriptors beyond the connections: listeners, epoll and wakers, stdio, trust files
/// being read, the upstream health check.
const FIXED_DESCRIPTORS: u64 = 64;

/// The backlog the kernel will use for `configured`: Linux silently caps it at somaxconn.
pub fn effective_backlog(configured: u32, somaxconn: Option<u32>) -> u32 {
    somaxconn.map_or(configured, |max| configured.min(max))
}

/// `net.core.somaxconn`, if this kernel exposes it.
pub fn somaxconn() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Descriptors a full server may hold: a client and a broker socket per session, one per
/// pending connection (busy answers included), one per admin connection.
pub fn descriptors_needed(config: &Config) -> u64 {
    let l = &config.limits;
    2 * l.max_connections as u64
        + l.max_pending as u64
        + config.admin_max_connections as u64
        + FIXED_DESCRIPTORS
}

/// The open-files limit before and after `raise_open_files`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFiles {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// The soft limit a process should run with: the hard limit, which an unprivileged
/// process may always raise its soft limit to.
fn raised(soft: u64, hard: u64) -> u64 {
    soft.max(hard)
}

fn get_nofile() -> io::Result<libc::rlimit> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// The open-files limit as it is now, without changing it (for `check`).
pub fn open_files() -> io::Result<OpenFiles> {
    let r = get_nofile()?;
    Ok(OpenFiles {
        soft_before: r.rlim_cur as u64,
        soft: r.rlim_cur as u64,
        hard: r.rlim_max as u64,
    })
}

/// Raises the soft open-files limit to the hard limit. Most systems start services with a
/// soft limit of 1024, far below what `max_connections` sessions need.
pub fn raise_open_files() -> io::Result<OpenFiles> {
    let r = get_nofile()?;
    let (soft, hard) = (r.rlim_cur as u64, r.rlim_max as u64);
    let want = raised(soft, hard);
    if want != soft {
        let new = libc::rlimit {
            rlim_cur: r.rlim_max,
            rlim_max: r.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(OpenFiles {
        soft_before: soft,
        soft: want,
        hard,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn backlog_is_capped_by_somaxconn_only_when_known() {
        assert_eq!(effective_backlog(4096, Some(128)), 128);
        assert_eq!(effective_backlog(1000, Some(4096)), 1000);
        assert_eq!(effective_backlog(1000, None), 1000);
    }

    #[test]
    fn soft_limit_goes_to_the_hard_limit_never_down() {
        assert_eq!(raised(1024, 4096), 4096);
        assert_eq!(raised(4096, 4096), 4096);
    }

    #[test]
    fn ten_thousand_sessions_need_over_twenty_thousand_descriptors() {
        let c = Config::from_toml(
            "[tls]\ncertificate = \"s\"\nprivate_key = \"k\"\n[registry]\nclients = \"c\"\n",
            Path::new("/etc/mqttgate/mqttgate.toml"),
        )
        .unwrap();
        assert_eq!(c.limits.max_connections, 10_000);
        assert_eq!(descriptors_needed(&c), 20_000 + 2_500 + 64 + 64);
    }
}
