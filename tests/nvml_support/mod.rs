//! Shared by the `nvml_*` tests: finding the stand-in `libnvidia-ml` built from the simulated GPU
//! (`e2e/nvml-standin`), and running a test body in a child process with its own stand-in
//! configuration (the stand-in is configured by environment at `nvmlInit`, and NVML is
//! initialised once per process).

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// Set in a child process to the name of the test it runs.
pub const CHILD_ENV: &str = "EALI_NVML_TEST_CHILD";

/// The stand-in library of this build profile (`target/<profile>/libnvml_standin.so`).
pub fn standin_lib() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target profile directory");
    let lib = profile_dir.join("libnvml_standin.so");
    assert!(
        lib.exists(),
        "{} is missing: build the stand-in NVML library first with `cargo build -p nvml-standin` \
         (add --release for release tests); .ci/run does this",
        lib.display()
    );
    lib
}

/// Whether this process is the child running `name`.
pub fn is_child(name: &str) -> bool {
    std::env::var(CHILD_ENV).is_ok_and(|v| v == name)
}

/// A command re-running this test binary for test `name` alone, with the stand-in loaded.
pub fn child_command(name: &str, env: &[(String, String)]) -> Command {
    let exe = std::env::current_exe().expect("test executable path");
    let mut cmd = Command::new(exe);
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, name)
        .env("EALI_NVML_LIB", standin_lib())
        .env("RUST_BACKTRACE", "1");
    // A child starts from a clean stand-in configuration, whatever the parent's environment.
    for (k, _) in std::env::vars() {
        if k.starts_with("EALI_NVML_") && k != "EALI_NVML_LIB" {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd
}

/// Runs test `name` in a child process with `env`, prints what it printed, and fails if it did.
pub fn run_child(name: &str, env: &[(String, String)]) -> Output {
    let out = child_command(name, env)
        .output()
        .expect("spawn the child test process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The child's own lines, without the test harness's (the first shares a line with it).
    let harness = format!("test {name} ... ");
    for line in stdout.lines() {
        let line = line.strip_prefix(harness.as_str()).unwrap_or(line);
        let t = line.trim();
        let chatter = t.is_empty()
            || ["ok", "FAILED", "failures:", "successes:"].contains(&t)
            || ["running ", "test result"].iter().any(|p| t.starts_with(p));
        if !chatter {
            println!("    {line}");
        }
    }
    assert!(
        out.status.success(),
        "child `{name}` failed: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    out
}

/// Defines a test whose body runs in a child process with the given stand-in environment.
#[macro_export]
macro_rules! standin_test {
    ($name:ident, [$(($k:expr, $v:expr)),* $(,)?], $body:block) => {
        #[test]
        fn $name() {
            let name = stringify!($name);
            if nvml_support::is_child(name) {
                $body
            } else {
                nvml_support::run_child(name, &[$(($k.to_string(), $v.to_string())),*]);
            }
        }
    };
}

/// A scratch directory for one test.
pub fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("eali-nvml-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}
