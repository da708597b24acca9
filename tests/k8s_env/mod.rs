//! A real Kubernetes control plane for integration tests: etcd + kube-apiserver on loopback with
//! generated certificates (openssl), RBAC authorization and service-account keys, plus kubectl and
//! helm. Binaries come from `e2e/build-control-plane.sh` (in `e2e/.bin`, or `$EALI_E2E_BIN`).
//!
//! One control plane per test binary, started on first use and shared by its tests (each test uses
//! its own namespace). A watchdog shell kills the servers and removes the temp dir when the test
//! process exits, because the Rust test harness never drops statics.
//!
//! When the binaries are absent the tests skip with a loud message, unless `EALI_E2E_REQUIRE=1`
//! (set by `.ci/run`), where absence fails the test.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A running etcd + kube-apiserver pair and the files to reach it.
pub struct ControlPlane {
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
    pub server: String,
    pub apiserver_pid: u32,
    pub etcd_pid: u32,
}

static PLANE: OnceLock<Option<ControlPlane>> = OnceLock::new();
static CLUSTER: OnceLock<Option<ControlPlane>> = OnceLock::new();

/// What runs beside etcd and kube-apiserver.
#[derive(Clone, Copy, PartialEq)]
enum Components {
    /// The API server alone: no pods are ever made, no service-account tokens.
    ApiOnly,
    /// Also kube-controller-manager and kube-scheduler, and the ServiceAccount admission plugin:
    /// Deployments and DaemonSets get pods, pods get nodes and tokens, deletion collects garbage.
    Full,
}

/// Directory holding the control-plane binaries.
pub fn bin_dir() -> PathBuf {
    match std::env::var_os("EALI_E2E_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/.bin"),
    }
}

/// The shared control plane, or `None` (after a loud message) when the binaries are missing.
pub fn control_plane() -> Option<&'static ControlPlane> {
    shared(&PLANE, Components::ApiOnly)
}

/// A whole control plane (with kube-controller-manager and kube-scheduler), or `None` (after a
/// loud message) when the binaries are missing.
pub fn full_control_plane() -> Option<&'static ControlPlane> {
    shared(&CLUSTER, Components::Full)
}

fn shared(
    cell: &'static OnceLock<Option<ControlPlane>>,
    components: Components,
) -> Option<&'static ControlPlane> {
    cell.get_or_init(|| {
        let bin = bin_dir();
        let mut needed = vec!["etcd", "kube-apiserver", "kubectl", "helm"];
        if components == Components::Full {
            needed.extend(["kube-controller-manager", "kube-scheduler"]);
        }
        let missing: Vec<&str> = needed
            .into_iter()
            .filter(|b| !bin.join(b).is_file())
            .collect();
        if !missing.is_empty() {
            let msg = format!(
                "control-plane binaries missing in {} ({}); run e2e/build-control-plane.sh",
                bin.display(),
                missing.join(", ")
            );
            if std::env::var("EALI_E2E_REQUIRE").as_deref() == Ok("1") {
                panic!("{msg} (EALI_E2E_REQUIRE=1)");
            }
            eprintln!(
                "\n{}\n!!! SKIPPING real-control-plane test: {msg}\n{}\n",
                "!".repeat(100),
                "!".repeat(100)
            );
            return None;
        }
        Some(
            ControlPlane::start(bin, components)
                .unwrap_or_else(|e| panic!("control plane failed to start: {e}")),
        )
    })
    .as_ref()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    run(Command::new("openssl").current_dir(dir).args(args)).map(|_| ())
}

/// Writes a CA, the apiserver serving cert, an admin client cert and the service-account key pair.
fn make_certs(dir: &Path) -> Result<(), String> {
    let key = |name: &str| -> Result<(), String> {
        openssl(
            dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                name,
            ],
        )
    };
    key("ca.key")?;
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-days",
            "2",
            "-subj",
            "/CN=eali-e2e-ca",
            "-out",
            "ca.crt",
        ],
    )?;
    std::fs::write(
        dir.join("server.ext"),
        // 10.0.0.1: the `kubernetes` Service's ClusterIP in --service-cluster-ip-range.
        "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n\
         extendedKeyUsage=serverAuth\n",
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n")
        .map_err(|e| e.to_string())?;
    for (name, subj, ext) in [
        ("apiserver", "/CN=kube-apiserver", "server.ext"),
        ("admin", "/O=system:masters/CN=admin", "client.ext"),
    ] {
        key(&format!("{name}.key"))?;
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-key",
                &format!("{name}.key"),
                "-subj",
                subj,
                "-out",
                &format!("{name}.csr"),
            ],
        )?;
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                ext,
                "-out",
                &format!("{name}.crt"),
            ],
        )?;
    }
    key("sa.key")?;
    openssl(dir, &["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"])
}

fn b64(path: &Path) -> Result<String, String> {
    // openssl's base64 wraps lines; kubeconfig wants one line.
    let out = run(Command::new("openssl")
        .args(["base64", "-A", "-in"])
        .arg(path))?;
    Ok(out.trim().to_string())
}

impl ControlPlane {
    /// Applies the generated InferenceService CRD and waits until it is served (Established,
    /// then in discovery: `kubectl get` by short name needs the latter).
    pub fn install_crd(&self) {
        let crd = repo().join("crds/inferenceservice.yaml");
        self.kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            crd.to_str().expect("utf-8 path"),
        ])
        .expect("apply CRD");
        self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd/inferenceservices.eali.dev",
            "--timeout=60s",
        ])
        .expect("CRD Established");
        eventually(30, "eisvc in discovery", || {
            self.kubectl(&["get", "eisvc", "-A"]).ok()
        });
    }

    fn start(bin: PathBuf, components: Components) -> Result<ControlPlane, String> {
        let dir =
            std::env::temp_dir().join(format!("eali-e2e-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(dir.join("etcd")).map_err(|e| e.to_string())?;
        make_certs(&dir)?;
        let (etcd_port, peer_port, api_port) = (free_port(), free_port(), free_port());
        let log = |name: &str| std::fs::File::create(dir.join(name)).map_err(|e| e.to_string());
        let etcd = Command::new(bin.join("etcd"))
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{etcd_port}"
            ))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
            ))
            .arg(format!(
                "--initial-cluster=default=http://127.0.0.1:{peer_port}"
            ))
            .arg("--unsafe-no-fsync=true")
            .stdout(Stdio::null())
            .stderr(log("etcd.log")?)
            .spawn()
            .map_err(|e| format!("etcd: {e}"))?;
        let server = format!("https://127.0.0.1:{api_port}");
        let mut api = Command::new(bin.join("kube-apiserver"));
        api.arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
            .arg(format!("--cert-dir={}", dir.display()))
            .arg(format!(
                "--tls-cert-file={}",
                dir.join("apiserver.crt").display()
            ))
            .arg(format!(
                "--tls-private-key-file={}",
                dir.join("apiserver.key").display()
            ))
            .arg(format!("--client-ca-file={}", dir.join("ca.crt").display()))
            .arg(format!("--secure-port={api_port}"))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"])
            .args([
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
            ])
            .arg("--authorization-mode=RBAC")
            .arg(format!("--service-account-issuer={server}/"))
            .arg(format!(
                "--service-account-key-file={}",
                dir.join("sa.pub").display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                dir.join("sa.key").display()
            ))
            .stdout(Stdio::null())
            .stderr(log("apiserver.log")?);
        if components == Components::ApiOnly {
            // No kube-controller-manager runs, so nothing would fill in service-account tokens.
            api.arg("--disable-admission-plugins=ServiceAccount");
        }
        let api = api.spawn().map_err(|e| format!("kube-apiserver: {e}"))?;
        let plane = ControlPlane {
            kubeconfig: dir.join("kubeconfig"),
            dir,
            bin,
            server,
            apiserver_pid: api.id(),
            etcd_pid: etcd.id(),
        };
        let mut children = vec![etcd, api];
        plane.write_kubeconfig(&plane.kubeconfig, "admin")?;
        if components == Components::Full {
            children.extend(plane.start_controllers()?);
        }
        plane.spawn_watchdog(&children)?;
        plane.wait_ready()?;
        Ok(plane)
    }

    /// kube-controller-manager (every default controller; service-account tokens signed with the
    /// API server's key, the CA published to every namespace) and kube-scheduler, both with the
    /// admin kubeconfig, no leader election, health ports on loopback.
    fn start_controllers(&self) -> Result<Vec<Child>, String> {
        let log =
            |name: &str| std::fs::File::create(self.dir.join(name)).map_err(|e| e.to_string());
        let kc = format!("--kubeconfig={}", self.kubeconfig.display());
        let cm = Command::new(self.bin.join("kube-controller-manager"))
            .arg(&kc)
            .args(["--leader-elect=false", "--bind-address=127.0.0.1"])
            .arg(format!("--secure-port={}", free_port()))
            .arg(format!(
                "--service-account-private-key-file={}",
                self.dir.join("sa.key").display()
            ))
            .arg(format!(
                "--root-ca-file={}",
                self.dir.join("ca.crt").display()
            ))
            .arg("--use-service-account-credentials=false")
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            // Pods that lose their node are not waited for (tests kill nodes on purpose).
            .arg("--node-monitor-grace-period=20s")
            .stdout(Stdio::null())
            .stderr(log("controller-manager.log")?)
            .spawn()
            .map_err(|e| format!("kube-controller-manager: {e}"))?;
        let sched = Command::new(self.bin.join("kube-scheduler"))
            .arg(&kc)
            .arg(format!(
                "--authentication-kubeconfig={}",
                self.kubeconfig.display()
            ))
            .arg(format!(
                "--authorization-kubeconfig={}",
                self.kubeconfig.display()
            ))
            .args(["--leader-elect=false", "--bind-address=127.0.0.1"])
            .arg(format!("--secure-port={}", free_port()))
            .stdout(Stdio::null())
            .stderr(log("scheduler.log")?)
            .spawn()
            .map_err(|e| format!("kube-scheduler: {e}"))?;
        Ok(vec![cm, sched])
    }

    /// Kills the servers and removes the directory once the test process is gone.
    fn spawn_watchdog(&self, children: &[Child]) -> Result<(), String> {
        let pids: Vec<String> = children.iter().map(|c| c.id().to_string()).collect();
        let script = format!(
            "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill {pids} 2>/dev/null; sleep 2; \
             kill -9 {pids} 2>/dev/null; rm -rf '{dir}'",
            me = std::process::id(),
            pids = pids.join(" "),
            dir = self.dir.display()
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(|_| ())
            .map_err(|e| format!("watchdog: {e}"))
    }

    /// Writes a kubeconfig for a client certificate user (`admin` is in `system:masters`).
    fn write_kubeconfig(&self, path: &Path, user: &str) -> Result<(), String> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    \
             certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {crt}\n    \
             client-key-data: {key}\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: {user}\n\
             current-context: e2e\n",
            server = self.server,
            ca = b64(&self.dir.join("ca.crt"))?,
            crt = b64(&self.dir.join(format!("{user}.crt")))?,
            key = b64(&self.dir.join(format!("{user}.key")))?,
        );
        std::fs::write(path, text).map_err(|e| e.to_string())
    }

    /// Writes a kubeconfig that authenticates with a bearer token (e.g. a ServiceAccount's).
    pub fn write_token_kubeconfig(&self, path: &Path, token: &str) -> Result<(), String> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    \
             certificate-authority-data: {ca}\nusers:\n- name: sa\n  user:\n    token: {token}\n\
             contexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: sa\ncurrent-context: e2e\n",
            server = self.server,
            ca = b64(&self.dir.join("ca.crt"))?,
        );
        std::fs::write(path, text).map_err(|e| e.to_string())
    }

    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = String::new();
        while Instant::now() < deadline {
            match self.kubectl(&["get", "--raw=/readyz"]) {
                Ok(s) if s.trim() == "ok" => {
                    if self.kubectl(&["get", "namespace", "default"]).is_ok() {
                        return Ok(());
                    }
                }
                Ok(s) => last = s,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let log = std::fs::read_to_string(self.dir.join("apiserver.log")).unwrap_or_default();
        let tail: String = log
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        Err(format!(
            "apiserver not ready after 120 s: {last}\n--- apiserver.log tail ---\n{tail}"
        ))
    }

    /// A kubectl command using the admin kubeconfig.
    pub fn kubectl_cmd(&self) -> Command {
        let mut c = Command::new(self.bin.join("kubectl"));
        c.env("KUBECONFIG", &self.kubeconfig).stdin(Stdio::null());
        c
    }

    /// Runs kubectl; Ok(stdout) on success, Err(stdout+stderr) on failure.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        run(self.kubectl_cmd().args(args))
    }

    /// `kubectl get ARGS -o json`, parsed; `None` when kubectl fails (e.g. not found yet).
    pub fn get_json(&self, args: &[&str]) -> Option<serde_json::Value> {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        self.kubectl(&a)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
    }

    /// Runs kubectl with `stdin` fed from a string.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Result<String, String> {
        pipe(self.kubectl_cmd().args(args), stdin)
    }

    /// A helm command using the admin kubeconfig.
    pub fn helm_cmd(&self) -> Command {
        let mut c = Command::new(self.bin.join("helm"));
        c.env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.join("helm/data"))
            .stdin(Stdio::null());
        c
    }

    /// Runs helm; Ok(stdout) on success, Err(stdout+stderr) on failure.
    pub fn helm(&self, args: &[&str]) -> Result<String, String> {
        run(self.helm_cmd().args(args))
    }

    /// A kube client for the admin user.
    pub async fn client(&self) -> kube::Client {
        self.client_from(&self.kubeconfig).await
    }

    /// A kube client from any kubeconfig file.
    pub async fn client_from(&self, path: &Path) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(path).expect("kubeconfig");
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("config");
        kube::Client::try_from(cfg).expect("client")
    }

    /// Creates a namespace (unique per test) and returns its name.
    pub fn namespace(&self, name: &str) -> String {
        self.kubectl(&["create", "namespace", name])
            .unwrap_or_else(|e| panic!("namespace {name}: {e}"));
        name.to_string()
    }
}

/// Runs a command with `stdin` fed from a string.
pub fn pipe(cmd: &mut Command, stdin: &str) -> Result<String, String> {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(text)
    }
}

/// Polls `f` every 200 ms until it returns Some, or panics after `secs` with `what`.
pub fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {secs} s waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Repository root (for crds/, charts/, manifests/).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}
