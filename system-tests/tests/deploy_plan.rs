//! `./deploy.sh aws-up --plan` and `aws-down --plan` (devenv/aws.sh): the
//! steps of a real run, in their order, for the region given, and nothing
//! run or written.
//!
//! Each plan runs twice with nothing but bash from the machine:
//! - with an empty tool directory as the PATH: the plan needs no tool, and
//!   names what a real run would miss;
//! - with trip-wires named aws, terraform, tofu, helm, kubectl, docker,
//!   buildah and jq first on the PATH, each recording its invocation: a
//!   plan that ran any of them fails.
//!
//! Both run with a fresh HOME and state directory, which must stay empty
//! (no kubeconfig, no registry login, no .dev/aws), and terraform/ must be
//! as it was (no .terraform, no state). The chart renders with exactly the
//! values the plan's `helm upgrade --install` passes, outputs filled in,
//! and they do what aws-up needs: the operator's IRSA role and AWS_REGION,
//! every image from ECR, no in-cluster PostgreSQL, Kafka on a volume claim
//! of the default StorageClass, which aws-up makes first (encrypted gp3 on
//! the EBS CSI driver).
//!
//! Then real runs against stand-ins for aws, terraform, docker, kubectl and
//! helm that answer as those would (outputs, a Secrets Manager secret, an
//! endpoint) and record their arguments: a real run prints the plan's
//! commands, values filled in, and runs exactly those; the database
//! password reaches kubectl on stdin only, never an argument or the output.

#[path = "deploy_plan/cluster.rs"]
mod cluster;
#[path = "deploy_plan/sandbox.rs"]
mod sandbox;
#[path = "deploy_plan/trace.rs"]
mod trace;

use cluster::{chart_accepts_the_plans_values, storage_class_is_the_encrypted_gp3_default};
use sandbox::{Sandbox, Tools};
use trace::{commands, fills, position, trace, words};

const REGION: &str = "eu-central-1";
const IMAGES: [&str; 6] = ["operator", "gateway", "ingestor", "encryptor", "billing", "mosquitto"];
const PASSWORD: &str = "S3cr:t@/#pw";
const ECR: &str = "123456789012.dkr.ecr.eu-central-1.amazonaws.com/fleetward";
/// The plan's StorageClass command: its manifest on one line, piped to kubectl.
const STORAGE_CLASS: &str = "printf '%s\\n' '{apiVersion: storage.k8s.io/v1, kind: StorageClass";

#[test]
fn aws_up_plan_lists_every_step_in_order_and_runs_nothing() {
    for tools in [Tools::None, Tools::TripWires] {
        let sandbox = Sandbox::new(tools);
        // --plan anywhere in the arguments.
        let plan = sandbox.plan(&["aws-up", REGION, "--plan"]);
        assert_eq!(plan, sandbox.plan(&["--plan", "aws-up", REGION]), "same plan");
        if tools == Tools::None {
            for tool in [
                "aws (AWS CLI)",
                "terraform or tofu",
                "helm",
                "kubectl",
                "docker or buildah",
            ] {
                assert!(
                    plan.lines().any(|l| l.contains(tool) && l.contains("MISSING: install")),
                    "the plan names the missing {tool} and what to install:\n{plan}"
                );
            }
        }
        let cmds = commands(&plan);
        let identity = position(&cmds, "aws sts get-caller-identity");
        let init = position(&cmds, "terraform -chdir=terraform init");
        let apply = position(&cmds, "terraform -chdir=terraform apply");
        let outputs = position(&cmds, "terraform -chdir=terraform output -json");
        let login = position(&cmds, "aws ecr get-login-password");
        let build = position(&cmds, "docker build");
        let push = position(&cmds, "docker push");
        let kubeconfig = position(&cmds, "aws eks update-kubeconfig");
        let storage = position(&cmds, STORAGE_CLASS);
        let secret = position(&cmds, "aws secretsmanager get-secret-value");
        let helm = position(&cmds, "helm upgrade --install");
        let endpoint = position(&cmds, "aws iot describe-endpoint");
        let order = [
            identity, init, apply, outputs, login, build, push, kubeconfig, storage, secret, helm, endpoint,
        ];
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "steps out of order {order:?}:\n{plan}"
        );
        // Five images, each built then pushed, all before the chart.
        for image in ["operator", "gateway", "ingestor", "encryptor", "billing", "mosquitto"] {
            let tag = format!("<ecr_repository_urls.{image}>:");
            let b = cmds
                .iter()
                .position(|c| c.starts_with("docker build") && c.contains(&tag))
                .unwrap_or_else(|| panic!("{image} is built:\n{plan}"));
            let p = cmds
                .iter()
                .position(|c| c.starts_with("docker push") && c.contains(&tag))
                .unwrap_or_else(|| panic!("{image} is pushed:\n{plan}"));
            assert!(apply < b && b < p && p < helm, "{image}: apply, build, push, helm");
        }

        // The region given, everywhere one is named; never the default.
        assert!(
            cmds[apply].ends_with(&format!("-var region={REGION} -var operator_namespace=fleetward")),
            "{}",
            cmds[apply]
        );
        for i in [login, kubeconfig, secret, endpoint] {
            assert!(cmds[i].contains(&format!("--region {REGION}")), "{}", cmds[i]);
        }
        assert!(
            cmds[helm].contains(&format!("operator.aws.region={REGION}")),
            "{}",
            cmds[helm]
        );
        assert!(!plan.contains("eu-west-1"), "the default region appears:\n{plan}");

        // The database URL flows aws → jq → kubectl on stdin, with TLS.
        let db = cmds[secret];
        assert!(db.contains("sslmode=require"), "{db}");
        assert!(db.contains("--arg name fleetward-database --arg ns fleetward"), "{db}");
        assert!(
            db.ends_with("| kubectl apply --server-side --field-manager=fleetward-deploy -f -"),
            "{db}"
        );
        assert!(
            plan.contains("mosquitto_pub -h <iot data endpoint> -p 8883"),
            "how to try a device:\n{plan}"
        );
        assert!(plan.contains("provider: awsIot"), "{plan}");
        storage_class_is_the_encrypted_gp3_default(cmds[storage]);
        assert!(
            !cmds[helm].contains("persistence.enabled=false"),
            "every volume claim is kept: {}",
            cmds[helm]
        );
        // The gateways have no IAM role: their own certificate and IoT policy.
        assert!(!plan.contains("gateway_role"), "{plan}");
        assert!(plan.contains("gateways        no IAM role"), "{plan}");

        if tools == Tools::TripWires {
            chart_accepts_the_plans_values(cmds[helm]);
        }
    }
}

#[test]
fn aws_down_plan_empties_the_cluster_before_terraform_destroy() {
    for tools in [Tools::None, Tools::TripWires] {
        let sandbox = Sandbox::new(tools);
        let plan = sandbox.plan(&["aws-down", REGION, "--plan", "--yes"]);
        let cmds = commands(&plan);
        let outputs = position(&cmds, "terraform -chdir=terraform output -json");
        let kubeconfig = position(&cmds, "aws eks update-kubeconfig");
        let devices = position(
            &cmds,
            "kubectl delete devices.fleetward.io --all --all-namespaces --wait=true",
        );
        let gateways = position(&cmds, "kubectl delete gateways.fleetward.io");
        let uninstall = position(&cmds, "helm uninstall fleetward");
        let namespace = position(&cmds, "kubectl delete namespace fleetward");
        // The claims' EBS volumes go while the driver still runs.
        let volumes = position(&cmds, "kubectl wait --for=delete persistentvolumes --all");
        let images = position(&cmds, "aws ecr batch-delete-image");
        let protection = position(&cmds, "terraform -chdir=terraform apply");
        let destroy = position(&cmds, "terraform -chdir=terraform destroy");
        let order = [
            outputs, kubeconfig, devices, gateways, uninstall, namespace, volumes, images, protection, destroy,
        ];
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "steps out of order {order:?}:\n{plan}"
        );
        // RDS's deletion protection is lifted first, on the database alone,
        // or destroy fails.
        let vars = format!("-var region={REGION} -var operator_namespace=fleetward -var deletion_protection=false");
        assert_eq!(
            cmds[protection],
            format!("terraform -chdir=terraform apply -input=false -auto-approve -target=aws_db_instance.this {vars}")
        );
        assert_eq!(
            cmds[destroy],
            format!("terraform -chdir=terraform destroy -input=false -auto-approve {vars}")
        );
        assert!(
            cmds[kubeconfig].contains(&format!("--region {REGION}")),
            "{}",
            cmds[kubeconfig]
        );
        assert!(!plan.contains("eu-west-1"), "the default region appears:\n{plan}");
        assert!(
            !cmds
                .iter()
                .any(|c| c.starts_with("docker") || c.starts_with("helm upgrade")),
            "aws-down builds or installs nothing:\n{plan}"
        );
    }
}

#[test]
fn plan_refuses_what_it_cannot_do() {
    let sandbox = Sandbox::new(Tools::TripWires);
    for args in [
        vec!["aws-up", "not-a-region", "--plan"],
        vec!["aws-up", REGION, "--plan", "--force"],
        vec!["local-up", "--plan"],
    ] {
        let (ok, _, stderr) = sandbox.deploy(&args);
        assert!(!ok, "{args:?} was accepted");
        assert!(!stderr.is_empty(), "{args:?}: says why");
    }
    assert!(sandbox.calls().is_empty(), "a refused plan ran tools");
}

#[test]
fn aws_up_runs_exactly_what_its_plan_prints() {
    let sandbox = Sandbox::new(Tools::Stubs);
    // The stand-ins on the PATH change nothing in the plan (nor get run).
    let plan = sandbox.plan(&["aws-up", REGION, "--plan", "--yes"]);
    let (ok, stdout, stderr) = sandbox.deploy(&["aws-up", REGION, "--yes"]);
    assert!(ok, "aws-up failed:\n{stdout}{stderr}");

    let (planned, done) = (trace(&plan), trace(&stderr));
    assert_eq!(planned.len(), done.len(), "plan:\n{plan}\nrun:\n{stderr}");
    for (p, d) in planned.iter().zip(&done) {
        assert!(
            fills(p, d),
            "the run's command is not the plan's:\nplan: {p}\nrun:  {d}"
        );
    }
    assert!(stderr.contains(&format!(" -var region={REGION}")), "{stderr}");

    // What ran is what the trace says, every stage of every pipeline (jq,
    // mkdir and rm are the machine's own; `docker info` is the prerequisite
    // check). A pipeline's stages start together, in no set order.
    let stubbed = ["aws", "terraform", "docker", "kubectl", "helm"];
    let mut ran = sandbox.calls().into_iter().filter(|c| c.join(" ") != "docker info");
    for line in &done {
        let words = words(&line[2..]);
        let mut stages: Vec<Vec<String>> = words
            .split(|w| w == "|")
            .filter(|stage| stubbed.contains(&stage[0].as_str()))
            .map(<[String]>::to_vec)
            .collect();
        let mut calls: Vec<Vec<String>> = ran.by_ref().take(stages.len()).collect();
        stages.sort();
        calls.sort();
        assert_eq!(stages, calls, "ran otherwise than traced: {line}");
    }
    assert_eq!(ran.next(), None, "ran more than traced");

    // The password: on stdin from aws to jq to kubectl, URL-encoded in the
    // Secret, with TLS required; never an argument, never printed.
    let applied = std::fs::read_to_string(sandbox.dir.join("applied")).unwrap();
    let url = format!(
        "postgres://fleetward:S3cr%3At%40%2F%23pw@fleetward-postgres.c0.{REGION}.rds.amazonaws.com:5432/fleetward?sslmode=require"
    );
    assert!(
        applied.contains(r#""name":"fleetward-database","namespace":"fleetward""#),
        "{applied}"
    );
    assert!(applied.contains(&format!(r#""url":"{url}""#)), "{applied}");
    assert!(
        applied.contains("kind: StorageClass") && applied.contains("provisioner: ebs.csi.aws.com"),
        "the StorageClass reaches kubectl:\n{applied}"
    );
    for call in sandbox.calls() {
        assert!(
            !call.iter().any(|a| a.contains("S3cr")),
            "the password in the arguments of {call:?}"
        );
    }
    assert!(
        !format!("{stdout}{stderr}").contains("S3cr"),
        "the password was printed"
    );
    assert!(
        !format!("{stdout}{stderr}").contains("ecr-login-token"),
        "the registry token was printed"
    );
    let login = std::fs::read_to_string(sandbox.dir.join("login-stdin")).unwrap();
    assert_eq!(
        login.trim(),
        "ecr-login-token",
        "the registry login reads its token on stdin"
    );

    // The images it pushed are the ones the chart gets, with the role and region.
    let helm = sandbox.calls().into_iter().find(|c| c[0] == "helm").expect("helm ran");
    let pushed: Vec<String> = sandbox
        .calls()
        .into_iter()
        .filter(|c| c[0] == "docker" && c[1] == "push")
        .map(|c| c[2].clone())
        .collect();
    assert_eq!(pushed.len(), IMAGES.len());
    for (image, reference) in IMAGES.iter().zip(&pushed) {
        assert!(reference.starts_with(&format!("{ECR}/{image}:0.1.0-")), "{reference}");
        assert!(
            helm.contains(&format!("images.overrides.{image}={reference}")),
            "{helm:?}"
        );
    }
    for value in [
        "operator.serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::123456789012:role/fleetward-operator",
        &format!("operator.aws.region={REGION}"),
    ] {
        assert!(helm.iter().any(|a| a == value), "helm gets {value}: {helm:?}");
    }
    assert!(
        stderr.contains("a1b2c3-ats.iot.eu-central-1.amazonaws.com:8883"),
        "the IoT endpoint:\n{stderr}"
    );
}

#[test]
fn aws_down_runs_the_fleet_then_the_release_then_the_registries_then_terraform_down() {
    let sandbox = Sandbox::new(Tools::Stubs);
    sandbox.deployed(&["aws_db_instance.this", "aws_eks_cluster.this"]);
    sandbox.real(&["aws-down", REGION, "--yes"]);
    let calls: Vec<String> = sandbox.calls().iter().map(|c| c.join(" ")).collect();
    let at = |prefix: &str| {
        calls
            .iter()
            .position(|c| c.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}…` ran:\n{}", calls.join("\n")))
    };
    let order = [
        at("aws eks update-kubeconfig"),
        at("kubectl delete devices.fleetward.io"),
        at("kubectl delete gateways.fleetward.io"),
        at("helm uninstall fleetward"),
        at("kubectl delete namespace fleetward"),
        at("kubectl wait --for=delete persistentvolumes --all"),
        at("aws ecr batch-delete-image"),
        at("terraform -chdir=terraform apply -input=false -auto-approve -target=aws_db_instance.this"),
        at("terraform -chdir=terraform destroy -input=false -auto-approve"),
    ];
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "{order:?}:\n{}",
        calls.join("\n")
    );
    // Each repository listed until empty, its image deleted once.
    for image in IMAGES {
        let repo = format!("--repository-name fleetward/{image}");
        let listed = calls
            .iter()
            .filter(|c| c.starts_with("aws ecr list-images") && c.contains(&repo))
            .count();
        let deleted: Vec<_> = calls
            .iter()
            .filter(|c| c.starts_with("aws ecr batch-delete-image") && c.contains(&repo))
            .collect();
        assert_eq!(listed, 2, "{image}");
        assert_eq!(deleted.len(), 1, "{image}");
        assert!(
            deleted[0].contains(r#"--image-ids [{"imageDigest": "sha256:0a"}]"#),
            "{}",
            deleted[0]
        );
    }
    for terraform in [&calls[order[7]], &calls[order[8]]] {
        assert!(
            terraform.ends_with(&format!(
                "-var region={REGION} -var operator_namespace=fleetward -var deletion_protection=false"
            )),
            "{terraform}"
        );
    }
}

#[test]
fn aws_down_with_nothing_deployed_changes_nothing() {
    let sandbox = Sandbox::new(Tools::Stubs);
    let trace = sandbox.real(&["aws-down", REGION, "--yes"]);
    assert!(trace.contains("nothing to remove"), "{trace}");
    let calls: Vec<String> = sandbox.calls().iter().map(|c| c.join(" ")).collect();
    assert_eq!(
        calls.last().map(String::as_str),
        Some("terraform -chdir=terraform show -json"),
        "ran after finding an empty state:\n{}",
        calls.join("\n")
    );
}
