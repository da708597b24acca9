//! Who may control a GPU: the pod that holds it according to the kubelet. The chain is
//! peer pid (SO_PEERCRED, from tonic's `UdsConnectInfo`) → `/proc/<pid>/cgroup` → pod UID →
//! [`PodDirectory`] → namespace/name → pod-resources `List` → does that pod hold this GPU for
//! our resource? Every failure along the way denies (fail closed). Decisions are cached per
//! (pid, GPU) for a short time: set-calls come tens of times a second, a pod's allocation does
//! not change that fast, and a pid is not reused within seconds.
//!
//! The check is per pod, not per container: pod-resources names containers, cgroups carry
//! container IDs, and matching the two needs the container runtime. Containers of one pod
//! share its GPU allocation anyway unless each requests its own.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use super::ControlError;
use super::identity::pod_of_cgroup;
use crate::deviceplugin::podresources::ListPodResourcesRequest;
use crate::deviceplugin::podresources::pod_resources_lister_client::PodResourcesListerClient;
use crate::deviceplugin::{POD_RESOURCES_SOCKET, RESOURCE_NAME, uds};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for PodName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Pod UID → namespace/name (pod-resources names pods, cgroups carry UIDs).
pub trait PodDirectory: Send + Sync + 'static {
    fn lookup<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<Option<PodName>, ControlError>>;
}

/// A fixed map (tests, and nodes where the agent has no API access but a known pod set).
#[derive(Debug, Default)]
pub struct StaticPodDirectory(Mutex<HashMap<String, PodName>>);

impl StaticPodDirectory {
    pub fn insert(&self, uid: &str, namespace: &str, name: &str) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                uid.to_string(),
                PodName {
                    namespace: namespace.into(),
                    name: name.into(),
                },
            );
    }
}

impl PodDirectory for StaticPodDirectory {
    fn lookup<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<Option<PodName>, ControlError>> {
        let found = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(uid)
            .cloned();
        Box::pin(async move { Ok(found) })
    }
}

/// A JSON file mapping pod UIDs to `"namespace/name"`, read again at every lookup: for nodes
/// where the agent has no API access, and for tests that add pods while the agent runs.
#[derive(Debug, Clone)]
pub struct FilePodDirectory {
    pub path: PathBuf,
}

impl PodDirectory for FilePodDirectory {
    fn lookup<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<Option<PodName>, ControlError>> {
        Box::pin(async move {
            // A small file, read at most once per cache period: not worth a blocking task.
            let text =
                std::fs::read_to_string(&self.path).map_err(|source| ControlError::Proc {
                    path: self.path.clone(),
                    source,
                })?;
            let map: HashMap<String, String> = serde_json::from_str(&text)
                .map_err(|e| ControlError::Directory(format!("{}: {e}", self.path.display())))?;
            Ok(map.get(uid).and_then(|v| {
                let (namespace, name) = v.split_once('/')?;
                Some(PodName {
                    namespace: namespace.into(),
                    name: name.into(),
                })
            }))
        })
    }
}

/// The pods of this node from the API server (`spec.nodeName=<node>`), remembered by UID.
///
/// A pod's UID names one pod for its whole life, so a UID seen once never needs the API server
/// again: while the API server is unreachable, the pods already serving keep their clock control
/// (whether a pod may control a GPU is still asked of the kubelet's pod-resources at every
/// decision). Only a UID not seen yet lists the node's pods; that list replaces what is
/// remembered, so pods that are gone are forgotten.
pub struct KubePodDirectory {
    client: kube::Client,
    node: String,
    known: Mutex<HashMap<String, PodName>>,
}

impl KubePodDirectory {
    pub fn new(client: kube::Client, node: String) -> Self {
        Self {
            client,
            node,
            known: Mutex::new(HashMap::new()),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, PodName>> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl PodDirectory for KubePodDirectory {
    fn lookup<'a>(&'a self, uid: &'a str) -> BoxFuture<'a, Result<Option<PodName>, ControlError>> {
        Box::pin(async move {
            if let Some(name) = self.known().get(uid) {
                return Ok(Some(name.clone()));
            }
            use k8s_openapi::api::core::v1::Pod;
            let api: kube::Api<Pod> = kube::Api::all(self.client.clone());
            let lp =
                kube::api::ListParams::default().fields(&format!("spec.nodeName={}", self.node));
            let pods = api
                .list(&lp)
                .await
                .map_err(|e| ControlError::Directory(e.to_string()))?;
            let listed: HashMap<String, PodName> = pods
                .items
                .into_iter()
                .filter_map(|p| {
                    let m = p.metadata;
                    Some((
                        m.uid?,
                        PodName {
                            namespace: m.namespace.unwrap_or_default(),
                            name: m.name.unwrap_or_default(),
                        },
                    ))
                })
                .collect();
            let found = listed.get(uid).cloned();
            *self.known() = listed;
            Ok(found)
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(PodName),
    Deny(String),
}

pub struct Authorizer {
    proc_root: PathBuf,
    pod_resources: PathBuf,
    resource_name: String,
    directory: Arc<dyn PodDirectory>,
    cache_ttl: Duration,
    cache: Mutex<HashMap<(u32, String), (Instant, Decision)>>,
}

impl Authorizer {
    /// With the node's defaults: `/proc`, the kubelet's pod-resources socket, `eali.dev/gpu`,
    /// a 2 s decision cache.
    pub fn new(directory: Arc<dyn PodDirectory>) -> Self {
        Self {
            proc_root: PathBuf::from("/proc"),
            pod_resources: PathBuf::from(POD_RESOURCES_SOCKET),
            resource_name: RESOURCE_NAME.into(),
            directory,
            cache_ttl: Duration::from_secs(2),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Reads `<root>/<pid>/cgroup` instead of `/proc` (the agent's own /proc when it runs in
    /// a container with the host's mounted elsewhere, or a test's).
    pub fn with_proc_root(mut self, root: PathBuf) -> Self {
        self.proc_root = root;
        self
    }

    pub fn with_pod_resources_socket(mut self, path: PathBuf) -> Self {
        self.pod_resources = path;
        self
    }

    pub fn with_cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// May the process `pid` control GPU `uuid`?
    pub async fn check(&self, pid: Option<i32>, uuid: &str) -> Decision {
        let Some(pid) = pid.and_then(|p| u32::try_from(p).ok()).filter(|p| *p > 0) else {
            return Decision::Deny("caller's process is not visible (no peer credentials)".into());
        };
        let key = (pid, uuid.to_string());
        if let Some((at, d)) = self.cache().get(&key)
            && at.elapsed() < self.cache_ttl
        {
            return d.clone();
        }
        let decision = self.decide(pid, uuid).await;
        self.cache().insert(key, (Instant::now(), decision.clone()));
        decision
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<(u32, String), (Instant, Decision)>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn decide(&self, pid: u32, uuid: &str) -> Decision {
        let path = self.proc_root.join(pid.to_string()).join("cgroup");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => return Decision::Deny(format!("cannot read {}: {e}", path.display())),
        };
        let Some(pod) = pod_of_cgroup(&text) else {
            return Decision::Deny(format!("process {pid} is not in a Kubernetes pod"));
        };
        let name = match self.directory.lookup(&pod.uid).await {
            Ok(Some(n)) => n,
            Ok(None) => return Decision::Deny(format!("pod {} is not on this node", pod.uid)),
            Err(e) => return Decision::Deny(e.to_string()),
        };
        match self.holders(uuid).await {
            Ok(holders) if holders.contains(&name) => Decision::Allow(name),
            Ok(holders) => Decision::Deny(format!(
                "pod {name} (process {pid}) does not hold GPU {uuid}; held by {}",
                if holders.is_empty() {
                    "no pod".to_string()
                } else {
                    holders
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )),
            Err(e) => Decision::Deny(e.to_string()),
        }
    }

    /// Pods the kubelet has allocated GPU `uuid` to, for our resource.
    pub async fn holders(&self, uuid: &str) -> Result<Vec<PodName>, ControlError> {
        Ok(self.assignments().await?.remove(uuid).unwrap_or_default())
    }

    /// Every device of our resource the kubelet has allocated, with the pods holding it (one
    /// pod-resources `List`). Devices no pod holds are absent.
    pub async fn assignments(
        &self,
    ) -> Result<std::collections::HashMap<String, Vec<PodName>>, ControlError> {
        let channel = uds::connect(&self.pod_resources).await?;
        let list = PodResourcesListerClient::new(channel)
            .list(ListPodResourcesRequest {})
            .await
            .map_err(|s| ControlError::PodResources(s.to_string()))?
            .into_inner();
        let mut out: std::collections::HashMap<String, Vec<PodName>> = HashMap::new();
        for p in list.pod_resources {
            let name = PodName {
                namespace: p.namespace,
                name: p.name,
            };
            let ids = p
                .containers
                .iter()
                .flat_map(|c| c.devices.iter())
                .filter(|d| d.resource_name == self.resource_name)
                .flat_map(|d| d.device_ids.iter());
            for id in ids {
                let holders = out.entry(id.clone()).or_default();
                if !holders.contains(&name) {
                    holders.push(name.clone());
                }
            }
        }
        Ok(out)
    }
}
