//! The client commands: each one is a call to the API and a table for people, or under `--json`
//! the API's answer as it is (decided in one place, [`Api::show`]).

use anyhow::{Context, Result, anyhow, bail};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

const DEFAULT_URL: &str = "http://127.0.0.1:7700";

/// What `slipway login` saves: `$XDG_CONFIG_HOME/slipway/credentials` (or
/// `~/.config/slipway/credentials`), mode 0600.
#[derive(serde::Serialize, Deserialize)]
struct Credentials {
    url: String,
    token: String,
}

impl Credentials {
    fn path() -> Option<std::path::PathBuf> {
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".config"))
            })?;
        Some(base.join("slipway").join("credentials"))
    }

    fn load() -> Option<Credentials> {
        serde_json::from_str(&std::fs::read_to_string(Self::path()?).ok()?).ok()
    }

    fn save(&self) -> Result<std::path::PathBuf> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = Self::path().ok_or_else(|| anyhow!("no HOME to save the login under"))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        f.write_all(serde_json::to_string(self)?.as_bytes())?;
        Ok(path)
    }
}

/// An API client with the caller's token.
pub(crate) struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
    /// Print answers as JSON for scripts instead of tables for people (`--json`).
    json: bool,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorInner,
}

#[derive(Deserialize)]
struct ErrorInner {
    message: String,
}

impl Api {
    /// From `SLIPWAY_URL` and `SLIPWAY_TOKEN`, else the file `slipway login` wrote; `json` makes
    /// [`show`](Api::show) print JSON.
    pub(crate) fn from_env(url: Option<String>, token: Option<String>, json: bool) -> Result<Api> {
        let saved = Credentials::load();
        let base = url
            .or_else(|| saved.as_ref().map(|c| c.url.clone()))
            .unwrap_or_else(|| DEFAULT_URL.to_owned())
            .trim_end_matches('/')
            .to_owned();
        let token = token
            .filter(|t| !t.trim().is_empty())
            .or_else(|| saved.map(|c| c.token))
            .ok_or_else(|| {
                anyhow!(
                    "no API token: set SLIPWAY_TOKEN or run `slipway login` (the admin's token is in DATA/admin-token)"
                )
            })?;
        Ok(Api {
            base,
            token: token.trim().to_owned(),
            http: reqwest::Client::new(),
            json,
        })
    }

    /// Prints a command's result: under `--json` the API's answer as one JSON document (`{}`
    /// when it had no body), else whatever `human` prints for people.
    fn show(&self, answer: &Value, human: impl FnOnce(&Value)) -> Result<()> {
        if !self.json {
            human(answer);
            return Ok(());
        }
        let doc = if answer.is_null() { &json!({}) } else { answer };
        println!("{}", serde_json::to_string_pretty(doc)?);
        Ok(())
    }

    /// Sends a request; a non-2xx answer becomes an error carrying the API's one-line message.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<reqwest::Response> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.map_err(|e| {
            anyhow!(
                "cannot reach the Slipway API at {}: {}",
                self.base,
                root_cause(&e)
            )
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.error.message)
            .unwrap_or_else(|_| format!("the API answered {status}"));
        bail!("{msg}")
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Option<Value>> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        let text = resp.text().await.context("reading the API's answer")?;
        if status == StatusCode::NO_CONTENT || text.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            serde_json::from_str(&text).context("the API answered with invalid JSON")?,
        ))
    }

    pub(crate) async fn get(&self, path: &str) -> Result<Value> {
        Ok(self
            .call(Method::GET, path, None)
            .await?
            .unwrap_or(Value::Null))
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> Result<Value> {
        Ok(self
            .call(Method::POST, path, Some(body))
            .await?
            .unwrap_or(Value::Null))
    }

    pub(crate) async fn put(&self, path: &str, body: Value) -> Result<Value> {
        Ok(self
            .call(Method::PUT, path, Some(body))
            .await?
            .unwrap_or(Value::Null))
    }

    pub(crate) async fn patch(&self, path: &str, body: Value) -> Result<Value> {
        Ok(self
            .call(Method::PATCH, path, Some(body))
            .await?
            .unwrap_or(Value::Null))
    }

    pub(crate) async fn delete(&self, path: &str) -> Result<Value> {
        Ok(self
            .call(Method::DELETE, path, None)
            .await?
            .unwrap_or(Value::Null))
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The app to act on: `-a NAME`, or the last path segment of the git remote named `slipway`.
pub(crate) fn resolve_app(flag: Option<String>) -> Result<String> {
    if let Some(app) = flag {
        return Ok(app);
    }
    remote_app().ok_or_else(|| {
        anyhow!(
            "no app given: use -a APP, or run inside a git repository with a remote named slipway"
        )
    })
}

/// The app named by the git remote `slipway` in the current repository, if any.
pub(crate) fn remote_app() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["remote", "get-url", "slipway"])
        .output();
    if let Ok(out) = out
        && out.status.success()
    {
        let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let last = url.rsplit(['/', ':']).next().unwrap_or("");
        let name = last.strip_suffix(".git").unwrap_or(last);
        if !name.is_empty() {
            return Some(name.to_owned());
        }
    }
    None
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Prints a JSON array as aligned columns, one row per item.
fn table(headers: &[&str], list: &Value, row: impl Fn(&Value) -> Vec<String>) {
    let rows: Vec<Vec<String>> = list.as_array().into_iter().flatten().map(row).collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

pub(crate) async fn keys(api: &Api) -> Result<()> {
    let keys = api.get("/v1/keys").await?;
    api.show(&keys, |keys| {
        table(&["FINGERPRINT", "APP", "COMMENT"], keys, |k| {
            vec![s(&k["fingerprint"]), s(&k["app"]), s(&k["comment"])]
        })
    })
}

pub(crate) async fn keys_add(api: &Api, path: &str, app: Option<&str>) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let added = api
        .post("/v1/keys", json!({ "public_key": text.trim(), "app": app }))
        .await?;
    api.show(&added, |added| match app {
        Some(app) => println!("added deploy key {} for {app}", s(&added["fingerprint"])),
        None => println!("added key {}", s(&added["fingerprint"])),
    })
}

/// `text` as one URL path segment: anything but letters, digits and `-_.:` percent-encoded.
fn path_segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b':' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

pub(crate) async fn keys_remove(api: &Api, fingerprint: &str) -> Result<()> {
    let encoded = path_segment(fingerprint);
    let answer = api.delete(&format!("/v1/keys/{encoded}")).await?;
    api.show(&answer, |_| println!("removed key {fingerprint}"))
}

pub(crate) async fn apps(api: &Api) -> Result<()> {
    let apps = api.get("/v1/apps").await?;
    api.show(&apps, |apps| {
        table(&["NAME", "OWNER", "URL"], apps, |x| {
            vec![s(&x["name"]), s(&x["owner"]), s(&x["url"])]
        })
    })
}

pub(crate) async fn apps_create(api: &Api, name: &str) -> Result<()> {
    let app = api.post("/v1/apps", json!({ "name": name })).await?;
    api.show(&app, |app| {
        println!("created {} at {}", s(&app["name"]), s(&app["url"]));
        println!(
            "push with: git push ssh://git@HOST:2222/{}.git main",
            s(&app["name"])
        );
    })
}

pub(crate) async fn apps_info(api: &Api, app: &str) -> Result<()> {
    let info = api.get(&format!("/v1/apps/{app}")).await?;
    api.show(&info, |info| {
        println!("name     {}", s(&info["name"]));
        println!("owner    {}", s(&info["owner"]));
        println!("url      {}", s(&info["url"]));
        let r = &info["release"];
        if r.is_object() {
            println!(
                "release  v{} ({}, {})",
                s(&r["version"]),
                s(&r["status"]),
                s(&r["description"])
            );
            println!("image    {}", s(&r["image"]));
        } else {
            println!("release  none yet: git push to deploy");
        }
    })
}

pub(crate) async fn apps_destroy(api: &Api, app: &str, confirm: Option<&str>) -> Result<()> {
    if confirm != Some(app) {
        bail!(
            "destroying {app} deletes its releases and stops its containers; confirm with --confirm {app}"
        );
    }
    let answer = api.delete(&format!("/v1/apps/{app}")).await?;
    api.show(&answer, |_| println!("destroyed {app}"))
}

pub(crate) async fn config(api: &Api, app: &str) -> Result<()> {
    let config = api.get(&format!("/v1/apps/{app}/config")).await?;
    api.show(&config, |config| {
        let config = config.as_object().filter(|c| !c.is_empty());
        if config.is_none() {
            println!("{app} has no config vars");
        }
        for (k, v) in config.into_iter().flatten() {
            println!("{k}={}", s(v));
        }
    })
}

pub(crate) async fn config_set(api: &Api, app: &str, pairs: &[String]) -> Result<()> {
    let mut body = serde_json::Map::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| anyhow!("{pair:?} is not KEY=VALUE"))?;
        body.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    if body.is_empty() {
        bail!("give at least one KEY=VALUE");
    }
    let release = api
        .patch(&format!("/v1/apps/{app}/config"), Value::Object(body))
        .await?;
    api.show(&release, |release| {
        println!(
            "{} and restarting: v{}",
            s(&release["description"]),
            s(&release["version"])
        )
    })
}

pub(crate) async fn config_unset(api: &Api, app: &str, keys: &[String]) -> Result<()> {
    if keys.is_empty() {
        bail!("give at least one KEY");
    }
    let body: serde_json::Map<String, Value> =
        keys.iter().map(|k| (k.clone(), Value::Null)).collect();
    let release = api
        .patch(&format!("/v1/apps/{app}/config"), Value::Object(body))
        .await?;
    api.show(&release, |release| {
        println!(
            "{} and restarting: v{}",
            s(&release["description"]),
            s(&release["version"])
        )
    })
}

pub(crate) async fn releases(api: &Api, app: &str) -> Result<()> {
    let list = api.get(&format!("/v1/apps/{app}/releases")).await?;
    api.show(&list, |list| {
        table(&["VERSION", "STATUS", "DESCRIPTION", "BY"], list, |r| {
            vec![
                format!("v{}", s(&r["version"])),
                s(&r["status"]),
                s(&r["description"]),
                s(&r["created_by"]),
            ]
        })
    })
}

pub(crate) async fn users_add(api: &Api, name: &str) -> Result<()> {
    let created = api.post("/v1/users", json!({ "name": name })).await?;
    api.show(&created, |created| {
        println!("created user {}", s(&created["user"]));
        println!("their API token (shown once): {}", s(&created["token"]));
    })
}

pub(crate) async fn tokens_create(api: &Api) -> Result<()> {
    let created = api.post("/v1/tokens", json!({})).await?;
    api.show(&created, |created| println!("{}", s(&created["token"])))
}

/// Checks a token against the API and saves it with the URL for later commands.
pub(crate) async fn login(url: Option<String>, token: Option<String>) -> Result<()> {
    let token = match token.filter(|t| !t.trim().is_empty()) {
        Some(t) => t,
        None => {
            eprint!("API token: ");
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the token")?;
            line.trim().to_owned()
        }
    };
    let url = url.unwrap_or_else(|| DEFAULT_URL.to_owned());
    let api = Api::from_env(Some(url.clone()), Some(token.clone()), false)?;
    let me = api.get("/v1/whoami").await?;
    let path = Credentials {
        url: api.base.clone(),
        token: api.token.clone(),
    }
    .save()?;
    println!(
        "logged in to {} as {} (saved in {})",
        api.base,
        s(&me["user"]),
        path.display()
    );
    Ok(())
}

pub(crate) async fn rollback(api: &Api, app: &str, version: Option<&str>) -> Result<()> {
    let body = match version {
        Some(v) => {
            let n: i64 = v
                .trim_start_matches('v')
                .parse()
                .map_err(|_| anyhow!("{v:?} is not a release such as v3"))?;
            json!({ "version": n })
        }
        None => json!({}),
    };
    let release = api.post(&format!("/v1/apps/{app}/rollback"), body).await?;
    api.show(&release, |release| {
        println!(
            "{}: v{}",
            s(&release["description"]),
            s(&release["version"])
        )
    })
}

pub(crate) async fn domains(api: &Api, app: &str) -> Result<()> {
    let list = api.get(&format!("/v1/apps/{app}/domains")).await?;
    api.show(&list, |list| {
        for host in list.as_array().into_iter().flatten() {
            println!("{}", s(host));
        }
    })
}

pub(crate) async fn domains_add(api: &Api, app: &str, host: &str) -> Result<()> {
    let answer = api
        .post(&format!("/v1/apps/{app}/domains"), json!({ "host": host }))
        .await?;
    api.show(&answer, |_| println!("added {host} to {app}"))
}

pub(crate) async fn domains_remove(api: &Api, app: &str, host: &str) -> Result<()> {
    let answer = api
        .delete(&format!("/v1/apps/{app}/domains/{host}"))
        .await?;
    api.show(&answer, |_| println!("removed {host} from {app}"))
}

pub(crate) async fn ps(api: &Api, app: &str) -> Result<()> {
    let list = api.get(&format!("/v1/apps/{app}/ps")).await?;
    api.show(&list, |list| {
        table(&["TYPE", "RELEASE", "STATE", "NAME"], list, |i| {
            vec![
                s(&i["process"]),
                s(&i["release"]),
                s(&i["state"]),
                s(&i["name"]),
            ]
        })
    })
}

pub(crate) async fn ps_scale(api: &Api, app: &str, pairs: &[String]) -> Result<()> {
    let mut body = serde_json::Map::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| anyhow!("{pair:?} is not TYPE=N"))?;
        let n: i64 = v
            .parse()
            .map_err(|_| anyhow!("{pair:?}: {v:?} is not a number"))?;
        body.insert(k.to_owned(), json!(n));
    }
    let formation = api
        .patch(&format!("/v1/apps/{app}/formation"), Value::Object(body))
        .await?;
    api.show(&formation, |formation| {
        let summary: Vec<String> = formation
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "scaling {app}: {}",
            if summary.is_empty() {
                "nothing running".to_owned()
            } else {
                summary.join(" ")
            }
        )
    })
}

pub(crate) async fn ps_restart(api: &Api, app: &str, process: Option<&str>) -> Result<()> {
    let answer = api
        .post(
            &format!("/v1/apps/{app}/restart"),
            json!({ "process": process }),
        )
        .await?;
    api.show(&answer, |_| {
        println!(
            "restarting {app}{}",
            process.map(|p| format!(" {p}")).unwrap_or_default()
        )
    })
}

pub(crate) async fn logs(api: &Api, app: &str, lines: usize, follow: bool) -> Result<()> {
    use std::io::Write;
    let mut resp = api
        .send(
            Method::GET,
            &format!("/v1/apps/{app}/logs?lines={lines}&follow={follow}"),
            None,
        )
        .await?;
    let mut stdout = std::io::stdout();
    // With -f the answer stays open and lines arrive as the app writes them.
    while let Some(chunk) = resp.chunk().await.context("reading the log")? {
        stdout.write_all(&chunk)?;
        stdout.flush()?;
    }
    Ok(())
}

pub(crate) async fn access(api: &Api, app: &str) -> Result<()> {
    let access = api.get(&format!("/v1/apps/{app}/access")).await?;
    api.show(&access, |access| {
        println!("{} (owner)", s(&access["owner"]));
        for user in access["collaborators"].as_array().into_iter().flatten() {
            println!("{}", s(user));
        }
    })
}

pub(crate) async fn access_add(api: &Api, app: &str, user: &str) -> Result<()> {
    let answer = api
        .post(&format!("/v1/apps/{app}/access"), json!({ "user": user }))
        .await?;
    api.show(&answer, |_| {
        println!("{user} can now push and operate {app}")
    })
}

pub(crate) async fn access_remove(api: &Api, app: &str, user: &str) -> Result<()> {
    let answer = api.delete(&format!("/v1/apps/{app}/access/{user}")).await?;
    api.show(&answer, |_| println!("removed {user} from {app}"))
}

pub(crate) async fn deploy(api: &Api, app: &str, image: &str) -> Result<()> {
    let release = api
        .post(&format!("/v1/apps/{app}/deploy"), json!({ "image": image }))
        .await?;
    api.show(&release, |release| {
        println!(
            "{}: v{}",
            s(&release["description"]),
            s(&release["version"])
        )
    })
}

/// Runs a one-off command and exits with its exit code.
pub(crate) async fn run(api: &Api, app: &str, command: &[String]) -> Result<i32> {
    use std::io::Write;
    let mut resp = api
        .send(
            Method::POST,
            &format!("/v1/apps/{app}/run"),
            Some(json!({ "command": command.join(" ") })),
        )
        .await?;
    let mut pending = Vec::new();
    let mut stdout = std::io::stdout();
    while let Some(chunk) = resp.chunk().await.context("reading the command's output")? {
        pending.extend_from_slice(&chunk);
        while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            let msg: Value =
                serde_json::from_slice(&line).context("garbled output from the API")?;
            if let Some(out) = msg["output"].as_str() {
                let _ = stdout.write_all(out.as_bytes());
                let _ = stdout.flush();
            } else if let Some(code) = msg["exit"].as_i64() {
                return Ok(code.clamp(0, 255) as i32);
            }
        }
    }
    bail!("the connection ended before the command finished")
}

/// `512M`, `1G`, `1.5G`, `256K` or plain bytes, in powers of 1024.
fn parse_memory(v: &str) -> Result<i64> {
    let bytes = slipway_core::release::parse_size(v).map_err(|e| anyhow!(e))?;
    i64::try_from(bytes).map_err(|_| anyhow!("{v:?}: use a size such as 512M or 1G"))
}

/// A build's memory limit: a size as [`parse_memory`] reads it, at least 16 MiB (the engine
/// refuses less than 6 MiB, and nothing builds in that).
pub(crate) fn parse_build_memory(v: &str) -> Result<i64> {
    let bytes = parse_memory(v)?;
    if bytes < 16 << 20 {
        return Err(anyhow!("{v:?}: a build needs at least 16M"));
    }
    Ok(bytes)
}

/// A build's CPU limit, as [`parse_cpu`] reads it.
pub(crate) fn parse_build_cpus(v: &str) -> Result<i64> {
    parse_cpu(v)
}

/// `1.5` CPUs or `500m` millicores, as billionths of a CPU.
fn parse_cpu(v: &str) -> Result<i64> {
    let bad = || anyhow!("{v:?}: use CPUs such as 1.5, or millicores such as 500m");
    let n: f64 = match v.trim().strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().map_err(|_| bad())? / 1000.0,
        None => v.trim().parse().map_err(|_| bad())?,
    };
    if !n.is_finite() || n <= 0.0 {
        return Err(bad());
    }
    Ok((n * 1e9).round() as i64)
}

fn show_memory(bytes: &Value) -> String {
    match bytes.as_i64() {
        None => "-".to_owned(),
        Some(b) if b % (1 << 30) == 0 => format!("{}G", b >> 30),
        Some(b) if b % (1 << 20) == 0 => format!("{}M", b >> 20),
        Some(b) => format!("{}K", b >> 10),
    }
}

fn show_cpu(nano: &Value) -> String {
    nano.as_i64()
        .map_or("-".to_owned(), |n| format!("{}", n as f64 / 1e9))
}

fn print_limits(limits: &Value) {
    let rows: Vec<Value> = limits
        .as_object()
        .into_iter()
        .flatten()
        .map(|(process, l)| {
            json!([
                process,
                show_memory(&l["memory_bytes"]),
                show_cpu(&l["nano_cpus"])
            ])
        })
        .collect();
    if rows.is_empty() {
        println!("no limits: instances may use all of this machine's memory and CPUs");
        return;
    }
    table(&["TYPE", "MEMORY", "CPU"], &Value::Array(rows), |r| {
        r.as_array().into_iter().flatten().map(s).collect()
    });
}

pub(crate) async fn limits(api: &Api, app: &str) -> Result<()> {
    let limits = api.get(&format!("/v1/apps/{app}/limits")).await?;
    api.show(&limits, print_limits)
}

pub(crate) async fn limits_set(api: &Api, app: &str, pairs: &[String], cpu: bool) -> Result<()> {
    let mut body = serde_json::Map::new();
    for pair in pairs {
        let (process, value) = pair
            .split_once('=')
            .ok_or_else(|| anyhow!("{pair:?} is not TYPE=VALUE"))?;
        let (field, n) = if cpu {
            ("nano_cpus", parse_cpu(value)?)
        } else {
            ("memory_bytes", parse_memory(value)?)
        };
        body.insert(process.to_owned(), json!({ field: n }));
    }
    let limits = api
        .patch(&format!("/v1/apps/{app}/limits"), Value::Object(body))
        .await?;
    api.show(&limits, print_limits)
}

pub(crate) async fn limits_unset(
    api: &Api,
    app: &str,
    types: &[String],
    fields: &[&str],
) -> Result<()> {
    let unset: serde_json::Map<String, Value> = fields
        .iter()
        .map(|f| ((*f).to_owned(), Value::Null))
        .collect();
    let body: serde_json::Map<String, Value> = types
        .iter()
        .map(|t| (t.clone(), Value::Object(unset.clone())))
        .collect();
    let limits = api
        .patch(&format!("/v1/apps/{app}/limits"), Value::Object(body))
        .await?;
    api.show(&limits, print_limits)
}

/// Shows the health check path, or sets it (`Some(Some(path))`) or clears it (`Some(None)`).
pub(crate) async fn healthcheck(api: &Api, app: &str, set: Option<Option<&str>>) -> Result<()> {
    let path = format!("/v1/apps/{app}/healthcheck");
    let answer = match set {
        None => api.get(&path).await?,
        Some(p) => api.put(&path, json!({ "path": p })).await?,
    };
    api.show(&answer, |h| match h["path"].as_str() {
        Some(p) => println!("{app}: new web instances get traffic once GET {p} answers 2xx or 3xx"),
        None => {
            println!("{app}: new web instances get traffic once they accept connections on PORT")
        }
    })
}

pub(crate) async fn maintenance(api: &Api, app: &str, on: bool) -> Result<()> {
    let answer = api
        .put(
            &format!("/v1/apps/{app}/maintenance"),
            json!({ "maintenance": on }),
        )
        .await?;
    api.show(&answer, |_| {
        println!(
            "maintenance mode {} for {app}",
            if on { "on" } else { "off" }
        )
    })
}

pub(crate) async fn certs(api: &Api, app: &str) -> Result<()> {
    let list = api.get(&format!("/v1/apps/{app}/certs")).await?;
    api.show(&list, |list| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        table(
            &["NAMES", "EXPIRES (UTC)", "LEFT", "FINGERPRINT"],
            list,
            |c| {
                let names: Vec<String> =
                    c["names"].as_array().into_iter().flatten().map(s).collect();
                let not_after = c["not_after"].as_i64().unwrap_or(0);
                vec![
                    names.join(","),
                    utc(not_after),
                    time_left(not_after, now),
                    s(&c["fingerprint"]),
                ]
            },
        )
    })
}

pub(crate) async fn certs_add(api: &Api, app: &str, cert: &str, key: &str) -> Result<()> {
    let certificate = std::fs::read_to_string(cert).with_context(|| format!("reading {cert}"))?;
    let private_key = std::fs::read_to_string(key).with_context(|| format!("reading {key}"))?;
    let added = api
        .post(
            &format!("/v1/apps/{app}/certs"),
            json!({ "certificate": certificate, "private_key": private_key }),
        )
        .await?;
    api.show(&added, |added| {
        let names: Vec<String> = added["names"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect();
        println!(
            "added certificate for {} to {app}, expires {} UTC",
            names.join(", "),
            utc(added["not_after"].as_i64().unwrap_or(0))
        );
        match added["replaced"].as_u64() {
            Some(0) | None => {}
            Some(n) => println!("it replaces {n} older certificate(s) for the same names"),
        }
    })
}

pub(crate) async fn certs_remove(api: &Api, app: &str, name: &str) -> Result<()> {
    let answer = api
        .delete(&format!("/v1/apps/{app}/certs/{}", path_segment(name)))
        .await?;
    api.show(&answer, |_| {
        println!("removed the certificate for {name} from {app}")
    })
}

pub(crate) async fn tls(api: &Api, app: &str, enforce: bool) -> Result<()> {
    let answer = api
        .put(
            &format!("/v1/apps/{app}/tls"),
            json!({ "https_enforced": enforce }),
        )
        .await?;
    api.show(&answer, |_| {
        if enforce {
            println!("{app} now redirects HTTP requests to HTTPS");
        } else {
            println!("{app} serves HTTP requests again");
        }
    })
}

pub(crate) async fn events(api: &Api, app: Option<&str>) -> Result<()> {
    let path = match app {
        Some(app) => format!("/v1/events?app={app}"),
        None => "/v1/events".to_owned(),
    };
    let list = api.get(&path).await?;
    api.show(&list, |list| {
        // KEY: the SSH key a push came from, as `ssh-keygen -lf` prints it; empty where an API
        // token acted.
        table(&["TIME", "APP", "KIND", "BY", "KEY", "WHAT"], list, |e| {
            vec![
                utc(e["created_at"].as_i64().unwrap_or(0)),
                s(&e["app"]),
                s(&e["kind"]),
                s(&e["actor"]),
                s(&e["fingerprint"]),
                s(&e["detail"]),
            ]
        })
    })
}

/// Garbage-collects the registry, or with `dry_run` lists what that would remove.
pub(crate) async fn registry_gc(api: &Api, dry_run: bool) -> Result<()> {
    let report = api
        .post("/v1/registry/gc", json!({ "dry_run": dry_run }))
        .await?;
    api.show(&report, |report| {
        let manifests = report["manifests"].as_array().map_or(0, Vec::len);
        let blobs = report["blobs"].as_array().map_or(0, Vec::len);
        if manifests > 0 {
            table(
                &["REPOSITORY", "MANIFEST", "BYTES"],
                &report["manifests"],
                |m| vec![s(&m["repository"]), s(&m["digest"]), s(&m["bytes"])],
            );
            println!();
        }
        let verb = if dry_run { "would remove" } else { "removed" };
        println!(
            "{verb} {manifests} manifests and {blobs} blobs, {} bytes",
            s(&report["bytes_freed"])
        );
    })
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS` in UTC.
/// How long a certificate has left, flagged when it is time to renew it (under two weeks, as
/// ACME clients renew well before).
fn time_left(not_after: i64, now: i64) -> String {
    let left = not_after - now;
    let days = left / 86_400;
    match left {
        ..=0 => "expired".to_owned(),
        _ if days >= 14 => format!("{days}d"),
        _ if days >= 1 => format!("{days}d, renew soon"),
        _ => format!("{}h, renew soon", (left / 3_600).max(1)),
    }
}

fn utc(secs: i64) -> String {
    // Howard Hinnant's days-to-civil algorithm.
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::{parse_cpu, parse_memory, time_left, utc};

    #[test]
    fn limits_parse() {
        assert_eq!(parse_memory("512M").unwrap(), 512 << 20);
        assert_eq!(parse_memory("1G").unwrap(), 1 << 30);
        assert_eq!(parse_memory("1.5Gi").unwrap(), 3 << 29);
        assert_eq!(parse_memory("4096").unwrap(), 4096);
        assert!(parse_memory("lots").is_err());
        assert!(parse_memory("-1G").is_err());
        assert!(parse_memory("12Q").is_err());
        assert_eq!(parse_cpu("1.5").unwrap(), 1_500_000_000);
        assert_eq!(parse_cpu("500m").unwrap(), 500_000_000);
        assert!(parse_cpu("0").is_err());
        assert!(parse_cpu("fast").is_err());
    }

    #[test]
    fn certificate_time_left() {
        let day = 86_400;
        assert_eq!(time_left(1_000, 2_000), "expired");
        assert_eq!(time_left(2_000, 2_000), "expired");
        assert_eq!(time_left(90 * day + 5, 0), "90d");
        assert_eq!(time_left(14 * day, 0), "14d");
        assert_eq!(time_left(13 * day + 100, 0), "13d, renew soon");
        assert_eq!(time_left(5 * 3_600 + 10, 0), "5h, renew soon");
        assert_eq!(time_left(30, 0), "1h, renew soon");
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc(1_795_000_000), "2026-11-18 11:06:40");
    }
}
