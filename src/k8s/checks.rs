//! Startup checks of `eali agent`: the CRD is installed and RBAC grants every verb the agent uses.
//! Each failure says what is wrong and the command that fixes it, instead of a controller that
//! logs 404s and 403s forever.

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::Client;
use kube::api::{Api, ListParams, PostParams};

use super::crd::{CRD_NAME, InferenceService};

/// One permission the agent needs: API group, resource (with subresource), verbs, and whether it
/// is only needed in the agent's own namespace (the Lease).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permission {
    pub group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    pub own_namespace: bool,
}

impl Permission {
    /// `resource.group[/sub]`, as kubectl prints it, plus the namespace for namespaced grants.
    pub fn display(&self, namespace: &str) -> String {
        let (res, sub) = match self.resource.split_once('/') {
            Some((r, s)) => (r, format!("/{s}")),
            None => (self.resource, String::new()),
        };
        let name = if self.group.is_empty() {
            format!("{res}{sub}")
        } else {
            format!("{res}.{}{sub}", self.group)
        };
        if self.own_namespace {
            format!("{name} in namespace {namespace}")
        } else {
            name
        }
    }
}

const fn perm(
    group: &'static str,
    resource: &'static str,
    verbs: &'static [&'static str],
) -> Permission {
    Permission {
        group,
        resource,
        verbs,
        own_namespace: false,
    }
}

/// Everything the agent calls, and nothing more. The Helm chart's RBAC grants exactly this
/// (tests compare `kubectl auth can-i --list` against it).
pub const PERMISSIONS: &[Permission] = &[
    // The node side: which pod of this node a control-socket caller is (`control/authz.rs`,
    // a list with `spec.nodeName`).
    perm("", "pods", &["list"]),
    perm(
        "eali.dev",
        "inferenceservices",
        &["get", "list", "watch", "patch"],
    ),
    perm("eali.dev", "inferenceservices/status", &["get", "patch"]),
    perm(
        "apps",
        "deployments",
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    perm("", "services", &["get", "create", "patch", "delete"]),
    perm("events.k8s.io", "events", &["create", "patch"]),
    Permission {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "create", "update"],
        own_namespace: true,
    },
];

/// A failed check, with its fix.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(
        "the InferenceService CRD ({CRD_NAME}) is not installed.\n  fix: eali crd | kubectl apply --server-side -f -\n  \
         (or: kubectl apply --server-side -f crds/inferenceservice.yaml, or helm upgrade --install eali charts/eali)"
    )]
    CrdMissing,
    #[error("RBAC forbids the agent ({user}) to:\n{missing}\n  fix: {fix}")]
    Forbidden {
        user: String,
        missing: String,
        fix: String,
    },
    #[error("cannot reach the API server: {0}")]
    Api(#[from] kube::Error),
}

/// Fails with [`CheckError::CrdMissing`] when the API server does not serve InferenceServices.
pub async fn check_crd(client: &Client) -> Result<(), CheckError> {
    let api: Api<InferenceService> = Api::all(client.clone());
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Err(CheckError::CrdMissing),
        // 403 here is reported by the RBAC check with the full list.
        Err(kube::Error::Api(e)) if e.code == 403 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Asks the API server (SelfSubjectAccessReview) about every permission in [`PERMISSIONS`].
/// `namespace` is where the Lease lives; `service_account` (namespace, name) only shapes the
/// suggested fix command.
pub async fn check_rbac(
    client: &Client,
    namespace: &str,
    service_account: Option<(&str, &str)>,
) -> Result<(), CheckError> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut missing = Vec::new();
    for p in PERMISSIONS {
        let (resource, sub) = match p.resource.split_once('/') {
            Some((r, s)) => (r, Some(s.to_string())),
            None => (p.resource, None),
        };
        let mut denied = Vec::new();
        for verb in p.verbs {
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        group: Some(p.group.to_string()),
                        resource: Some(resource.to_string()),
                        subresource: sub.clone(),
                        verb: Some(verb.to_string()),
                        namespace: p.own_namespace.then(|| namespace.to_string()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let res = api.create(&PostParams::default(), &review).await?;
            if !res.status.is_some_and(|s| s.allowed) {
                denied.push(*verb);
            }
        }
        if !denied.is_empty() {
            missing.push(format!(
                "  - {}: {}",
                p.display(namespace),
                denied.join(", ")
            ));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let user = match service_account {
        Some((ns, sa)) => format!("system:serviceaccount:{ns}:{sa}"),
        None => "the current user".to_string(),
    };
    let ns = service_account.map_or(namespace, |(ns, _)| ns);
    Err(CheckError::Forbidden {
        user,
        missing: missing.join("\n"),
        fix: format!(
            "helm upgrade --install eali charts/eali --namespace {ns} (creates the ServiceAccount and RBAC), \
             or kubectl apply -f manifests/eali.yaml; the exact rules are in charts/eali/templates/rbac.yaml"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_are_unique_and_leases_are_namespaced() {
        let mut seen = std::collections::BTreeSet::new();
        for p in PERMISSIONS {
            assert!(seen.insert((p.group, p.resource)), "duplicate {p:?}");
            assert!(!p.verbs.is_empty());
        }
        let lease = PERMISSIONS
            .iter()
            .find(|p| p.resource == "leases")
            .expect("leases");
        assert!(lease.own_namespace);
        assert!(PERMISSIONS.iter().filter(|p| p.own_namespace).count() == 1);
    }

    #[test]
    fn crd_message_gives_the_fix() {
        let msg = CheckError::CrdMissing.to_string();
        assert!(
            msg.contains("inferenceservices.eali.dev") && msg.contains("eali crd | kubectl apply"),
            "{msg}"
        );
    }
}
