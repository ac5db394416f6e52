//! The Helm chart renders, the API server accepts what it renders, and its
//! RBAC is enough: an operator running with only the chart's ServiceAccount
//! rights (via impersonation) makes a Gateway, a Device and a StationFeed
//! Ready, and deploys a Tariff's billing workload (whose Role it can grant
//! only if it holds those rights itself). (The whole chart installed on the node, with pods, is the
//! end-to-end test in system-tests/.)

mod common;

use std::process::{Command, Stdio};

use common::*;
use fleetward_operator::crd::{Device, Gateway, StationFeed, Tariff};
use k8s_openapi::api::rbac::v1::Role;

fn helm() -> String {
    let cached = repo_root().join(".cache/bin/helm");
    if cached.exists() {
        cached.to_string_lossy().into_owned()
    } else {
        "helm".into()
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kubectl_apply(manifest: &str, extra: &[&str]) -> String {
    let mut child = Command::new(kubectl())
        .args(["apply", "-f", "-"])
        .args(extra)
        .env("KUBECONFIG", env("KUBECONFIG"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(manifest.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A release name of the test namespace's own: cluster-scoped objects of
/// two tests' releases do not collide.
fn release_of(ns: &TestNs) -> String {
    format!("fw{}", &ns.name[ns.name.len() - 4..])
}

/// One template of the chart, rendered for `release` in `ns`.
fn show_only(chart: &std::path::Path, release: &str, ns: &TestNs, template: &str) -> String {
    run(Command::new(helm()).args(["template", release]).arg(chart).args([
        "--namespace",
        &ns.name,
        "--show-only",
        template,
    ]))
}

/// Removes cluster-scoped objects a test made (`kind` may list several,
/// comma-separated); its outcome is not checked.
fn kubectl_delete(kind: &str, names: &[String]) {
    let _ = Command::new(kubectl())
        .args(["delete", kind])
        .args(names)
        .env("KUBECONFIG", env("KUBECONFIG"))
        .output();
}

#[tokio::test]
async fn chart_installs_and_its_rbac_suffices_for_the_operator() {
    install_crds();
    let chart = repo_root().join("helm/fleetward");
    run(Command::new(helm()).arg("lint").arg(&chart));

    let ns = TestNs::new("fw-helm").await;
    let release = release_of(&ns);
    let rendered = run(Command::new(helm()).args(["template", &release]).arg(&chart).args([
        "--namespace",
        &ns.name,
        "--include-crds",
    ]));
    for kind in [
        "CustomResourceDefinition",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "ServiceAccount",
        "Deployment",
        "StatefulSet",
        "Service",
        "Secret",
        "ConfigMap",
    ] {
        assert!(rendered.contains(&format!("kind: {kind}")), "chart renders a {kind}");
    }
    // The API server validates every rendered object.
    kubectl_apply(&rendered, &["--dry-run=server"]);

    // Install only the RBAC objects for real, then run the operator (on
    // the host, from this build) as that ServiceAccount.
    let rbac = show_only(&chart, &release, &ns, "templates/operator-rbac.yaml");
    kubectl_apply(&rbac, &[]);
    let sa = format!("system:serviceaccount:{}:{release}-operator", ns.name);
    let kubeconfig = std::fs::read_to_string(env("KUBECONFIG")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let impersonating = kubeconfig.replace("  user:\n", &format!("  user:\n    as: {sa}\n"));
    assert_ne!(impersonating, kubeconfig, "kubeconfig user section found");
    let kc_path = write(dir.path(), "kubeconfig", &impersonating);
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetward-operator"));
    // With leader election, as the chart runs it: the Lease in the release
    // namespace must be within the chart's Role.
    cmd.args([
        "--http-addr",
        &format!("127.0.0.1:{port}"),
        "--exit-on-stdin-eof",
        "--leader-election",
        "--pod-namespace",
        &ns.name,
        "--pod-name",
        "helm-chart-test",
    ])
    .env("KUBECONFIG", &kc_path);
    // Exits (and the test fails with its log) if the chart's RBAC does not
    // let it start.
    let mut op = Workload::spawn(
        cmd,
        format!("http://127.0.0.1:{port}"),
        dir.path().join("operator.log"),
        "/health",
        30,
    );

    ns.apply_yaml(GATEWAY_YAML).await;
    ns.apply_yaml(&device_yaml("d1", "gw", "")).await;
    let gws = ns.api::<Gateway>();
    let devs = ns.api::<Device>();
    wait_for(
        "Gateway Ready under chart RBAC",
        60,
        || get_opt(&gws, "gw"),
        gateway_ready,
    )
    .await;
    wait_for(
        "Device Ready under chart RBAC",
        60,
        || get_opt(&devs, "d1"),
        device_ready,
    )
    .await;
    // The StationFeed controller too: keyring Secret, Deployments, status.
    ns.apply_yaml(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: jcdecaux}\nstringData: {apiKey: k}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {name: stations-db}\nstringData: {url: postgres://x}\n---\n\
         apiVersion: fleetward.io/v1alpha1\nkind: StationFeed\nmetadata: {name: f1}\nspec:\n  source:\n    \
         jcdecaux: {contract: Dublin, apiKeySecretRef: {name: jcdecaux, key: apiKey}}\n  kafka: {topic: t}\n  \
         postgres: {connectionSecretRef: {name: stations-db, key: url}}\n",
    )
    .await;
    let feeds = ns.api::<StationFeed>();
    let feed_ready = |f: &StationFeed| {
        f.status
            .as_ref()
            .and_then(|s| ready_reason(&s.conditions))
            .is_some_and(|(s, _)| s == "True")
    };
    wait_for(
        "StationFeed Ready under chart RBAC",
        60,
        || get_opt(&feeds, "f1"),
        feed_ready,
    )
    .await;
    // The Tariff controller: API key Secret, the workload's Role (granting
    // Device reads and its Tariff's status), Service, Deployment, status.
    // The test namespace runs no pods, so it settles on Deploying.
    ns.apply_yaml(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: billing-db}\nstringData: {url: postgres://x}\n---\n\
         apiVersion: fleetward.io/v1alpha1\nkind: Gateway\nmetadata: {name: meters}\nspec: {kafka: {topic: m}}\n---\n\
         apiVersion: fleetward.io/v1alpha1\nkind: Tariff\nmetadata: {name: t1}\nspec:\n  propertyType: residential\n  \
         currency: EUR\n  gateway: meters\n  slabs: [{pricePerUnit: \"0.1\"}]\n  \
         database: {connectionSecretRef: {name: billing-db, key: url}}\n",
    )
    .await;
    let tariffs = ns.api::<Tariff>();
    wait_for(
        "Tariff deployed under chart RBAC",
        60,
        || get_opt(&tariffs, "t1"),
        |t| {
            t.status
                .as_ref()
                .and_then(|s| ready_reason(&s.conditions))
                .is_some_and(|(_, r)| r == "Deploying")
        },
    )
    .await;
    assert!(get_opt(&ns.api::<Role>(), "t1-billing").await.is_some());
    assert_eq!(
        op.metric("fleetward_operator_leader"),
        1.0,
        "the operator leads under the chart's RBAC"
    );
    op.kill9();
    // Events and watches fail softly; their refusals would only show here.
    let log = op.log_text();
    // The operator serves every namespace: writes into the namespaces of
    // earlier tests, still being deleted, are refused too, and are no RBAC
    // refusal.
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.to_lowercase().contains("forbidden") && !l.contains("because it is being terminated"))
        .collect();
    assert!(
        refusals.is_empty(),
        "operator hit RBAC refusals:\n{}",
        refusals.join("\n")
    );
    assert!(!log.contains("could not publish event"), "events refused:\n{log}");
    kubectl_delete(
        "clusterrole,clusterrolebinding",
        &[format!("{release}-{}-operator", ns.name)],
    );
    ns.cleanup().await;
}

/// `helm template fw <chart> args…`: (success, the manifests, the messages).
/// The one document of a `helm template` output that `is` picks, parsed.
fn document(rendered: &str, what: &str, is: impl Fn(&str) -> bool) -> serde_yaml::Value {
    let doc = rendered
        .split("\n---")
        .find(|doc| is(doc))
        .unwrap_or_else(|| panic!("no {what}"));
    serde_yaml::from_str(doc).unwrap()
}

fn render(chart: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(helm())
        .args(["template", "fw"])
        .arg(chart)
        .args(args)
        .output()
        .expect("helm runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What the end-to-end test cannot reach on this node: the optional parts
/// render and the API server accepts them, the PodMonitor exists only where
/// the Prometheus Operator's API does, and bad values are refused with a
/// clear message before anything is installed.
#[tokio::test]
async fn optional_parts_render_valid_objects_and_bad_values_are_refused() {
    install_crds();
    let chart = repo_root().join("helm/fleetward");
    let ns = TestNs::new("fw-helm-opt").await;
    let (ok, all, err) = render(
        &chart,
        &[
            "--namespace",
            &ns.name,
            "--set",
            "grafana.enabled=true",
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "stationApi.enabled=true",
            "--set",
            "prometheus.persistence.enabled=true",
        ],
    );
    assert!(ok, "{err}");
    for kind in ["NetworkPolicy", "PersistentVolumeClaim"] {
        assert!(all.contains(&format!("kind: {kind}")), "renders a {kind}");
    }
    assert!(all.contains("name: fw-grafana"), "renders Grafana");
    assert!(
        all.contains("grafana_dashboard: \"1\""),
        "dashboards carry the sidecar label"
    );
    assert!(
        !all.contains("kind: PodMonitor"),
        "no PodMonitor without the Prometheus Operator"
    );
    kubectl_apply(&all, &["--dry-run=server"]);
    // The default Kafka speaks mutual TLS only, from the operator's CA,
    // with ACLs; without kafka.tls it is the plaintext broker of before.
    for line in [
        "KAFKA_LISTENERS, value: \"SSL://:9092,CONTROLLER://localhost:9093\"",
        "KAFKA_SSL_CLIENT_AUTH, value: required",
        "KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND, value: \"false\"",
        "name: FLEETWARD_KAFKA_TLS_CA_SECRET",
        "- name: acls",
    ] {
        assert!(all.contains(line), "the default Kafka has {line}");
    }
    let names = format!("fw-kafka-0.fw-kafka-headless.{}.svc.cluster.local", ns.name);
    assert!(all.contains(&names), "the broker's certificate names its pod");
    let (ok, plain, err) = render(&chart, &["--namespace", &ns.name, "--set", "kafka.tls.enabled=false"]);
    assert!(ok, "{err}");
    assert!(
        plain.contains("PLAINTEXT://:9092")
            && !plain.contains("FLEETWARD_KAFKA_TLS")
            && !plain.contains("- name: acls")
    );

    let (ok, with_operator, err) = render(
        &chart,
        &[
            "--namespace",
            &ns.name,
            "--api-versions",
            "monitoring.coreos.com/v1/PodMonitor",
            "--api-versions",
            "monitoring.coreos.com/v1/PrometheusRule",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        with_operator.contains("kind: PodMonitor"),
        "a PodMonitor with the Prometheus Operator"
    );
    assert!(
        !with_operator.contains("kind: ServiceMonitor"),
        "no ServiceMonitor unless asked for"
    );
    let (ok, service_monitor, err) = render(
        &chart,
        &[
            "--namespace",
            &ns.name,
            "--api-versions",
            "monitoring.coreos.com/v1/ServiceMonitor",
            "--set",
            "monitoring.serviceMonitor.enabled=true",
            "--set",
            "monitoring.serviceMonitor.labels.release=kube-prometheus-stack",
        ],
    );
    assert!(ok, "{err}");
    let monitor = document(&service_monitor, "ServiceMonitor when asked for", |d| {
        d.contains("kind: ServiceMonitor")
    });
    let operator_service = document(&service_monitor, "operator metrics Service", |d| {
        d.contains("name: fw-operator-metrics")
    });
    assert_eq!(monitor["metadata"]["labels"]["release"], "kube-prometheus-stack");
    let selects = monitor["spec"]["selector"]["matchLabels"].as_mapping().unwrap();
    for (k, v) in selects {
        assert_eq!(
            &operator_service["metadata"]["labels"][k], v,
            "the ServiceMonitor selects the operator's metrics Service ({k:?})"
        );
    }
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    // The PrometheusRule holds the very rules the chart's Prometheus loads.
    let rules_file: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart.join("alerts/fleetward.rules.yaml")).unwrap()).unwrap();
    let rule = document(&with_operator, "PrometheusRule with the Prometheus Operator", |d| {
        d.contains("kind: PrometheusRule")
    });
    assert_eq!(rule["spec"], rules_file, "the PrometheusRule is the rules file");
    assert!(
        !all.contains("kind: PrometheusRule"),
        "no PrometheusRule without the operator"
    );
    let prometheus_config = document(&all, "Prometheus ConfigMap", |d| {
        d.contains("name: fw-prometheus\n") && d.contains("kind: ConfigMap")
    });
    let loaded: serde_yaml::Value =
        serde_yaml::from_str(prometheus_config["data"]["fleetward.rules.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(loaded, rules_file, "the chart's Prometheus loads the rules file");

    // Alertmanager: a webhook, or a whole configuration as given.
    let (ok, custom, err) = render(
        &chart,
        &[
            "--set",
            "alertmanager.config.route.receiver=ops",
            "--set",
            "alertmanager.config.receivers[0].name=ops",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        custom.contains("alertmanager.yml: |\n    receivers:\n    - name: ops\n    route:\n      receiver: ops\n"),
        "the given configuration, as it is: {custom}"
    );

    // Production: no bundled services, the operator pointed elsewhere.
    let (ok, production, err) = render(
        &chart,
        &[
            "--set",
            "postgresql.enabled=false",
            "--set",
            "database.existingSecret=my-db",
            "--set",
            "database.roles.host=db.example",
            "--set",
            "kafka.enabled=false",
            "--set",
            "kafka.bootstrapServers=b-1.example:9092",
            "--set",
            "prometheus.enabled=false",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        !production.contains("kind: StatefulSet"),
        "no bundled PostgreSQL or Kafka"
    );
    assert!(
        !production.contains("alertmanager"),
        "no Alertmanager without the chart's Prometheus"
    );
    assert!(
        production.contains("b-1.example:9092"),
        "the operator uses the given Kafka"
    );
    assert!(
        !production.contains("FLEETWARD_KAFKA_TLS"),
        "no operator certificates for a Kafka the chart does not run"
    );
    assert!(
        production.contains("@db.example:5432/fleetward?sslmode=require\"")
            && production.contains("{name: my-db, key: url}"),
        "the roles reach the given server, made by a Job as the admin of the given Secret"
    );

    for (args, says) in [
        (vec!["--set", "operator.replicas=-1"], "minimum"),
        (vec!["--set", "images.pullPolicy=Sometimes"], "pullPolicy"),
        (vec!["--set", "kafka.clusterId=short"], "clusterId"),
        (vec!["--set", "typo=1"], "typo"),
        (vec!["--set", "alertmanager.webhookUrl=hooks.example.com"], "webhookUrl"),
        // The CRDs' CEL rules need 1.29: an older cluster is named.
        (
            vec!["--kube-version", "1.28.3"],
            "requires kubeVersion: >=1.29.0-0 which is incompatible with Kubernetes v1.28.3",
        ),
        (
            vec!["--set", "kafka.enabled=false"],
            "kafka.bootstrapServers is required",
        ),
        (
            vec!["--set", "postgresql.enabled=false"],
            "database.url or database.existingSecret is required",
        ),
        (
            vec![
                "--set",
                "postgresql.enabled=false",
                "--set",
                "database.existingSecret=my-db",
            ],
            "database.roles.host",
        ),
    ] {
        let (ok, _, err) = render(&chart, &args);
        assert!(!ok, "{args:?} was accepted");
        assert!(err.contains(says), "{args:?}: the error names the problem: {err}");
    }
    ns.cleanup().await;
}

/// Whether `user` may `verb` `resource` (group `group`) in `ns`, as the API
/// server's authorizer answers it.
async fn may(ns: &TestNs, user: &str, verb: &str, group: &str, resource: &str) -> bool {
    use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            groups: Some(vec!["system:serviceaccounts".into(), "system:authenticated".into()]),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(ns.name.clone()),
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: kube::Api<SubjectAccessReview> = kube::Api::all(ns.client.clone());
    let answer = api.create(&Default::default(), &review).await.unwrap();
    answer.status.is_some_and(|s| s.allowed)
}

/// A tenant bound to Kubernetes' own `view` in a namespace reads the
/// fleetward kinds there and changes none; bound to `edit`, manages them;
/// neither reads Secrets through the chart's roles. Two operator replicas
/// get a PodDisruptionBudget and a spread over nodes; one gets no budget
/// (it would block every drain).
#[tokio::test]
async fn tenants_get_fleetward_rights_through_the_builtin_roles_and_replicas_a_budget() {
    install_crds();
    let chart = repo_root().join("helm/fleetward");
    let ns = TestNs::new("fw-helm-tenants").await;
    let release = release_of(&ns);
    let roles = show_only(&chart, &release, &ns, "templates/tenant-rbac.yaml");
    kubectl_apply(&roles, &[]);
    ns.apply_yaml(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: viewer}\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: editor}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: viewer}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\n\
         subjects: [{kind: ServiceAccount, name: viewer}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: editor}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}\n\
         subjects: [{kind: ServiceAccount, name: editor}]\n",
    )
    .await;
    let viewer = format!("system:serviceaccount:{}:viewer", ns.name);
    let editor = format!("system:serviceaccount:{}:editor", ns.name);
    // The controller-manager folds the labelled roles into view and edit.
    wait_for(
        "view and edit to gain the fleetward rules (view lists, edit creates Devices)",
        30,
        || async {
            Some((
                may(&ns, &viewer, "list", "fleetward.io", "devices").await,
                may(&ns, &editor, "create", "fleetward.io", "devices").await,
            ))
        },
        |&(lists, creates)| lists && creates,
    )
    .await;
    for resource in ["devices", "gateways", "stationfeeds", "tariffs"] {
        assert!(
            may(&ns, &viewer, "get", "fleetward.io", resource).await,
            "view gets {resource}"
        );
        assert!(
            may(&ns, &viewer, "watch", "fleetward.io", resource).await,
            "view watches {resource}"
        );
        for verb in ["create", "patch", "delete"] {
            assert!(
                !may(&ns, &viewer, verb, "fleetward.io", resource).await,
                "view may not {verb} {resource}"
            );
            assert!(
                may(&ns, &editor, verb, "fleetward.io", resource).await,
                "edit may {verb} {resource}"
            );
        }
    }
    assert!(!may(&ns, &viewer, "get", "", "secrets").await, "view reads no Secrets");

    let (ok, two, err) = render(&chart, &["--namespace", &ns.name, "--set", "operator.replicas=2"]);
    assert!(ok, "{err}");
    assert!(two.contains("kind: PodDisruptionBudget"), "two replicas get a budget");
    assert!(two.contains("topologyKey: kubernetes.io/hostname"), "and a spread");
    assert!(two.contains("app.kubernetes.io/component: operator"));
    kubectl_apply(&two, &["--dry-run=server"]);
    let (ok, one, err) = render(&chart, &["--namespace", &ns.name]);
    assert!(ok, "{err}");
    assert!(!one.contains("kind: PodDisruptionBudget"), "one replica: no budget");
    let (ok, none, err) = render(
        &chart,
        &["--namespace", &ns.name, "--set", "rbac.aggregateToDefaultRoles=false"],
    );
    assert!(ok, "{err}");
    assert!(!none.contains("aggregate-to-view"));

    kubectl_delete(
        "clusterrole",
        &[
            format!("{release}-{}-view", ns.name),
            format!("{release}-{}-edit", ns.name),
        ],
    );
    ns.cleanup().await;
}

/// The CRDs are templates: rendered from the generated files, exactly
/// (only the chart's labels and the keep policy added), kept on uninstall
/// unless `crds.keep=false`, and left out with `crds.enabled=false`.
#[test]
fn the_crds_are_templates_with_a_keep_policy() {
    let chart = repo_root().join("helm/fleetward");
    let crds = |args: &[&str]| -> Vec<serde_yaml::Value> {
        let (ok, out, err) = render(&chart, args);
        assert!(ok, "{err}");
        out.split("\n---")
            .filter(|d| d.contains("kind: CustomResourceDefinition"))
            .map(|d| serde_yaml::from_str(d).unwrap())
            .collect()
    };
    let rendered = crds(&[]);
    assert_eq!(rendered.len(), 4, "the four kinds");
    for crd in &rendered {
        let name = crd["metadata"]["name"].as_str().unwrap();
        assert_eq!(
            crd["metadata"]["annotations"]["helm.sh/resource-policy"].as_str(),
            Some("keep"),
            "{name}"
        );
        assert_eq!(
            crd["metadata"]["labels"]["app.kubernetes.io/part-of"].as_str(),
            Some("fleetward")
        );
        // The same spec as the file crdgen wrote.
        let file = repo_root().join(format!(
            "crds/{}.yaml",
            name.split('.').next().unwrap().trim_end_matches('s')
        ));
        let generated: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(crd["spec"], generated["spec"], "{name} as {}", file.display());
    }
    let unkept = crds(&["--set", "crds.keep=false"]);
    assert_eq!(unkept.len(), 4);
    assert!(unkept.iter().all(|c| c["metadata"]["annotations"].is_null()));
    assert!(crds(&["--set", "crds.enabled=false"]).is_empty());
}
