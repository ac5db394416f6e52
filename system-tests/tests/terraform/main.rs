//! terraform/ (the AWS path) parsed as HCL, and the security properties
//! fleetward promises of it checked on the parsed blocks:
//!
//! - RDS: storage encrypted with a KMS key, not publicly accessible, the
//!   master password managed by RDS in Secrets Manager (none in the
//!   configuration), TLS forced by its parameter group (`rds.force_ssl`),
//!   backups kept a week or more, deletion protection on by default, only
//!   the EKS nodes' security group admitted, on 5432;
//! - EKS: all five control-plane log types, Secrets encrypted with a KMS
//!   key, a private endpoint, nodes in the private subnets with IMDSv2; the
//!   EBS CSI driver addon (persistent volumes) with a role of its own,
//!   trusted only for the driver's controller, holding AWS's driver policy;
//! - IRSA: the operator's role trusted only for the chart's operator
//!   ServiceAccount (`sub`) and STS tokens (`aud`); its policy exactly the
//!   IoT actions operator/src/aws_iot calls (read from the code), no
//!   wildcard action, `*` as resource only for the account-level calls,
//!   things and policies only of the namespaces in var.iot_namespaces; no
//!   role for any other ServiceAccount (the gateway workload connects to
//!   IoT Core with its own certificate and needs none);
//! - ECR: scan on push, KMS, immutable tags, a repository for every image
//!   devenv/aws.sh pushes; IoT Core logging configured; every log group
//!   encrypted and kept at least a year; every KMS key rotated.
//!
//! Names that must agree with the rest of the repository are taken from
//! it: the chart's ServiceAccount, devenv/aws.sh's release, namespace and
//! images, the operator's IoT calls and the names it gives things and
//! policies.
//!
//! No provider and no AWS account: only what the text says. checkov
//! (devenv/terraform-check.sh) runs its generic policy checks; this test
//! pins fleetward's own promises and names the one that broke.
//! `each_check_can_fail` breaks properties in a copy of the files and
//! expects their findings, so a check that could no longer fail fails.

mod config;
mod irsa;

use hcl::Expression;

use config::{Config, Findings, Repo, attr, blocks, is, refers, terraform_files, text};
use irsa::check_irsa;

fn check(c: &Config, repo: &Repo) -> Findings {
    let mut f = Findings::default();
    check_rds(c, &mut f);
    check_eks(c, &mut f);
    check_irsa(c, repo, &mut f);
    check_ecr(c, repo, &mut f);
    check_logging(c, &mut f);
    f
}

fn check_rds(c: &Config, f: &mut Findings) {
    let dbs = c.resources("aws_db_instance");
    f.expect(dbs.len() == 1, "RDS: exactly one aws_db_instance");
    for (name, db) in dbs {
        let p = |s: &str| format!("RDS {name}: {s}");
        f.expect(is(db, "storage_encrypted", true), p("storage_encrypted = true"));
        f.expect(
            refers(db, "kms_key_id", "aws_kms_key."),
            p("storage encrypted with a customer-managed KMS key"),
        );
        f.expect(is(db, "publicly_accessible", false), p("publicly_accessible = false"));
        f.expect(
            is(db, "manage_master_user_password", true),
            p("manage_master_user_password = true"),
        );
        f.expect(attr(db, "password").is_none(), p("no password in the configuration"));
        f.expect(
            refers(db, "master_user_secret_kms_key_id", "aws_kms_key."),
            p("master user secret encrypted with a KMS key"),
        );
        f.expect(
            is(db, "engine", "postgres") && text(db, "engine_version").starts_with("\"16"),
            p("engine PostgreSQL 16"),
        );
        f.expect(
            is(db, "iam_database_authentication_enabled", true),
            p("IAM authentication enabled"),
        );
        f.expect(
            is(db, "performance_insights_enabled", true)
                && refers(db, "performance_insights_kms_key_id", "aws_kms_key."),
            p("Performance Insights encrypted with a KMS key"),
        );
        f.expect(
            c.number(attr(db, "backup_retention_period")).is_some_and(|d| d >= 7.0),
            p("backups kept 7 days or more"),
        );
        f.expect(
            attr(db, "deletion_protection").map(|e| c.value(e)) == Some(&Expression::Bool(true)),
            p("deletion protection on by default"),
        );
        let logs = c.strings(attr(db, "enabled_cloudwatch_logs_exports"));
        f.expect(
            ["postgresql", "upgrade"].iter().all(|l| logs.iter().any(|x| x == l)),
            p("postgresql and upgrade logs exported"),
        );
        f.expect(
            text(db, "db_subnet_group_name").starts_with("aws_db_subnet_group."),
            p("in its own subnet group"),
        );
        let groups = c.resources("aws_db_subnet_group");
        f.expect(
            groups
                .iter()
                .all(|(_, g)| refers(g, "subnet_ids", "aws_subnet.database")),
            p("subnet group of the database subnets"),
        );

        let group = text(db, "parameter_group_name");
        let group = group
            .strip_prefix("aws_db_parameter_group.")
            .and_then(|g| g.split('.').next())
            .unwrap_or("");
        let forced = c.resource("aws_db_parameter_group", group).is_some_and(|g| {
            blocks(g, "parameter")
                .any(|param| is(param.body(), "name", "rds.force_ssl") && is(param.body(), "value", "1"))
        });
        f.expect(forced, p("parameter group sets rds.force_ssl = 1"));

        // Who may connect: only rules naming the nodes' security group.
        f.expect(
            c.strings(attr(db, "vpc_security_group_ids")) == ["aws_security_group.db.id"],
            p("in security group aws_security_group.db only"),
        );
        let sg = c.resource("aws_security_group", "db");
        f.expect(
            sg.is_some_and(|sg| blocks(sg, "ingress").next().is_none()),
            p("security group without inline ingress"),
        );
        f.expect(
            c.resources("aws_security_group_rule").is_empty(),
            p("no aws_security_group_rule (rules are per-rule resources)"),
        );
        let node_sgs = c
            .resource("aws_launch_template", "node")
            .map(|t| text(t, "vpc_security_group_ids"))
            .unwrap_or_default();
        let ingress: Vec<_> = c
            .resources("aws_vpc_security_group_ingress_rule")
            .into_iter()
            .filter(|(_, r)| text(r, "security_group_id") == "aws_security_group.db.id")
            .collect();
        f.expect(!ingress.is_empty(), p("an ingress rule for the nodes"));
        for (rule_name, rule) in ingress {
            let source = text(rule, "referenced_security_group_id");
            let port = |k: &str| c.number(attr(rule, k)) == Some(5432.0);
            f.expect(
                port("from_port")
                    && port("to_port")
                    && is(rule, "ip_protocol", "tcp")
                    && !source.is_empty()
                    && node_sgs.contains(&source)
                    && ["cidr_ipv4", "cidr_ipv6", "prefix_list_id"]
                        .iter()
                        .all(|k| attr(rule, k).is_none()),
                p(&format!(
                    "ingress rule {rule_name} admits only tcp/5432 from the node security group"
                )),
            );
        }
    }
}

fn check_eks(c: &Config, f: &mut Findings) {
    let clusters = c.resources("aws_eks_cluster");
    f.expect(clusters.len() == 1, "EKS: exactly one aws_eks_cluster");
    for (name, cluster) in clusters {
        let p = |s: &str| format!("EKS {name}: {s}");
        let types = c.strings(attr(cluster, "enabled_cluster_log_types"));
        for t in ["api", "audit", "authenticator", "controllerManager", "scheduler"] {
            f.expect(
                types.iter().any(|x| x == t),
                p(&format!("enabled_cluster_log_types includes {t}")),
            );
        }
        let encrypted = blocks(cluster, "encryption_config").any(|e| {
            c.strings(attr(e.body(), "resources")) == ["secrets"]
                && blocks(e.body(), "provider").any(|k| refers(k.body(), "key_arn", "aws_kms_key."))
        });
        f.expect(encrypted, p("encryption_config: secrets with a KMS key"));
        let vpc = blocks(cluster, "vpc_config").next().map(|b| b.body());
        f.expect(
            vpc.is_some_and(|v| is(v, "endpoint_private_access", true)),
            p("private endpoint"),
        );
        f.expect(
            vpc.and_then(|v| attr(v, "endpoint_public_access")).map(|e| c.value(e)) == Some(&Expression::Bool(false)),
            p("public endpoint off by default"),
        );
    }
    f.expect(
        c.resources("aws_iam_openid_connect_provider").iter().any(|(_, o)| {
            refers(o, "url", "aws_eks_cluster.") && c.strings(attr(o, "client_id_list")) == ["sts.amazonaws.com"]
        }),
        "EKS: an OIDC provider of the cluster for sts.amazonaws.com (IRSA)",
    );

    let groups = c.resources("aws_eks_node_group");
    f.expect(!groups.is_empty(), "EKS: a managed node group");
    for (name, group) in groups {
        let p = |s: &str| format!("EKS node group {name}: {s}");
        f.expect(
            text(group, "subnet_ids") == "aws_subnet.private[*].id",
            p("node group subnets are the private ones"),
        );
        let template = blocks(group, "launch_template")
            .next()
            .map(|b| text(b.body(), "id"))
            .unwrap_or_default();
        let template = template
            .strip_prefix("aws_launch_template.")
            .and_then(|t| t.split('.').next())
            .unwrap_or("");
        let imds_v2 = c
            .resource("aws_launch_template", template)
            .is_some_and(|t| blocks(t, "metadata_options").any(|m| is(m.body(), "http_tokens", "required")));
        f.expect(imds_v2, p("launch template requires IMDSv2"));
    }
    // The private subnets: no public addresses, out through NAT only.
    f.expect(
        c.resource("aws_subnet", "private")
            .is_some_and(|s| is(s, "map_public_ip_on_launch", false)),
        "network: private subnets give no public IPs",
    );
    for (name, route) in c.resources("aws_route") {
        if text(route, "route_table_id").starts_with("aws_route_table.private") {
            f.expect(
                refers(route, "nat_gateway_id", "aws_nat_gateway.") && attr(route, "gateway_id").is_none(),
                format!("network: private route {name} goes out through NAT, not the internet gateway"),
            );
        }
    }
}

fn check_ecr(c: &Config, repo: &Repo, f: &mut Findings) {
    let repos = c.resources("aws_ecr_repository");
    f.expect(!repos.is_empty(), "ECR: repositories exist");
    for (name, r) in repos {
        let p = |s: &str| format!("ECR {name}: {s}");
        f.expect(
            blocks(r, "image_scanning_configuration").any(|b| is(b.body(), "scan_on_push", true)),
            p("scan_on_push = true"),
        );
        f.expect(
            blocks(r, "encryption_configuration")
                .any(|b| is(b.body(), "encryption_type", "KMS") && refers(b.body(), "kms_key", "aws_kms_key.")),
            p("encrypted with a KMS key"),
        );
        f.expect(is(r, "image_tag_mutability", "IMMUTABLE"), p("immutable tags"));
        f.expect(
            c.resources("aws_ecr_lifecycle_policy")
                .iter()
                .any(|(_, l)| text(l, "for_each") == format!("aws_ecr_repository.{name}")),
            p("a lifecycle policy"),
        );
    }
    let images = c.strings(c.variable_default("images"));
    for image in &repo.images {
        f.expect(
            images.contains(image),
            format!("ECR: a repository for {image}, which devenv/aws.sh pushes"),
        );
    }
}

fn check_logging(c: &Config, f: &mut Findings) {
    let iot = c.resources("aws_iot_logging_options");
    f.expect(iot.len() == 1, "IoT Core: aws_iot_logging_options exists");
    for (_, options) in iot {
        f.expect(
            refers(options, "role_arn", "aws_iam_role."),
            "IoT Core: logging has a role",
        );
        f.expect(
            c.render(attr(options, "default_log_level").unwrap_or(&Expression::Null))
                .as_deref()
                == Some("WARN"),
            "IoT Core: default log level WARN",
        );
    }
    f.expect(
        c.resources("aws_cloudwatch_log_group")
            .iter()
            .any(|(_, g)| is(g, "name", "AWSIotLogsV2")),
        "IoT Core: its log group AWSIotLogsV2 is managed here",
    );
    for (name, group) in c.resources("aws_cloudwatch_log_group") {
        f.expect(
            refers(group, "kms_key_id", "aws_kms_key."),
            format!("logs {name}: encrypted with a KMS key"),
        );
        f.expect(
            c.number(attr(group, "retention_in_days")).is_some_and(|d| d >= 365.0),
            format!("logs {name}: kept at least 365 days"),
        );
    }
    for (name, key) in c.resources("aws_kms_key") {
        f.expect(
            is(key, "enable_key_rotation", true),
            format!("KMS {name}: rotation enabled"),
        );
    }
}

#[test]
fn terraform_keeps_its_security_properties() {
    let findings = check(&Config::parse(&terraform_files()), &Repo::read());
    assert!(
        findings.0.is_empty(),
        "terraform/ breaks {} properties:\n  {}",
        findings.0.len(),
        findings.0.join("\n  ")
    );
}

/// Each (file, text, replacement, expected finding): the property broken in
/// a copy of the files must be reported.
const MUTATIONS: [(&str, &str, &str, &str); 20] = [
    (
        "rds.tf",
        "publicly_accessible    = false",
        "publicly_accessible    = true",
        "publicly_accessible = false",
    ),
    (
        "rds.tf",
        "storage_encrypted     = true",
        "storage_encrypted     = false",
        "storage_encrypted = true",
    ),
    (
        "rds.tf",
        "manage_master_user_password   = true",
        "manage_master_user_password   = false",
        "manage_master_user_password",
    ),
    (
        "rds.tf",
        "name  = \"rds.force_ssl\"\n    value = \"1\"",
        "name  = \"rds.force_ssl\"\n    value = \"0\"",
        "rds.force_ssl = 1",
    ),
    ("eks.tf", "\"audit\", ", "", "enabled_cluster_log_types includes audit"),
    (
        "eks.tf",
        "encryption_config {",
        "encryption_disabled {",
        "encryption_config",
    ),
    (
        "eks.tf",
        "subnet_ids      = aws_subnet.private[*].id",
        "subnet_ids      = aws_subnet.public[*].id",
        "node group subnets are the private ones",
    ),
    (
        "irsa.tf",
        "\"iot:GetPolicy\",",
        "\"iot:*\",",
        "only iot: actions, no wildcard",
    ),
    (
        "irsa.tf",
        "      \"iot:ListTargetsForPolicy\",\n",
        "",
        "operator policy allows iot:ListTargetsForPolicy, which operator/src/aws_iot calls",
    ),
    (
        "irsa.tf",
        "\"iot:GetPolicy\",",
        "\"iot:GetPolicy\", \"iot:ListPrincipalThings\",",
        "allows only what operator/src/aws_iot calls (found iot:ListPrincipalThings)",
    ),
    (
        "irsa.tf",
        ":policy/%s_*",
        ":policy/%s_*_device",
        "allows the gateway workload's policy",
    ),
    ("irsa.tf", ":thing/%s_*", ":thing/*", "allows a Device's thing"),
    (
        "irsa.tf",
        "variable = \"${local.oidc_issuer}:aud\"",
        "variable = \"${local.oidc_issuer}:azp\"",
        "aud StringEquals",
    ),
    (
        "variables.tf",
        "default     = \"fleetward-operator\"",
        "default     = \"default\"",
        "operator role trusts sub",
    ),
    (
        "storage.tf",
        "addon_name                  = \"aws-ebs-csi-driver\"",
        "addon_name                  = \"vpc-cni\"",
        "the aws-ebs-csi-driver EKS addon exists",
    ),
    (
        "storage.tf",
        "kube-system:ebs-csi-controller-sa",
        "kube-system:default",
        "EBS CSI role trusts sub",
    ),
    (
        "storage.tf",
        "policy/service-role/AmazonEBSCSIDriverPolicy",
        "policy/AdministratorAccess",
        "holds AmazonEBSCSIDriverPolicy only",
    ),
    (
        "storage.tf",
        "data \"aws_iam_policy_document\" \"ebs_csi_trust\"",
        "data \"aws_iam_policy_document\" \"gateway_trust\"",
        "no web-identity role but the operator's and the EBS CSI driver's (found gateway_trust",
    ),
    (
        "ecr.tf",
        "scan_on_push = true",
        "scan_on_push = false",
        "scan_on_push = true",
    ),
    (
        "iot.tf",
        "resource \"aws_iot_logging_options\"",
        "resource \"aws_iot_thing\"",
        "aws_iot_logging_options exists",
    ),
];

#[test]
fn each_check_can_fail() {
    let files = terraform_files();
    let repo = Repo::read();
    for (file, from, to, expected) in MUTATIONS {
        let mutated: Vec<(String, String)> = files
            .iter()
            .map(|(name, text)| {
                if name != file {
                    return (name.clone(), text.clone());
                }
                assert!(
                    text.contains(from),
                    "terraform/{file} no longer contains {from:?}: update MUTATIONS"
                );
                (name.clone(), text.replacen(from, to, 1))
            })
            .collect();
        let findings = check(&Config::parse(&mutated), &repo);
        assert!(
            findings.0.iter().any(|f| f.contains(expected)),
            "{file}: {from:?} -> {to:?} was not reported as {expected:?}; findings: {findings:?}"
        );
    }
}
