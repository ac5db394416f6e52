//! The terraform test's IRSA checks: the operator's role and the EBS CSI
//! driver's, whom they trust and what they may do, and that no other
//! ServiceAccount has a role (the gateway workload authenticates to IoT
//! Core with its own certificate; the operator registers its IoT policy).

use std::collections::BTreeSet;

use crate::config::{Config, Findings, Repo, attr, blocks, is, refers, text};

/// The statements of a trust policy for `sts:AssumeRoleWithWebIdentity`
/// from the cluster's OIDC provider, with the `sub` values rendered.
fn web_identity_subjects(c: &Config, f: &mut Findings, doc_name: &str) -> Vec<String> {
    let p = |s: &str| format!("IRSA trust {doc_name}: {s}");
    let Some(doc) = c.data("aws_iam_policy_document", doc_name) else {
        f.expect(false, p("exists"));
        return Vec::new();
    };
    let mut subjects = Vec::new();
    for statement in blocks(doc, "statement") {
        let s = statement.body();
        f.expect(
            c.strings(attr(s, "actions")) == ["sts:AssumeRoleWithWebIdentity"],
            p("only sts:AssumeRoleWithWebIdentity"),
        );
        f.expect(
            blocks(s, "principals").all(|pr| {
                is(pr.body(), "type", "Federated")
                    && text(pr.body(), "identifiers").contains("aws_iam_openid_connect_provider.")
            }),
            p("principal is the cluster's OIDC provider"),
        );
        let condition = |claim: &str| {
            blocks(s, "condition")
                .map(|b| b.body())
                .find(|b| text(b, "variable").ends_with(&format!(":{claim}\"")) && is(b, "test", "StringEquals"))
        };
        f.expect(
            condition("aud").is_some_and(|b| c.strings(attr(b, "values")) == ["sts.amazonaws.com"]),
            p("aud StringEquals sts.amazonaws.com"),
        );
        match condition("sub") {
            Some(b) => subjects.extend(c.strings(attr(b, "values"))),
            None => f.expect(false, p("sub StringEquals a ServiceAccount")),
        }
    }
    subjects
}

/// Account-level IoT calls: they name no existing resource, so `*`.
const ACCOUNT_LEVEL_IOT: [&str; 4] = [
    "iot:DescribeEndpoint",
    "iot:GetRegistrationCode",
    "iot:RegisterCACertificate",
    "iot:RegisterCertificate",
];

/// The EBS CSI driver's controller, as the EKS addon installs it.
const EBS_CSI_SUBJECT: &str = "system:serviceaccount:kube-system:ebs-csi-controller-sa";
const EBS_CSI_POLICY: &str = ":iam::aws:policy/service-role/AmazonEBSCSIDriverPolicy";

/// The only trust policies for web identities: the operator's and the EBS
/// CSI driver's.
const WEB_IDENTITY_TRUSTS: [&str; 2] = ["operator_trust", "ebs_csi_trust"];

pub fn check_irsa(c: &Config, repo: &Repo, f: &mut Findings) {
    check_operator(c, repo, f);
    check_ebs_csi(c, f);
    for (name, doc) in c.labelled("data", "aws_iam_policy_document") {
        let web_identity = blocks(doc, "statement").any(|s| {
            c.strings(attr(s.body(), "actions"))
                .iter()
                .any(|a| a == "sts:AssumeRoleWithWebIdentity")
        });
        f.expect(
            !web_identity || WEB_IDENTITY_TRUSTS.contains(&name),
            format!(
                "IRSA: no web-identity role but the operator's and the EBS CSI driver's (found {name}; the gateway workload needs none)"
            ),
        );
    }
}

fn check_operator(c: &Config, repo: &Repo, f: &mut Findings) {
    // The operator: the chart's ServiceAccount in devenv/aws.sh's release.
    let chart_account = repo.chart_service_account.replace("{{ .Release.Name }}", &repo.release);
    let operator = format!("system:serviceaccount:{}:{chart_account}", repo.namespace);
    let subjects = web_identity_subjects(c, f, "operator_trust");
    f.expect(
        subjects == [operator.clone()],
        format!("IRSA: operator role trusts sub {operator} only (found {subjects:?})"),
    );
    f.expect(
        c.resource("aws_iam_role", "operator")
            .is_some_and(|r| text(r, "assume_role_policy") == "data.aws_iam_policy_document.operator_trust.json"),
        "IRSA: operator role uses the operator_trust policy",
    );

    let attached: Vec<_> = c
        .resources("aws_iam_role_policy")
        .into_iter()
        .filter(|(_, r)| refers(r, "role", "aws_iam_role.operator."))
        .collect();
    f.expect(
        attached.len() == 1 && text(attached[0].1, "policy") == "data.aws_iam_policy_document.operator.json",
        "IRSA: operator role has only the operator policy",
    );
    f.expect(
        !c.resources("aws_iam_role_policy_attachment")
            .iter()
            .any(|(_, a)| refers(a, "role", "aws_iam_role.operator.")),
        "IRSA: no managed policy attached to the operator role",
    );
    let mut granted = BTreeSet::new();
    for statement in c
        .data("aws_iam_policy_document", "operator")
        .map(|d| blocks(d, "statement").collect::<Vec<_>>())
        .unwrap_or_default()
    {
        let s = statement.body();
        let actions = c.strings(attr(s, "actions"));
        f.expect(
            is(s, "effect", "Allow") && attr(s, "not_actions").is_none(),
            "IRSA: operator policy statements allow listed actions",
        );
        for action in &actions {
            f.expect(
                action.starts_with("iot:") && !action.contains('*'),
                format!("IRSA: operator policy has only iot: actions, no wildcard (found {action})"),
            );
        }
        if c.strings(attr(s, "resources")).iter().any(|r| r == "*") {
            f.expect(
                actions.iter().all(|a| ACCOUNT_LEVEL_IOT.contains(&a.as_str())),
                format!(
                    "IRSA: operator policy gives \"*\" resources to account-level IoT actions only (found {actions:?})"
                ),
            );
        }
        granted.extend(actions);
    }
    // Exactly the calls of operator/src/aws_iot: none missing, none more.
    let called = &repo.operator_iot_actions;
    f.expect(
        called.contains("iot:DescribeEndpoint") && called.contains("iot:RegisterCACertificate"),
        format!("IRSA: the calls of operator/src/aws_iot are found (found {called:?})"),
    );
    for needed in called.difference(&granted) {
        f.expect(
            false,
            format!("IRSA: operator policy allows {needed}, which operator/src/aws_iot calls"),
        );
    }
    for extra in granted.difference(called) {
        f.expect(
            false,
            format!("IRSA: operator policy allows only what operator/src/aws_iot calls (found {extra})"),
        );
    }
    check_operator_scope(c, f);
}

/// Things, policies and certificates: the names the operator gives them
/// fall in the role's resources, and another namespace's do not.
fn check_operator_scope(c: &Config, f: &mut Findings) {
    use fleetward_operator::aws_iot::device::thing_name;
    use fleetward_operator::crd::Gateway;
    let device = thing_name("ns", "device");
    let gateway_policy = Gateway::aws_iot_policy_name("ns", "gw");
    let named = [
        ("iot_thing_arns", "a Device's thing", format!("thing/{device}")),
        ("iot_policy_arns", "a Device's policy", format!("policy/{device}")),
        (
            "iot_policy_arns",
            "the gateway workload's policy",
            format!("policy/{gateway_policy}"),
        ),
    ];
    for (local, what, resource) in named {
        let pattern = c.locals.get(local).and_then(|e| {
            let text = e.to_string();
            let per_namespace = text
                .strip_prefix("formatlist(")?
                .strip_suffix(", var.iot_namespaces)")?;
            iot_resource(per_namespace)
        });
        let allows = |ns: &str| {
            pattern
                .as_deref()
                .is_some_and(|p| glob(&p.replace("%s", ns), &resource))
        };
        f.expect(
            allows("ns") && !allows("nsx") && !allows("n"),
            format!(
                "IRSA: operator's {local} (per var.iot_namespaces) allows {what} {resource} of namespace ns only (found {pattern:?})"
            ),
        );
    }
    let certs: Vec<String> = match c.locals.get("iot_cert_arns") {
        Some(hcl::Expression::Array(items)) => items.iter().filter_map(|e| iot_resource(&e.to_string())).collect(),
        _ => Vec::new(),
    };
    f.expect(
        certs == ["cert/*", "cacert/*"],
        format!("IRSA: operator's iot_cert_arns are cert/* and cacert/* (found {certs:?})"),
    );
}

/// `"${local.iot_arn}:<resource>"` -> `<resource>`: an IoT ARN of this
/// account and region.
fn iot_resource(template: &str) -> Option<String> {
    let resource = template.strip_prefix("\"${local.iot_arn}:")?.strip_suffix('"')?;
    Some(resource.to_string())
}

/// IAM's ARN matching: `*` any run of characters, `?` any one.
fn glob(pattern: &str, name: &str) -> bool {
    match pattern.chars().next() {
        None => name.is_empty(),
        Some('*') => (0..=name.len())
            .filter(|&i| name.is_char_boundary(i))
            .any(|i| glob(&pattern[1..], &name[i..])),
        Some(p) => name
            .chars()
            .next()
            .is_some_and(|n| (p == '?' || p == n) && glob(&pattern[p.len_utf8()..], &name[n.len_utf8()..])),
    }
}

/// Persistent volumes: the EBS CSI driver addon, with a role of its own
/// trusted only for the driver's controller and holding AWS's driver
/// policy only.
fn check_ebs_csi(c: &Config, f: &mut Findings) {
    let addons: Vec<_> = c
        .resources("aws_eks_addon")
        .into_iter()
        .filter(|(_, a)| is(a, "addon_name", "aws-ebs-csi-driver"))
        .collect();
    f.expect(addons.len() == 1, "EBS CSI: the aws-ebs-csi-driver EKS addon exists");
    for (name, addon) in addons {
        let p = |s: &str| format!("EBS CSI addon {name}: {s}");
        f.expect(refers(addon, "cluster_name", "aws_eks_cluster."), p("on the cluster"));
        let role = text(addon, "service_account_role_arn");
        let role = role
            .strip_prefix("aws_iam_role.")
            .and_then(|r| r.strip_suffix(".arn"))
            .unwrap_or_default();
        f.expect(!role.is_empty(), p("has an IRSA role (service_account_role_arn)"));
        let trust = c
            .resource("aws_iam_role", role)
            .map(|r| text(r, "assume_role_policy"))
            .unwrap_or_default();
        f.expect(
            trust == "data.aws_iam_policy_document.ebs_csi_trust.json",
            p("its role uses the ebs_csi_trust policy"),
        );
        let subjects = web_identity_subjects(c, f, "ebs_csi_trust");
        f.expect(
            subjects == [EBS_CSI_SUBJECT],
            p(&format!(
                "EBS CSI role trusts sub {EBS_CSI_SUBJECT} only (found {subjects:?})"
            )),
        );
        let of_role = format!("aws_iam_role.{role}.");
        let managed: Vec<String> = c
            .resources("aws_iam_role_policy_attachment")
            .into_iter()
            .filter(|(_, a)| refers(a, "role", &of_role))
            .map(|(_, a)| text(a, "policy_arn"))
            .collect();
        f.expect(
            managed.len() == 1 && managed[0].ends_with(&format!("{EBS_CSI_POLICY}\"")),
            p(&format!(
                "its role holds AmazonEBSCSIDriverPolicy only (found {managed:?})"
            )),
        );
        f.expect(
            !c.resources("aws_iam_role_policy")
                .iter()
                .any(|(_, r)| refers(r, "role", &of_role)),
            p("its role has no inline policy"),
        );
    }
}

#[test]
fn iam_globs_match_as_iam_does() {
    assert!(glob("thing/ns_*", "thing/ns_device"));
    assert!(glob("policy/ns_*", "policy/ns_gw_gateway"));
    assert!(!glob("thing/ns_*", "thing/nsx_device"));
    assert!(glob("cert/*", "cert/0a1b"));
    assert!(glob("a?c", "abc") && !glob("a?c", "ac"));
}
