//! Crash recovery through the stand-in `libnvidia-ml`, whose driver state (clock locks) outlives
//! processes in a state file, as the kernel driver's does: a process that locks GPUs low is
//! killed (SIGKILL, SIGTERM, SIGINT, panic, or exits), and the clocks must come back: at once
//! through the exit hooks, or first thing at the next start through the on-disk lock record.
//!
//! Needs the stand-in built first: `cargo build -p nvml-standin`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod nvml_support;

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::Value;

use eali::gpu::GpuBackend;
use eali::gpu::clockguard::{ClockActuator, ClockGuard, ClockTarget, LockRecord};
use eali::gpu::nvml::{NvmlResetter, NvmlSystem, OpenOptions};

const ROLE_ENV: &str = "EALI_CRASH_ROLE";
const OPS_ENV: &str = "EALI_CRASH_OPS";
/// The low lock: far below the default clock, the state a crash must not leave behind.
const LOW_MHZ: u32 = 300;

fn env(dir: &Path, role: &str) -> Vec<(String, String)> {
    vec![
        (ROLE_ENV.into(), role.into()),
        ("EALI_NVML_PROFILE".into(), "v100-sxm2".into()),
        ("EALI_NVML_GPUS".into(), "2".into()),
        (
            "EALI_NVML_STATE".into(),
            dir.join("driver.json").display().to_string(),
        ),
        (
            "EALI_NVML_LOAD_FILE".into(),
            dir.join("load").display().to_string(),
        ),
        (
            "EALI_CLOCK_RECORD".into(),
            dir.join("locks.json").display().to_string(),
        ),
    ]
}

/// The child side: what a process in `role` does.
fn child(role: &str) {
    let sys = NvmlSystem::global(None).expect("stand-in NVML");
    let record = LockRecord::path(None);
    let (guard, report) =
        ClockGuard::start(&record, Arc::new(NvmlResetter::new(sys))).expect("clock guard");
    println!("PID {} RECOVERED {:?}", std::process::id(), report.reset);
    if role == "restart" {
        // Clocks restored: under load the GPU runs at its default boost again, not the lock.
        std::fs::write(std::env::var(nvml_load_env()).unwrap(), "1").unwrap();
        let g = sys.open(0, &OpenOptions::default()).unwrap();
        let t0 = Instant::now();
        while g.clocks().unwrap().graphics_mhz <= LOW_MHZ {
            assert!(
                t0.elapsed() < Duration::from_secs(3),
                "GPU 0 still at {} MHz",
                g.clocks().unwrap().graphics_mhz
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        println!(
            "GPU 0 under load at {} MHz after recovery",
            g.clocks().unwrap().graphics_mhz
        );
        return;
    }
    if role != "hold" {
        guard.install_exit_hooks().expect("exit hooks");
    }
    let (gpus, _) = sys.open_all(&OpenOptions::default()).unwrap();
    let gpus: Vec<Box<dyn GpuBackend + Send>> =
        gpus.into_iter().map(|g| Box::new(g) as _).collect();
    let act = ClockActuator::spawn(gpus, Arc::clone(&guard));
    let ops = std::env::var(OPS_ENV).unwrap_or_else(|_| format!("0:{LOW_MHZ},1:900"));
    for (k, op) in ops.split(',').enumerate() {
        let (gpu, f) = op.split_once(':').expect("op");
        let target = match f {
            "-" => ClockTarget::Default,
            f => {
                let f = f.parse().unwrap();
                ClockTarget::LockedRange {
                    min_mhz: f,
                    max_mhz: f,
                }
            }
        };
        act.request(gpu.parse().unwrap(), target);
        act.flush();
        println!("STEP {}", k + 1);
    }
    println!("LOCKED");
    match role {
        "panic" => panic!("deliberate panic with GPUs locked"),
        "exit" => {
            drop(act);
            let report = guard.reset_all();
            assert!(report.is_clean());
        }
        _ => std::thread::sleep(Duration::from_secs(60)),
    }
}

fn nvml_load_env() -> &'static str {
    "EALI_NVML_LOAD_FILE"
}

fn spawn(name: &str, dir: &Path, role: &str, extra: &[(String, String)]) -> Child {
    let mut vars = env(dir, role);
    vars.extend(extra.iter().cloned());
    nvml_support::child_command(name, &vars)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn")
}

/// Reads the child's stdout until a line containing `marker`; the lines read.
fn wait_for_line(child: &mut Child, marker: &str) -> Vec<String> {
    let out = child.stdout.as_mut().expect("piped stdout");
    let mut lines = Vec::new();
    for line in BufReader::new(out).lines() {
        let line = line.expect("child stdout");
        let hit = line.contains(marker);
        lines.push(line);
        if hit {
            return lines;
        }
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    panic!("child ended before `{marker}`: {lines:?}\n{err}");
}

fn driver_state(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("driver.json")).expect("driver state"))
        .expect("state JSON")
}

/// Locked range per GPU in the driver state.
fn locks(dir: &Path) -> Vec<Option<(u64, u64)>> {
    let st = driver_state(dir);
    st["gpus"]
        .as_array()
        .expect("gpus")
        .iter()
        .map(|g| {
            g["locked"]
                .as_array()
                .map(|a| (a[0].as_u64().unwrap(), a[1].as_u64().unwrap()))
        })
        .collect()
}

/// Driver operations of process `pid`, in order.
fn ops_of(dir: &Path, pid: u32) -> Vec<String> {
    driver_state(dir)["log"]
        .as_array()
        .expect("log")
        .iter()
        .filter(|e| e["pid"].as_u64() == Some(u64::from(pid)))
        .map(|e| format!("gpu{} {}", e["gpu"], e["op"].as_str().unwrap_or("")))
        .collect()
}

fn record(dir: &Path) -> LockRecord {
    LockRecord::load(&dir.join("locks.json")).expect("lock record")
}

/// Restarts the agent and checks that resetting the left-over locks is the first thing it does.
fn restart_and_check(name: &str, dir: &Path, left_locked: usize) -> String {
    let out = spawn(name, dir, "restart", &[])
        .wait_with_output()
        .expect("restart");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "restart failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid: u32 = stdout
        .split_whitespace()
        .skip_while(|w| *w != "PID")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("restart pid");
    let ops = ops_of(dir, pid);
    let after_init: Vec<&String> = ops.iter().filter(|o| !o.ends_with(" init")).collect();
    assert!(after_init.len() >= left_locked, "{ops:?}");
    assert!(
        after_init[..left_locked]
            .iter()
            .all(|o| o.ends_with("reset-lock")),
        "restart did not reset first: {ops:?}"
    );
    assert_eq!(locks(dir), vec![None, None], "still locked after restart");
    assert!(record(dir).entries.is_empty());
    format!("restart pid {pid}: {ops:?}\n{stdout}")
}

#[test]
fn sigkill_while_locked_low_then_restart_restores_clocks_first() {
    const NAME: &str = "sigkill_while_locked_low_then_restart_restores_clocks_first";
    if nvml_support::is_child(NAME) {
        return child(&std::env::var(ROLE_ENV).unwrap());
    }
    let dir = nvml_support::scratch("sigkill");
    let mut c = spawn(NAME, &dir, "hold", &[]);
    wait_for_line(&mut c, "LOCKED");
    let pid = c.id();
    c.kill().expect("SIGKILL");
    let status = c.wait().unwrap();
    assert_eq!(status.signal(), Some(9));
    // The driver keeps the locks of the dead process: GPU 0 sits at 300 MHz.
    let left = locks(&dir);
    println!(
        "after SIGKILL of {pid}: driver locks {left:?}, record {:?}",
        record(&dir).entries
    );
    assert_eq!(left[0], Some((u64::from(LOW_MHZ), u64::from(LOW_MHZ))));
    assert!(left[1].is_some());
    assert_eq!(record(&dir).entries.len(), 2);
    assert!(record(&dir).entries.iter().all(|e| e.pid == pid));
    println!("{}", restart_and_check(NAME, &dir, 2));
}

#[test]
fn sigterm_sigint_panic_and_exit_reset_clocks_on_the_way_out() {
    const NAME: &str = "sigterm_sigint_panic_and_exit_reset_clocks_on_the_way_out";
    if nvml_support::is_child(NAME) {
        return child(&std::env::var(ROLE_ENV).unwrap());
    }
    for how in ["TERM", "INT", "panic", "exit"] {
        let dir = nvml_support::scratch(&format!("exit-{how}"));
        let role = match how {
            "TERM" | "INT" => "hooks",
            other => other,
        };
        let mut c = spawn(NAME, &dir, role, &[]);
        wait_for_line(&mut c, "LOCKED");
        if role == "hooks" {
            let ok = std::process::Command::new("kill")
                .arg(format!("-{how}"))
                .arg(c.id().to_string())
                .status();
            assert!(ok.expect("kill").success());
        }
        let out = c.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        match how {
            "TERM" => assert_eq!(out.status.signal(), Some(15), "{stderr}"),
            "INT" => assert_eq!(out.status.signal(), Some(2), "{stderr}"),
            "panic" => {
                assert_eq!(out.status.code(), Some(101));
                assert!(stderr.contains("panic: reset clocks of 2"), "{stderr}");
            }
            _ => assert!(out.status.success(), "{stderr}"),
        }
        println!(
            "{how:>5}: exit {:?}, driver locks after: {:?}",
            out.status,
            locks(&dir)
        );
        assert_eq!(locks(&dir), vec![None, None], "{how} left a GPU locked");
        assert!(record(&dir).entries.is_empty(), "{how} left a record");
    }
}

/// Operations (GPU, lock MHz or reset), the step after which to kill, and a delay before the
/// kill so that it lands in the middle of the next operation now and then.
fn ops_strategy() -> impl Strategy<Value = (Vec<(u32, Option<u32>)>, usize, u64)> {
    let op = (
        0u32..2,
        prop::option::weighted(0.75, prop::sample::select(vec![300u32, 697, 900, 1200])),
    );
    prop::collection::vec(op, 1..6).prop_flat_map(|ops| {
        let n = ops.len();
        (Just(ops), 1..=n, 0u64..15)
    })
}

/// Random set/reset sequences killed with SIGKILL after a random step: at the kill, every GPU
/// the driver holds locked is on record; after the restart nothing is locked.
#[test]
fn random_set_reset_kill_sequences_never_leave_a_gpu_locked() {
    const NAME: &str = "random_set_reset_kill_sequences_never_leave_a_gpu_locked";
    if nvml_support::is_child(NAME) {
        return child(&std::env::var(ROLE_ENV).unwrap());
    }
    let config = ProptestConfig {
        cases: 8,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let result = runner.run(&ops_strategy(), |(ops, kill_after, delay_ms)| {
        let dir: PathBuf = nvml_support::scratch("prop-kill");
        let spec: Vec<String> =
            ops.iter().map(|(g, f)| format!("{g}:{}", f.map_or("-".to_string(), |f| f.to_string()))).collect();
        let mut c = spawn(NAME, &dir, "hold", &[(OPS_ENV.into(), spec.join(","))]);
        wait_for_line(&mut c, &format!("STEP {kill_after}"));
        std::thread::sleep(Duration::from_millis(delay_ms));
        c.kill().unwrap();
        c.wait().unwrap();
        let rec = record(&dir);
        let left = locks(&dir);
        for (i, l) in left.iter().enumerate() {
            if l.is_some() {
                prop_assert!(rec.entries.iter().any(|e| e.index == i as u32), "GPU {} locked off the record", i);
            }
        }
        let n_left = left.iter().filter(|l| l.is_some()).count();
        restart_and_check(NAME, &dir, n_left);
        println!("ops {spec:?} killed {delay_ms} ms after step {kill_after}: {n_left} GPU(s) left locked, restored at restart");
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
