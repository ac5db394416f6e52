//! The sandbox `./deploy.sh` runs in: a PATH of bash and chosen tools
//! (none, trip-wires, or stand-ins that answer as AWS and terraform would),
//! a HOME, state and cache directory of its own.

use std::path::{Path, PathBuf};
use std::process::Command;

use fleetward_system_tests::repo_root;

use super::{ECR, IMAGES, PASSWORD, REGION};

const TRIP_WIRES: [&str; 8] = ["aws", "terraform", "tofu", "helm", "kubectl", "docker", "buildah", "jq"];

/// What the machine's tools are in a sandbox.
#[derive(Clone, Copy, PartialEq)]
pub enum Tools {
    /// Nothing but bash.
    None,
    /// Trip-wires that record being run, and fail.
    TripWires,
    /// Stand-ins that answer as AWS, terraform and the rest would (see
    /// `stub`), with jq, mkdir and rm from the machine.
    Stubs,
}

/// A program of this machine, by name.
fn program(name: &str) -> PathBuf {
    ["/bin", "/usr/bin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} is installed"))
}

fn bash() -> PathBuf {
    program("bash")
}

/// A stand-in for `tool`: appends its arguments (separated by \x1f) to
/// calls.log in one write, keeps what it gets on stdin where the real one would use it,
/// and answers the questions aws-up and aws-down ask.
fn stub(tool: &str, dir: &Path) -> String {
    format!(
        r#"#!{bash}
dir='{dir}'
# One write per call: the stages of a pipeline run at once, and three
# printfs each would interleave their lines in the log.
call=$(printf '%s' {tool}; printf '\x1f%s' "$@")
printf '%s\n' "$call" >>"$dir/calls.log"
case "{tool} $*" in
  "terraform "*" output -json") printf '%s\n' "$(<"$dir/outputs.json")" ;;
  "terraform "*" show -json")
    if [ -e "$dir/state.json" ]; then printf '%s\n' "$(<"$dir/state.json")"; else echo '{{"format_version":"1.0"}}'; fi ;;
  "aws sts get-caller-identity"*) echo arn:aws:iam::123456789012:user/tester ;;
  "aws ecr get-login-password"*) echo ecr-login-token ;;
  "aws ecr describe-images"*) echo "An error occurred (ImageNotFoundException)" >&2; exit 254 ;;
  "aws secretsmanager get-secret-value"*) echo '{{"username":"fleetward","password":"{PASSWORD}"}}' ;;
  "aws iot describe-endpoint"*) echo a1b2c3-ats.iot.eu-central-1.amazonaws.com ;;
  "aws ecr list-images"*)
    # One image per repository, then none.
    seen="$dir/listed-${{*//[^a-z]/_}}"
    if [ -e "$seen" ]; then echo '[]'; else : >"$seen"; echo '[{{"imageDigest": "sha256:0a"}}]'; fi ;;
  "docker login"*) IFS= read -r line; printf '%s\n' "$line" >>"$dir/login-stdin" ;;
  "kubectl apply"*) while IFS= read -r line || [ -n "$line" ]; do printf '%s\n' "$line"; done >>"$dir/applied" ;;
esac
exit 0
"#,
        bash = bash().display(),
        dir = dir.display(),
    )
}

/// `terraform output -json` as terraform/outputs.tf makes it.
fn outputs_json() -> String {
    let repos: Vec<String> = IMAGES.iter().map(|i| format!(r#""{i}": "{ECR}/{i}""#)).collect();
    format!(
        r#"{{"cluster_name": {{"value": "fleetward"}},
"ecr_repository_urls": {{"value": {{{}}}}},
"operator_role_arn": {{"value": "arn:aws:iam::123456789012:role/fleetward-operator"}},
"db_endpoint": {{"value": "fleetward-postgres.c0.{REGION}.rds.amazonaws.com"}},
"db_port": {{"value": 5432}},
"db_name": {{"value": "fleetward"}},
"db_secret_arn": {{"value": "arn:aws:secretsmanager:{REGION}:123456789012:secret:rds!db-0"}}}}"#,
        repos.join(", ")
    )
}

/// Every file under `dir` (relative path and modification time), sorted;
/// empty when `dir` does not exist.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Option<std::time::SystemTime>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, Option<std::time::SystemTime>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let meta = entry.metadata().ok();
            out.push((
                path.strip_prefix(root).unwrap().to_path_buf(),
                meta.as_ref().and_then(|m| m.modified().ok()),
            ));
            if meta.is_some_and(|m| m.is_dir()) {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

pub struct Sandbox {
    _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    bin: PathBuf,
    home: PathBuf,
    state: PathBuf,
    cache: PathBuf,
    calls_log: PathBuf,
}

impl Sandbox {
    /// A PATH directory holding only bash, and the `tools`.
    pub fn new(tools: Tools) -> Self {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let (bin, home, state, cache) = (dir.join("bin"), dir.join("home"), dir.join("dev"), dir.join("cache"));
        let calls = dir.join("calls.log");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&home).unwrap();
        symlink(bash(), bin.join("bash")).unwrap();
        let executable = |tool: &str, script: String| {
            let path = bin.join(tool);
            std::fs::write(&path, script).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        match tools {
            Tools::None => {}
            Tools::TripWires => {
                for tool in TRIP_WIRES {
                    executable(
                        tool,
                        format!(
                            "#!{}\necho \"{tool} $*\" >>'{}'\nexit 1\n",
                            bash().display(),
                            calls.display()
                        ),
                    );
                }
            }
            Tools::Stubs => {
                for tool in ["aws", "terraform", "docker", "kubectl", "helm"] {
                    executable(tool, stub(tool, &dir));
                }
                for tool in ["jq", "mkdir", "rm"] {
                    symlink(program(tool), bin.join(tool)).unwrap();
                }
                std::fs::write(dir.join("outputs.json"), outputs_json()).unwrap();
            }
        }
        Sandbox {
            _tmp: tmp,
            dir,
            bin,
            home,
            state,
            cache,
            calls_log: calls,
        }
    }

    /// `./deploy.sh args…` in a cleared environment: (success, stdout, stderr).
    pub fn deploy(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(repo_root().join("deploy.sh"))
            .args(args)
            .current_dir(repo_root())
            .env_clear()
            .env("PATH", &self.bin)
            .env("HOME", &self.home)
            .env("FLEETWARD_DEV_DIR", &self.state)
            .env("FLEETWARD_CACHE_DIR", &self.cache)
            .output()
            .expect("deploy.sh runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The resources in the stand-in terraform's state (`show -json`):
    /// none until this is called.
    pub fn deployed(&self, resources: &[&str]) {
        let resources: Vec<String> = resources.iter().map(|r| format!(r#"{{"address": "{r}"}}"#)).collect();
        let state = format!(
            r#"{{"format_version": "1.0", "values": {{"root_module": {{"resources": [{}]}}}}}}"#,
            resources.join(", ")
        );
        std::fs::write(self.dir.join("state.json"), state).unwrap();
    }

    /// A real run (with stubs): its trace (stderr), after checking it succeeded.
    pub fn real(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.deploy(args);
        assert!(ok, "deploy.sh {args:?} failed:\n{stdout}{stderr}");
        stderr
    }

    /// The stubs' invocations, each as its arguments.
    pub fn calls(&self) -> Vec<Vec<String>> {
        std::fs::read_to_string(&self.calls_log)
            .unwrap_or_default()
            .lines()
            .map(|l| l.split('\x1f').map(str::to_owned).collect())
            .collect()
    }

    /// A plan's stdout, after checking it succeeded and left no trace.
    pub fn plan(&self, args: &[&str]) -> String {
        let terraform = repo_root().join("terraform");
        let before = snapshot(&terraform);
        let (ok, stdout, stderr) = self.deploy(args);
        assert!(ok, "deploy.sh {args:?} failed:\n{stdout}{stderr}");
        assert!(
            !self.calls_log.exists(),
            "the plan ran tools:\n{}\n{stdout}",
            std::fs::read_to_string(&self.calls_log).unwrap_or_default()
        );
        assert!(!self.state.exists(), "the plan made {}", self.state.display());
        assert!(!self.cache.exists(), "the plan made {}", self.cache.display());
        assert_eq!(
            std::fs::read_dir(&self.home).unwrap().count(),
            0,
            "the plan wrote into HOME"
        );
        assert_eq!(before, snapshot(&terraform), "the plan changed terraform/");
        for made in [".terraform", "terraform.tfstate"] {
            assert!(
                before.iter().any(|(p, _)| p == Path::new(made)) || !terraform.join(made).exists(),
                "the plan made terraform/{made}"
            );
        }
        stdout
    }
}
