//! Static facts of a GPU from NVML: identity, PCI bus id, NUMA node, memory, architecture.

use nvml_wrapper::Device;
use nvml_wrapper::enums::device::DeviceArchitecture;

use super::error::{Ctx, device_error};
use crate::gpu::{Architecture, GpuInfo, Result};

/// The crate's architecture for NVML's. Generations the crate does not name map to the nearest
/// one with the same NVML capabilities: Kepler behaves like Maxwell (application clocks only),
/// Ada like Ampere and Blackwell like Hopper (locked clocks, energy counter, averaged power).
pub fn architecture_of(a: DeviceArchitecture) -> Option<Architecture> {
    Some(match a {
        DeviceArchitecture::Kepler | DeviceArchitecture::Maxwell => Architecture::Maxwell,
        DeviceArchitecture::Pascal => Architecture::Pascal,
        DeviceArchitecture::Volta => Architecture::Volta,
        DeviceArchitecture::Turing => Architecture::Turing,
        DeviceArchitecture::Ampere | DeviceArchitecture::Ada => Architecture::Ampere,
        DeviceArchitecture::Hopper | DeviceArchitecture::Blackwell => Architecture::Hopper,
        DeviceArchitecture::Unknown => return None,
    })
}

/// Architecture from the CUDA compute capability, for drivers that do not report it.
fn architecture_from_cc(major: i32, minor: i32) -> Architecture {
    match (major, minor) {
        (..=5, _) => Architecture::Maxwell,
        (6, _) => Architecture::Pascal,
        (7, 0..=2) => Architecture::Volta,
        (7, _) => Architecture::Turing,
        (8, _) => Architecture::Ampere,
        _ => Architecture::Hopper,
    }
}

/// NUMA node from sysfs (`/sys/bus/pci/devices/<bus id>/numa_node`), where NVML lacks it.
fn numa_from_sysfs(bus_id: &str) -> Option<u32> {
    // NVML's bus id has an 8-digit domain, sysfs a 4-digit one, in lower case.
    let id = bus_id
        .get(4..)
        .filter(|_| bus_id.len() > 12)
        .unwrap_or(bus_id)
        .to_ascii_lowercase();
    let text = std::fs::read_to_string(format!("/sys/bus/pci/devices/{id}/numa_node")).ok()?;
    // -1 means the platform has no NUMA information.
    text.trim()
        .parse::<i64>()
        .ok()
        .and_then(|n| u32::try_from(n).ok())
}

pub(crate) fn read_info(device: &Device<'_>, index: u32) -> Result<GpuInfo> {
    // The UUID is needed to name errors, so it is read with a placeholder context.
    let pre = Ctx {
        uuid: "unknown",
        arch: Architecture::Volta,
    };
    let uuid = device
        .uuid()
        .map_err(|e| device_error(e, "read the UUID", pre))?;
    let cc = device.cuda_compute_capability();
    let architecture = match device.architecture().ok().and_then(architecture_of) {
        Some(a) => a,
        None => match &cc {
            Ok(c) => architecture_from_cc(c.major, c.minor),
            Err(_) => Architecture::Volta,
        },
    };
    let ctx = Ctx {
        uuid: &uuid,
        arch: architecture,
    };
    let name = device
        .name()
        .map_err(|e| device_error(e, "read the name", ctx))?;
    let pci_bus_id = device
        .pci_info()
        .map_err(|e| device_error(e, "read the PCI info", ctx))?
        .bus_id;
    let memory_bytes = device
        .memory_info()
        .map_err(|e| device_error(e, "read the memory size", ctx))?
        .total;
    let numa_node = device
        .numa_node_id()
        .ok()
        .or_else(|| numa_from_sysfs(&pci_bus_id));
    Ok(GpuInfo {
        index,
        uuid,
        name,
        pci_bus_id,
        numa_node,
        memory_bytes,
        architecture,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_map_to_the_nearest_capability_class() {
        assert_eq!(
            architecture_of(DeviceArchitecture::Kepler),
            Some(Architecture::Maxwell)
        );
        assert_eq!(
            architecture_of(DeviceArchitecture::Ada),
            Some(Architecture::Ampere)
        );
        assert_eq!(
            architecture_of(DeviceArchitecture::Blackwell),
            Some(Architecture::Hopper)
        );
        assert_eq!(architecture_of(DeviceArchitecture::Unknown), None);
        assert_eq!(architecture_from_cc(7, 5), Architecture::Turing);
        assert_eq!(architecture_from_cc(7, 0), Architecture::Volta);
        assert_eq!(architecture_from_cc(10, 0), Architecture::Hopper);
    }
}
