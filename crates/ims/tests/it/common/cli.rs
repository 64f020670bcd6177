//! The `ims` client CLI as a subprocess, in a private client environment: its own config file
//! path, HOME, TMPDIR and working directory, and no IMS_URL/IMS_TOKEN from outside.

use super::{Server, ims_bin};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

/// One CLI run.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub struct Cli {
    pub dir: tempfile::TempDir,
    /// Passed as `--url` when set.
    pub url: Option<String>,
    pub env: Vec<(String, String)>,
}

impl Cli {
    pub fn new(url: Option<&str>) -> Cli {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        Cli {
            dir,
            url: url.map(str::to_string),
            env: vec![],
        }
    }

    /// A client of `s`.
    pub fn of(s: &Server) -> Cli {
        Cli::new(Some(&s.url))
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The CLI's TMPDIR (work directories such as `ims-import-*` are made there).
    pub fn tmp(&self) -> PathBuf {
        self.file("tmp")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("cfg").join("client.toml")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(ims_bin());
        c.args(args)
            .env_remove("IMS_URL")
            .env_remove("IMS_TOKEN")
            .env("IMS_CLIENT_CONFIG", self.config_path())
            .env("HOME", self.dir.path())
            .env("TMPDIR", self.tmp())
            .current_dir(self.dir.path());
        if let Some(u) = &self.url {
            c.arg("--url").arg(u);
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Out {
        let o = self.command(args).output().expect("run ims");
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8(o.stdout).unwrap(),
            stderr: String::from_utf8(o.stderr).unwrap(),
        }
    }

    /// Runs with `--format json`, expects success, parses stdout (`Null` when empty).
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["--format", "json"]);
        let o = self.run(&a);
        assert_eq!(o.code, 0, "{args:?}: {o:?}");
        if o.stdout.trim().is_empty() {
            return Value::Null;
        }
        serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("{e}: {o:?}"))
    }

    /// Runs, expects exit 2 and nothing on stdout; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert_eq!(o.code, 2, "{args:?}: {o:?}");
        assert_eq!(o.stdout, "", "{args:?}: stdout must stay empty");
        o.stderr
    }
}
