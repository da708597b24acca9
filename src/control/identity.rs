//! Which pod a process belongs to, from `/proc/<pid>/cgroup`. The kubelet puts each container
//! in a cgroup whose path names the pod UID, in one of two layouts:
//!
//! - cgroupfs driver: `/kubepods/burstable/pod1b4e…-…/<container id>`
//! - systemd driver: `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b4e…_….slice/cri-containerd-<id>.scope`
//!   (dashes of the UID become underscores; the scope prefix is `cri-containerd-`, `crio-` or
//!   `docker-`).
//!
//! cgroup v1 lists one line per hierarchy, v2 a single `0::` line; any line naming a pod counts.

/// The pod (and container) a process runs in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodRef {
    pub uid: String,
    pub container_id: Option<String>,
}

fn is_uid(s: &str) -> bool {
    s.len() == 36
        && s.chars().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Parses one cgroup path; `None` when it is not a Kubernetes pod's.
fn pod_of_path(path: &str) -> Option<PodRef> {
    if !path.contains("kubepods") {
        return None;
    }
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (pos, uid) = segments.iter().enumerate().find_map(|(i, seg)| {
        let seg = seg.strip_suffix(".slice").unwrap_or(seg);
        let idx = seg.rfind("pod")?;
        let uid = seg[idx + 3..].replace('_', "-");
        is_uid(&uid).then_some((i, uid))
    })?;
    let container_id = segments.get(pos + 1).map(|seg| {
        let seg = seg.strip_suffix(".scope").unwrap_or(seg);
        let id = ["cri-containerd-", "crio-", "docker-", "cri-o-"]
            .iter()
            .find_map(|p| seg.strip_prefix(p))
            .unwrap_or(seg);
        id.to_string()
    });
    Some(PodRef { uid, container_id })
}

/// The pod named by the contents of a `/proc/<pid>/cgroup` file.
pub fn pod_of_cgroup(contents: &str) -> Option<PodRef> {
    contents.lines().find_map(|line| {
        // hierarchy-ID:controllers:path
        let path = line.splitn(3, ':').nth(2)?;
        pod_of_path(path)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "1b4e28ba-2fa1-11d2-883f-0016d3cca427";

    #[test]
    fn cgroupfs_v1_layout() {
        let text = format!(
            "12:pids:/kubepods/burstable/pod{UID}/4f3c2a\n11:cpu,cpuacct:/kubepods/burstable/pod{UID}/4f3c2a\n"
        );
        assert_eq!(
            pod_of_cgroup(&text),
            Some(PodRef {
                uid: UID.into(),
                container_id: Some("4f3c2a".into())
            })
        );
    }

    #[test]
    fn systemd_v2_layout() {
        let u = UID.replace('-', "_");
        let text = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/cri-containerd-abc123.scope\n"
        );
        let p = pod_of_cgroup(&text).expect("a pod");
        assert_eq!(p.uid, UID);
        assert_eq!(p.container_id.as_deref(), Some("abc123"));
        // Guaranteed pods sit directly under kubepods.
        let g = format!("0::/kubepods.slice/kubepods-pod{u}.slice/crio-ff.scope");
        assert_eq!(pod_of_cgroup(&g).map(|p| p.uid), Some(UID.to_string()));
    }

    #[test]
    fn processes_outside_pods_have_none() {
        assert_eq!(
            pod_of_cgroup("0::/user.slice/user-1000.slice/session-3.scope\n"),
            None
        );
        assert_eq!(
            pod_of_cgroup("0::/kubepods.slice/kubepods-podnotauid.slice\n"),
            None
        );
        assert_eq!(pod_of_cgroup("garbage"), None);
    }
}
