//! What aws-up puts into the cluster, as its plan says: the default
//! StorageClass, and the chart rendered with the plan's values.

use std::process::Command;

use serde::Deserialize;

use fleetward_system_tests::{helm_bin, repo_root};

use super::trace::words;
use super::{ECR, REGION};

/// The plan's StorageClass: the cluster's default, gp3 volumes of the EBS
/// CSI driver (terraform/storage.tf), encrypted. No kmsKeyId: terraform/
/// keeps no EBS key of its own, so the account's EBS key, as for the nodes.
pub fn storage_class_is_the_encrypted_gp3_default(command: &str) {
    let args = words(command);
    assert_eq!(
        args[3..],
        [
            "|",
            "kubectl",
            "apply",
            "--server-side",
            "--field-manager=fleetward-deploy",
            "-f",
            "-"
        ],
        "{command}"
    );
    let class: serde_yaml::Value = serde_yaml::from_str(&args[2]).expect("the manifest is YAML");
    let field = |path: &[&str]| {
        path.iter().try_fold(&class, |v, k| v.get(k)).and_then(|v| {
            v.as_str()
                .map(str::to_owned)
                .or_else(|| v.as_bool().map(|b| b.to_string()))
        })
    };
    for (path, want) in [
        (&["kind"][..], "StorageClass"),
        (
            &["metadata", "annotations", "storageclass.kubernetes.io/is-default-class"],
            "true",
        ),
        (&["provisioner"], "ebs.csi.aws.com"),
        (&["parameters", "type"], "gp3"),
        (&["parameters", "encrypted"], "true"),
        (&["volumeBindingMode"], "WaitForFirstConsumer"),
        (&["reclaimPolicy"], "Delete"),
    ] {
        assert_eq!(field(path).as_deref(), Some(want), "{path:?} in {command}");
    }
    let parameters = class
        .get("parameters")
        .and_then(|p| p.as_mapping())
        .map_or(0, |p| p.len());
    assert_eq!(parameters, 2, "type and encrypted only: {command}");
    // Strings where Kubernetes wants strings (parameters and annotations).
    assert!(
        command.contains(r#"encrypted: "true""#) && command.contains(r#"is-default-class: "true""#),
        "{command}"
    );
}

/// `helm template` with the plan's `helm upgrade --install` arguments,
/// terraform's outputs filled in.
/// RDS's host in the plan (terraform output db_endpoint).
const RDS_HOST: &str = "fleetward.c1example.eu-west-1.rds.amazonaws.com";

pub fn chart_accepts_the_plans_values(helm_line: &str) {
    let helm = helm_bin();
    assert!(
        helm.exists(),
        "{} is missing: `./deploy.sh dev-up` (or devenv/dev.sh up --no-stack) builds it",
        helm.display()
    );
    let ecr = ECR;
    let role = "arn:aws:iam::123456789012:role/fleetward-operator";
    let args: Vec<String> = words(helm_line)
        .into_iter()
        .skip(3) // helm upgrade --install
        .map(|w| {
            // No git on the plan's PATH: the tag's commit is a placeholder too.
            let mut w = w
                .replace("<operator_role_arn>", role)
                .replace("<commit>", "0123456789ab")
                .replace("<db_endpoint>", RDS_HOST)
                .replace("<db_port>", "5432")
                .replace("<db_name>", "fleetward");
            for image in ["operator", "gateway", "ingestor", "encryptor", "billing", "mosquitto"] {
                w = w.replace(&format!("<ecr_repository_urls.{image}>"), &format!("{ecr}/{image}"));
            }
            assert!(!w.contains('<'), "an output left unfilled: {w}");
            w
        })
        .collect();
    let out = Command::new(&helm)
        .arg("template")
        .args(&args)
        .current_dir(repo_root())
        .output()
        .expect("helm runs");
    let rendered = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "helm template {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        rendered.contains(&format!("eks.amazonaws.com/role-arn: {role}")),
        "IRSA annotation:\n{rendered}"
    );
    assert!(
        rendered.contains(&format!("- name: AWS_REGION\n              value: \"{REGION}\"")),
        "the operator's AWS_REGION"
    );
    for image in ["operator", "gateway", "ingestor", "encryptor", "billing", "mosquitto"] {
        assert!(rendered.contains(&format!("\"{ecr}/{image}:")), "{image} from ECR");
    }
    assert!(
        !rendered.contains("ghcr.io/fleetward/operator"),
        "no default operator image"
    );
    assert!(
        !rendered.contains("name: fleetward-postgresql"),
        "no in-cluster PostgreSQL"
    );
    let secrets: Vec<String> = serde_yaml::Deserializer::from_str(&rendered)
        .filter_map(|doc| serde_yaml::Value::deserialize(doc).ok())
        .filter(|doc| doc["kind"] == "Secret")
        .filter_map(|doc| doc["metadata"]["name"].as_str().map(String::from))
        .collect();
    assert!(
        !secrets.iter().any(|s| s == "fleetward-database"),
        "the database Secret is aws-up's, not the chart's: {secrets:?}"
    );
    // Each workload reaches RDS as its own role, over TLS; the roles are
    // made by the chart's Job as the admin, with aws-up's Secret.
    for workload in ["gateway", "encryptor", "billing"] {
        let url = format!("postgres://fleetward_{workload}_app:");
        let at = format!("@{RDS_HOST}:5432/fleetward?sslmode=require");
        assert!(
            rendered.lines().any(|l| l.contains(&url) && l.contains(&at)),
            "{workload}'s database URL"
        );
    }
    assert!(
        rendered.contains("name: fleetward-database-roles")
            && rendered.contains("{name: fleetward-database, key: url}"),
        "the roles Job, as the admin"
    );
    // Kafka keeps its log on a claim of the default StorageClass (no
    // storageClassName: aws-up's gp3).
    let kafka = serde_yaml::Deserializer::from_str(&rendered)
        .filter_map(|doc| serde_yaml::Value::deserialize(doc).ok())
        .find(|doc| doc["kind"] == "StatefulSet" && doc["metadata"]["name"] == "fleetward-kafka")
        .expect("Kafka's StatefulSet");
    let claims = kafka["spec"]["volumeClaimTemplates"]
        .as_sequence()
        .cloned()
        .unwrap_or_default();
    assert!(
        claims.len() == 1 && claims[0]["spec"].get("storageClassName").is_none(),
        "Kafka's volume claim, of the default StorageClass: {claims:?}"
    );
}
