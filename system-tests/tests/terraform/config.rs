//! Reading terraform/ for the terraform test: every `.tf` file parsed with
//! hcl-rs into its top-level blocks, lookups of resources, data sources,
//! locals and variable defaults, and the names from the rest of the
//! repository that terraform/ must agree with, among them the IoT actions
//! the operator's code calls.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use hcl::{Block, Body, Expression};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// Every `terraform/*.tf` file as (file name, text), sorted by name.
pub fn terraform_files() -> Vec<(String, String)> {
    let dir = repo_root().join("terraform");
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    let mut files: Vec<(String, String)> = entries
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "tf"))
        .map(|path| {
            let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            (
                path.file_name().expect("file name").to_string_lossy().into_owned(),
                text,
            )
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .tf files in {}", dir.display());
    files
}

/// The top-level blocks of all files, and the `locals` by name.
pub struct Config {
    pub blocks: Vec<Block>,
    pub locals: BTreeMap<String, Expression>,
}

impl Config {
    pub fn parse(files: &[(String, String)]) -> Config {
        let mut blocks = Vec::new();
        for (name, text) in files {
            let body = hcl::parse(text).unwrap_or_else(|e| panic!("terraform/{name} is not valid HCL: {e}"));
            blocks.extend(body.into_blocks());
        }
        let locals = blocks
            .iter()
            .filter(|b| b.identifier() == "locals")
            .flat_map(|b| b.body().attributes())
            .map(|a| (a.key().to_string(), a.expr().clone()))
            .collect();
        Config { blocks, locals }
    }

    /// `<ident> "<first>" "<second>" { … }` blocks with that first label, as
    /// (second label, body).
    pub fn labelled<'a>(&'a self, ident: &str, first: &str) -> Vec<(&'a str, &'a Body)> {
        self.blocks
            .iter()
            .filter(|b| b.identifier() == ident && b.labels().first().map(|l| l.as_str()) == Some(first))
            .map(|b| (b.labels().get(1).map_or("", |l| l.as_str()), b.body()))
            .collect()
    }

    pub fn resources<'a>(&'a self, kind: &str) -> Vec<(&'a str, &'a Body)> {
        self.labelled("resource", kind)
    }

    pub fn resource<'a>(&'a self, kind: &str, name: &str) -> Option<&'a Body> {
        self.labelled("resource", kind)
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, b)| b)
    }

    pub fn data<'a>(&'a self, kind: &str, name: &str) -> Option<&'a Body> {
        self.labelled("data", kind)
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, b)| b)
    }

    pub fn variable_default<'a>(&'a self, name: &str) -> Option<&'a Expression> {
        self.labelled("variable", name)
            .first()
            .and_then(|(_, body)| attr(body, "default"))
    }

    /// An expression with `local.x` replaced by its value and `var.x` by its
    /// default, as often as that applies.
    pub fn value<'a>(&'a self, mut expr: &'a Expression) -> &'a Expression {
        loop {
            let text = expr.to_string();
            let next = if let Some(name) = text.strip_prefix("local.") {
                self.locals.get(name)
            } else if let Some(name) = text.strip_prefix("var.") {
                self.variable_default(name)
            } else {
                None
            };
            match next {
                Some(e) => expr = e,
                None => return expr,
            }
        }
    }

    /// A string, or a template whose `${var.x}` and `${local.x}` all have
    /// string values, as its text.
    pub fn render(&self, expr: &Expression) -> Option<String> {
        match self.value(expr) {
            Expression::String(s) => Some(s.clone()),
            Expression::TemplateExpr(t) => {
                let mut text = t.to_string().trim_matches('"').to_string();
                while let Some(start) = text.find("${") {
                    let end = start + text[start..].find('}')?;
                    let reference: Expression = text[start + 2..end].parse().ok()?;
                    let part = self.render(&reference)?;
                    text.replace_range(start..=end, &part);
                }
                Some(text)
            }
            _ => None,
        }
    }

    pub fn number(&self, expr: Option<&Expression>) -> Option<f64> {
        match self.value(expr?) {
            Expression::Number(n) => n.as_f64(),
            _ => None,
        }
    }

    pub fn strings(&self, expr: Option<&Expression>) -> Vec<String> {
        match expr.map(|e| self.value(e)) {
            Some(Expression::Array(items)) => items
                .iter()
                .map(|e| self.render(e).unwrap_or_else(|| e.to_string()))
                .collect(),
            Some(e) => vec![self.render(e).unwrap_or_else(|| e.to_string())],
            None => Vec::new(),
        }
    }
}

pub fn attr<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes().find(|a| a.key() == key).map(|a| a.expr())
}

pub fn blocks<'a>(body: &'a Body, ident: &'a str) -> impl Iterator<Item = &'a Block> + 'a {
    body.blocks().filter(move |b| b.identifier() == ident)
}

pub fn text(body: &Body, key: &str) -> String {
    attr(body, key).map(|e| e.to_string()).unwrap_or_default()
}

pub fn is(body: &Body, key: &str, want: impl Into<Expression>) -> bool {
    attr(body, key) == Some(&want.into())
}

/// A reference to a resource of that kind, e.g. `aws_kms_key.` for any key.
pub fn refers(body: &Body, key: &str, prefix: &str) -> bool {
    text(body, key).starts_with(prefix)
}

/// What must agree between terraform/ and the rest of the repository.
pub struct Repo {
    /// `RELEASE`, `NAMESPACE` default and `IMAGES` of devenv/aws.sh.
    pub release: String,
    pub namespace: String,
    pub images: Vec<String>,
    /// The ServiceAccount name template of the chart's operator.
    pub chart_service_account: String,
    /// The IAM actions of the AWS IoT calls in operator/src/aws_iot/*.rs.
    pub operator_iot_actions: BTreeSet<String>,
}

impl Repo {
    pub fn read() -> Repo {
        let root = repo_root();
        let aws = fs::read_to_string(root.join("devenv/aws.sh")).expect("devenv/aws.sh");
        let setting = |prefix: &str| {
            let line = aws.lines().find(|l| l.starts_with(prefix));
            line.unwrap_or_else(|| panic!("devenv/aws.sh has no line {prefix}…"))
                .trim_start_matches(prefix)
                .to_string()
        };
        let rbac = fs::read_to_string(root.join("helm/fleetward/templates/operator-rbac.yaml")).expect("chart RBAC");
        let account = rbac
            .split("kind: ServiceAccount")
            .nth(1)
            .expect("the chart's operator ServiceAccount");
        Repo {
            release: setting("RELEASE="),
            namespace: setting("NAMESPACE=")
                .trim_start_matches("${FLEETWARD_AWS_NAMESPACE:-")
                .trim_end_matches('}')
                .to_string(),
            images: setting("IMAGES=(")
                .trim_end_matches(')')
                .split_whitespace()
                .map(String::from)
                .collect(),
            chart_service_account: account
                .lines()
                .find_map(|l| l.trim().strip_prefix("name: "))
                .expect("the ServiceAccount's name")
                .to_string(),
            operator_iot_actions: operator_iot_actions(&root.join("operator/src/aws_iot")),
        }
    }
}

/// The IAM actions of every `client.<operation>(` in the `.rs` files of
/// `dir` (the operator's AWS IoT code): what its role must allow, no more.
fn operator_iot_actions(dir: &Path) -> BTreeSet<String> {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    let mut actions = BTreeSet::new();
    for path in entries.map(|entry| entry.expect("directory entry").path()) {
        if path.extension().is_some_and(|ext| ext == "rs") {
            let source = fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            actions.extend(iot_actions(&source));
        }
    }
    actions
}

/// The IAM actions of the SDK calls in one source file: each
/// `client.<operation>(`, also as `self.client.` and with the chain broken
/// over lines, outside comments and the `#[cfg(test)]` module.
pub fn iot_actions(source: &str) -> BTreeSet<String> {
    let code: Vec<&str> = source
        .lines()
        .take_while(|l| l.trim() != "#[cfg(test)]")
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect();
    let code = code.join("\n");
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut actions = BTreeSet::new();
    for (at, _) in code.match_indices("client") {
        if code[..at].chars().next_back().is_some_and(word) {
            continue;
        }
        let Some(call) = code[at + "client".len()..].trim_start().strip_prefix('.') else {
            continue;
        };
        let call = call.trim_start();
        let operation: String = call.chars().take_while(|&c| word(c)).collect();
        if !operation.is_empty() && call[operation.len()..].trim_start().starts_with('(') {
            actions.insert(iam_action(&operation));
        }
    }
    actions
}

/// `register_ca_certificate` -> `iot:RegisterCACertificate`: the SDK's
/// method is the API operation in snake_case, which also lower-cases the
/// acronym CA (the only one in the operations the operator calls).
pub fn iam_action(operation: &str) -> String {
    let pascal: String = operation
        .split('_')
        .map(|w| match w {
            "ca" => "CA".to_string(),
            _ => w[..1].to_uppercase() + &w[1..],
        })
        .collect();
    format!("iot:{pascal}")
}

/// The properties that broke, each named.
#[derive(Default, Debug)]
pub struct Findings(pub Vec<String>);

impl Findings {
    pub fn expect(&mut self, holds: bool, property: impl Into<String>) {
        if !holds {
            self.0.push(property.into());
        }
    }
}

#[test]
fn calls_are_read_as_iam_actions() {
    let source = r#"
        // client.not_a_call() in a comment
        let a = client.describe_thing().thing_name(n).send().await;
        let b = self.client
            .register_ca_certificate()
            .send();
        let c = iot_client.list_things();
        let id = client_id.len();
        #[cfg(test)]
        mod tests { fn f() { client.delete_thing(); } }
    "#;
    let found: Vec<String> = iot_actions(source).into_iter().collect();
    assert_eq!(found, ["iot:DescribeThing", "iot:RegisterCACertificate"]);
    assert_eq!(iam_action("list_targets_for_policy"), "iot:ListTargetsForPolicy");
}
