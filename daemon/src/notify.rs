//! systemd notification (`Type=notify`): `READY=1` once the listeners are bound, `STOPPING=1`
//! when shutdown begins, and `WATCHDOG=1` at half the unit's `WatchdogSec=` for as long as the
//! executor runs (issue 16): a node whose executor is stuck stops pinging and systemd restarts
//! it. A no-op when not started by systemd.

use std::os::linux::net::SocketAddrExt as _;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Sends one state line to `$NOTIFY_SOCKET`, if set. Failures are logged, never fatal.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    notify_to(&path.to_string_lossy(), state);
}

/// Sends one state line to the notification socket `path` (`@name` for an abstract one).
pub fn notify_to(path: &str, state: &str) {
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(path),
    };
    let sent = addr.and_then(|addr| {
        let socket = UnixDatagram::unbound()?;
        socket.send_to_addr(state.as_bytes(), &addr)
    });
    if let Err(e) = sent {
        log::warn!("sd_notify {state:?} failed: {e}");
    }
}

/// How often to send `WATCHDOG=1`, from `$WATCHDOG_USEC` and `$WATCHDOG_PID` as systemd sets
/// them: half the timeout (sd_watchdog_enabled's advice), and only when the watchdog is meant
/// for this process (`pid`). `None` when there is no watchdog, or the values are not usable.
pub fn watchdog_interval(
    usec: Option<&str>,
    watchdog_pid: Option<&str>,
    pid: u32,
) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    if let Some(watchdog_pid) = watchdog_pid
        && watchdog_pid.trim().parse::<u32>().ok() != Some(pid)
    {
        return None;
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// The watchdog interval systemd asked this process for, if any.
pub fn watchdog_interval_from_env() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_interval(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// Sends `WATCHDOG=1` to `socket` now and then every `interval`, until dropped. It runs as a
/// task on the node's executor, so it proves the executor still turns.
pub async fn watchdog(socket: String, interval: Duration) {
    loop {
        notify_to(&socket, "WATCHDOG=1");
        smol::Timer::after(interval).await;
    }
}

/// Starts [`watchdog`] on the global executor when systemd asked for a watchdog.
pub fn start_watchdog() -> Option<smol::Task<()>> {
    let socket = std::env::var_os("NOTIFY_SOCKET")?
        .to_string_lossy()
        .into_owned();
    let interval = watchdog_interval_from_env()?;
    log::info!(
        "systemd watchdog: pinging every {} ms",
        interval.as_millis()
    );
    Some(smol::spawn(watchdog(socket, interval)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_16_the_watchdog_interval_is_half_the_timeout_and_only_for_this_process() {
        let secs = |s: u64| Some(Duration::from_secs(s));
        assert_eq!(watchdog_interval(Some("30000000"), None, 7), secs(15));
        assert_eq!(watchdog_interval(Some("30000000"), Some("7"), 7), secs(15));
        assert_eq!(watchdog_interval(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(None, Some("7"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
    }

    /// Issue 16: the node's loop sends `WATCHDOG=1` to the notification socket at once and
    /// then once per interval (never more often: timers do not fire early).
    #[test]
    fn issue_16_the_watchdog_loop_pings_the_notify_socket_every_interval() {
        let dir = std::env::temp_dir().join(format!("mxnode-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let interval = Duration::from_millis(100);
        let task = smol::spawn(watchdog(path.display().to_string(), interval));
        let started = std::time::Instant::now();
        let mut buffer = [0u8; 64];
        for _ in 0..4 {
            let n = socket.recv(&mut buffer).expect("a ping within 10 s");
            assert_eq!(&buffer[..n], b"WATCHDOG=1");
        }
        assert!(
            started.elapsed() >= interval * 3,
            "four pings took {:?}: at most one per interval",
            started.elapsed()
        );
        drop(task);
        std::fs::remove_dir_all(&dir).ok();
    }
}
