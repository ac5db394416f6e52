//! The CPU accounting of the gateway throughput bench: each process on
//! the data path (Mosquitto, the gateway, Kafka, PostgreSQL with its
//! backends, the local control plane, the bench) read from /proc, so the
//! bench can say where a message's CPU time goes on a shared machine.

use std::collections::HashMap;

/// Where the machine's CPU time went during a measured stretch: user +
/// system time of each process on the data path, read from /proc (a
/// process's figure covers all its threads), and the machine's busy and
/// idle time from /proc/stat.
pub struct CpuParts {
    parts: Vec<(&'static str, Vec<u32>)>,
}

pub struct CpuSnapshot {
    /// Per part: ticks per pid (PostgreSQL's backends included).
    parts: Vec<HashMap<u32, u64>>,
    busy: u64,
    idle: u64,
}

/// The fields of /proc/<pid>/stat after the command name (which may hold spaces).
fn stat_fields(pid: u32) -> Vec<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    rest.split_whitespace().map(|v| v.parse().unwrap_or(0)).collect()
}

/// The pids whose parent is `parent` (PostgreSQL's backends).
fn children(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| stat_fields(*pid).get(1) == Some(&(parent as u64)))
        .collect()
}

/// A pid from the local services' pid files (`./deploy.sh dev-up`).
fn service_pid(name: &str) -> Option<u32> {
    let path = format!("{}/../.dev/pids/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

impl CpuParts {
    pub fn new(mosquitto: u32, gateway: Option<u32>) -> CpuParts {
        let mut parts = vec![("mosquitto", vec![mosquitto])];
        parts.extend(gateway.map(|g| ("gateway", vec![g])));
        parts.push(("kafka", service_pid("kafka").into_iter().collect()));
        parts.push(("postgresql", service_pid("postgres").into_iter().collect()));
        let control = [
            "apiserver",
            "controller-manager",
            "scheduler",
            "kubelet",
            "proxy",
            "provisioner",
            "containerd",
        ];
        parts.push(("control plane", control.iter().filter_map(|n| service_pid(n)).collect()));
        parts.push(("this bench", vec![std::process::id()]));
        CpuParts { parts }
    }

    pub fn snapshot(&self) -> CpuSnapshot {
        let parts = self
            .parts
            .iter()
            .map(|(name, pids)| {
                let mut all = pids.clone();
                if *name == "postgresql" {
                    all.extend(pids.iter().flat_map(|p| children(*p)));
                }
                all.into_iter()
                    .map(|p| {
                        let f = stat_fields(p);
                        (p, f.get(11).unwrap_or(&0) + f.get(12).unwrap_or(&0))
                    })
                    .collect()
            })
            .collect();
        let total = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let cpu: Vec<u64> = total
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|v| v.parse().ok())
            .collect();
        let idle = cpu.get(3).unwrap_or(&0) + cpu.get(4).unwrap_or(&0);
        CpuSnapshot {
            parts,
            busy: cpu.iter().sum::<u64>() - idle,
            idle,
        }
    }

    /// Prints each part's CPU time since `before`, per message.
    pub fn report(&self, title: &str, before: &CpuSnapshot, messages: usize) {
        let after = self.snapshot();
        let us_per_msg = 1_000_000.0 / clock_ticks_per_second() / messages as f64;
        println!("CPU during {title}, µs per message ({messages} messages; 2 cores give 2 s per s):");
        let mut named = 0;
        for ((name, _), (b, a)) in self.parts.iter().zip(before.parts.iter().zip(&after.parts)) {
            // A backend that started meanwhile counts from zero; one that ended is lost.
            let t: u64 = a.iter().map(|(p, t)| t.saturating_sub(*b.get(p).unwrap_or(&0))).sum();
            named += t;
            println!("  {name:<22} {:>8.2}", t as f64 * us_per_msg);
        }
        let busy = after.busy - before.busy;
        println!(
            "  {:<22} {:>8.2}",
            "other (kernel, rest)",
            busy.saturating_sub(named) as f64 * us_per_msg
        );
        println!("  {:<22} {:>8.2}", "machine busy", busy as f64 * us_per_msg);
        println!(
            "  {:<22} {:>8.2}",
            "machine idle",
            (after.idle - before.idle) as f64 * us_per_msg
        );
    }
}
