//! The device table: the GPUs this plugin advertises, their health and NUMA node, shared
//! between the health monitor (writer) and every ListAndWatch stream (readers, through a watch
//! channel, so each change reaches each stream as one full list). Also the preferred-allocation
//! policy: one NUMA node and one GPU model where possible.

use std::collections::BTreeMap;

use tokio::sync::watch;

use super::proto;
use crate::gpu::GpuInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    Healthy,
    Unhealthy,
}

impl Health {
    /// The strings of the v1beta1 API.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "Healthy",
            Health::Unhealthy => "Unhealthy",
        }
    }
}

/// One advertised GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginDevice {
    /// Device ID on the API: the GPU UUID (NVML UUIDs are 40 characters, under the 63 limit).
    pub uuid: String,
    /// Product name, used to keep a multi-GPU allocation on one model.
    pub model: String,
    pub numa_node: Option<u32>,
    pub health: Health,
}

impl PluginDevice {
    pub fn from_info(info: &GpuInfo) -> Self {
        Self {
            uuid: info.uuid.clone(),
            model: info.name.clone(),
            numa_node: info.numa_node,
            health: Health::Healthy,
        }
    }

    fn to_proto(&self) -> proto::Device {
        proto::Device {
            id: self.uuid.clone(),
            health: self.health.as_str().to_string(),
            topology: self.numa_node.map(|n| proto::TopologyInfo {
                nodes: vec![proto::NumaNode { id: i64::from(n) }],
            }),
        }
    }
}

/// Shared, observable list of devices.
#[derive(Debug, Clone)]
pub struct DeviceTable {
    tx: watch::Sender<Vec<PluginDevice>>,
}

impl DeviceTable {
    pub fn new(devices: Vec<PluginDevice>) -> Self {
        let (tx, _) = watch::channel(devices);
        Self { tx }
    }

    /// Sets a device's health; returns whether it changed (only changes wake the streams).
    pub fn set_health(&self, uuid: &str, health: Health) -> bool {
        self.tx
            .send_if_modified(|devs| match devs.iter_mut().find(|d| d.uuid == uuid) {
                Some(d) if d.health != health => {
                    d.health = health;
                    true
                }
                _ => false,
            })
    }

    pub fn snapshot(&self) -> Vec<PluginDevice> {
        self.tx.borrow().clone()
    }

    pub fn get(&self, uuid: &str) -> Option<PluginDevice> {
        self.tx.borrow().iter().find(|d| d.uuid == uuid).cloned()
    }

    pub fn subscribe(&self) -> watch::Receiver<Vec<PluginDevice>> {
        self.tx.subscribe()
    }

    /// The full list as ListAndWatch sends it.
    pub fn response(devices: &[PluginDevice]) -> proto::ListAndWatchResponse {
        proto::ListAndWatchResponse {
            devices: devices.iter().map(PluginDevice::to_proto).collect(),
        }
    }
}

/// Picks `size` devices from `available`, always including `must_include`, preferring one
/// NUMA node and one model: first a (NUMA node, model) group that can hold the rest alone
/// (the smallest such, so larger groups stay whole for larger requests), favouring the group of
/// the must-include devices; otherwise the largest groups first. Unknown IDs are passed through
/// unranked at the end: the kubelet's list is the truth, this is only advice.
pub fn preferred_allocation(
    devices: &[PluginDevice],
    available: &[String],
    must_include: &[String],
    size: usize,
) -> Vec<String> {
    let key_of = |id: &str| {
        devices
            .iter()
            .find(|d| d.uuid == id)
            .map(|d| (d.numa_node, d.model.clone()))
    };
    let mut chosen: Vec<String> = must_include.to_vec();
    let need = size.saturating_sub(chosen.len());
    let must_keys: Vec<_> = must_include.iter().filter_map(|m| key_of(m)).collect();

    let mut groups: BTreeMap<(Option<u32>, String), Vec<String>> = BTreeMap::new();
    let mut unknown = Vec::new();
    for id in available.iter().filter(|id| !must_include.contains(id)) {
        match key_of(id) {
            Some(k) => groups.entry(k).or_default().push(id.clone()),
            None => unknown.push(id.clone()),
        }
    }
    let mut ranked: Vec<_> = groups
        .into_iter()
        .map(|(k, mut ids)| {
            ids.sort();
            (k, ids)
        })
        .collect();
    ranked.sort_by_key(|(k, ids)| {
        let feasible = ids.len() >= need;
        let matches = must_keys.iter().all(|m| m == k);
        // Lower sorts first: feasible and matching, feasible, matching, the rest; best fit
        // among feasible groups, the biggest among the others.
        let class = match (feasible, matches) {
            (true, true) => 0,
            (true, false) => 1,
            (false, true) => 2,
            (false, false) => 3,
        };
        let fit = if feasible {
            ids.len() as i64
        } else {
            -(ids.len() as i64)
        };
        (class, fit)
    });
    let mut rest = ranked.into_iter().flat_map(|(_, ids)| ids).chain(unknown);
    for _ in 0..need {
        match rest.next() {
            Some(id) => chosen.push(id),
            None => break,
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(uuid: &str, numa: u32, model: &str) -> PluginDevice {
        PluginDevice {
            uuid: uuid.into(),
            model: model.into(),
            numa_node: Some(numa),
            health: Health::Healthy,
        }
    }

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn node() -> Vec<PluginDevice> {
        vec![
            dev("a0", 0, "H100"),
            dev("a1", 0, "H100"),
            dev("b0", 1, "H100"),
            dev("b1", 1, "H100"),
            dev("b2", 1, "H100"),
            dev("c0", 1, "A100"),
        ]
    }

    #[test]
    fn two_gpus_come_from_one_numa_node_with_the_best_fit() {
        let all = ids(&["c0", "b2", "b1", "b0", "a1", "a0"]);
        let got = preferred_allocation(&node(), &all, &[], 2);
        assert_eq!(got, ids(&["a0", "a1"]));
        let got = preferred_allocation(&node(), &all, &[], 3);
        assert_eq!(got, ids(&["b0", "b1", "b2"]));
    }

    #[test]
    fn must_include_pulls_its_own_group_first() {
        let all = ids(&["a0", "a1", "b0", "b1", "b2", "c0"]);
        let got = preferred_allocation(&node(), &all, &ids(&["b0"]), 2);
        assert_eq!(got[0], "b0");
        assert!(got[1] == "b1" || got[1] == "b2", "{got:?}");
    }

    #[test]
    fn one_model_beats_one_numa_node_only_when_it_fits() {
        // NUMA 1 has three H100 and one A100: a request for 4 spills across nodes, 3 do not.
        let all = ids(&["b0", "b1", "b2", "c0", "a0"]);
        let got = preferred_allocation(&node(), &all, &[], 4);
        assert_eq!(got.len(), 4);
        assert!(got.iter().take(3).all(|g| g.starts_with('b')), "{got:?}");
    }

    #[test]
    fn too_few_available_returns_what_exists() {
        let got = preferred_allocation(&node(), &ids(&["a0", "zz"]), &[], 3);
        assert_eq!(got, ids(&["a0", "zz"]));
    }

    #[test]
    fn table_reports_only_real_changes() {
        let t = DeviceTable::new(node());
        let mut rx = t.subscribe();
        rx.borrow_and_update();
        assert!(!t.set_health("a0", Health::Healthy));
        assert!(!rx.has_changed().unwrap_or(true));
        assert!(t.set_health("a0", Health::Unhealthy));
        assert!(rx.has_changed().unwrap_or(false));
        let resp = DeviceTable::response(&rx.borrow_and_update());
        assert_eq!(resp.devices[0].health, "Unhealthy");
        assert_eq!(
            resp.devices[0].topology.as_ref().map(|t| t.nodes[0].id),
            Some(0)
        );
        assert!(!t.set_health("missing", Health::Unhealthy));
    }
}
