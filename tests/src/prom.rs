//! A real Prometheus on a random 127.0.0.1 port, scraping one target, queried over its HTTP API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::{free_port, http, wait_for};

/// A running Prometheus, killed (and its data directory removed) on drop.
pub struct PromServer {
    child: Child,
    /// Its HTTP API address.
    pub addr: SocketAddr,
    dir: PathBuf,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl PromServer {
    /// Starts Prometheus scraping `target` every `scrape_interval` (and evaluating
    /// `rule_files` at the same interval). Waits until it is ready.
    ///
    /// # Panics
    ///
    /// When it cannot start or does not become ready within 60 s.
    pub fn start(
        bin: &Path,
        target: SocketAddr,
        scrape_interval: &str,
        rule_files: &[PathBuf],
    ) -> Self {
        Self::start_with(bin, target, scrape_interval, rule_files, &[])
    }

    /// [`start`](Self::start) with extra command-line flags (e.g.
    /// `--enable-feature=native-histograms,exemplar-storage`).
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub fn start_with(
        bin: &Path,
        target: SocketAddr,
        scrape_interval: &str,
        rule_files: &[PathBuf],
        flags: &[&str],
    ) -> Self {
        let rules: Vec<String> = rule_files
            .iter()
            .map(|p| format!("  - {}", p.display()))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: {scrape_interval}\n  evaluation_interval: {scrape_interval}\n\
             rule_files:\n{}\nscrape_configs:\n  - job_name: tokenmeter\n    static_configs:\n      - targets: ['{target}']\n",
            if rules.is_empty() {
                "  []".to_owned()
            } else {
                rules.join("\n")
            }
        );
        let config = config.replace("rule_files:\n  []", "rule_files: []");
        Self::start_config(bin, &config, flags, false)
    }

    /// Starts Prometheus with `config` (a prometheus.yml) and `flags`; in agent mode
    /// (`--enable-feature=agent`, its WAL under the server's directory) when `agent` is set.
    /// Waits until it is ready.
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start).
    pub fn start_config(bin: &Path, config: &str, flags: &[&str], agent: bool) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tokenmeter-prom-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("prometheus.yml"), config).expect("write config");
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
        let storage = if agent {
            format!("--storage.agent.path={}", dir.join("data").display())
        } else {
            format!("--storage.tsdb.path={}", dir.join("data").display())
        };
        let child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(storage)
            .arg(format!("--web.listen-address={addr}"))
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let mut server = PromServer { child, addr, dir };
        let dir = server.dir.clone();
        wait_for("prometheus ready", Duration::from_secs(60), || {
            if let Ok(Some(status)) = server.child.try_wait() {
                let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
                panic!("prometheus exited with {status}:\n{log}");
            }
            matches!(http::get(addr, "/-/ready"), Ok((200, _))).then_some(())
        });
        server
    }

    /// GETs an API path (with its query string); returns the `data` object.
    ///
    /// # Errors
    ///
    /// The error text when the call fails (bad PromQL, HTTP error).
    pub fn api(&self, path: &str) -> Result<Value, String> {
        let (status, body) = http::get(self.addr, path).map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if status != 200 || v["status"] != "success" {
            return Err(format!("HTTP {status}: {body}"));
        }
        Ok(v["data"].clone())
    }

    /// Runs an instant query; returns the `data` object.
    ///
    /// # Errors
    ///
    /// The error text when the query fails (bad PromQL, HTTP error).
    pub fn query(&self, expr: &str) -> Result<Value, String> {
        self.api(&format!("/api/v1/query?query={}", http::encode(expr)))
    }

    /// The value of a query that returns one sample, if it returns exactly one.
    pub fn scalar(&self, expr: &str) -> Option<f64> {
        let data = self.query(expr).ok()?;
        let result = data["result"].as_array()?;
        if result.len() != 1 {
            return None;
        }
        result[0]["value"][1].as_str()?.parse().ok()
    }

    /// Waits until `expr` returns one sample for which `pred` holds; returns it.
    ///
    /// # Panics
    ///
    /// After `deadline`, with the last value seen.
    pub fn wait_value(&self, expr: &str, deadline: Duration, pred: impl Fn(f64) -> bool) -> f64 {
        wait_for(&format!("PromQL `{expr}`"), deadline, || {
            self.scalar(expr).filter(|v| pred(*v))
        })
    }

    /// The server's log (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for PromServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
