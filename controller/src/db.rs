//! The database: connection, migrations and every SQL statement Slipway runs.
//!
//! Invariant: no other module holds SQL. Queries are built at runtime with bound parameters
//! (never string formatting of values) and written in the SQL that SQLite and PostgreSQL share:
//! `$N` placeholders, `RETURNING`, `ON CONFLICT`, `CAST`, 64-bit integers. One code path serves
//! both through sqlx's `Any` driver; only the migrations differ per backend.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use slipway_core::ports::KeyOwner;
use slipway_core::tls::TlsCert;
use slipway_core::{AppName, Config, Fingerprint, ProcessTypes, Release, UserName};
use sqlx::AnyPool;
use sqlx::Row;
use sqlx::any::{AnyPoolOptions, AnyRow};

/// Database errors.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database refused or failed a statement. Not a `source`: sqlx's message already
    /// includes its cause, and a chain would print it twice.
    #[error("{0}")]
    Sql(sqlx::Error),
    /// A row held data that no longer parses (a name or JSON written by a newer version).
    #[error("database row is corrupt: {0}")]
    Corrupt(String),
    /// A uniqueness rule was broken: the thing already exists.
    #[error("{0} already exists")]
    Exists(String),
    /// The database URL names a backend Slipway does not run on.
    #[error("database {0:?} is not supported: use postgres://... or sqlite://...")]
    Unsupported(String),
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        DbError::Sql(e)
    }
}

type Result<T> = std::result::Result<T, DbError>;

/// Ordered migrations per backend; each runs once, in a transaction, and is recorded in
/// `schema_migrations`. Both lists have the same versions, doing the same thing in each dialect.
const SQLITE_MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_init.sql")),
    (
        2,
        include_str!("../migrations/sqlite/0002_domains_formation.sql"),
    ),
    (
        3,
        include_str!("../migrations/sqlite/0003_collaborators.sql"),
    ),
    (4, include_str!("../migrations/sqlite/0004_maintenance.sql")),
    (5, include_str!("../migrations/sqlite/0005_events.sql")),
    (6, include_str!("../migrations/sqlite/0006_deploy_keys.sql")),
    (
        7,
        include_str!("../migrations/sqlite/0007_limits_health.sql"),
    ),
    (
        8,
        include_str!("../migrations/sqlite/0008_event_fingerprint.sql"),
    ),
    (9, include_str!("../migrations/sqlite/0009_certs.sql")),
];
const POSTGRES_MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_init.sql")),
    (
        2,
        include_str!("../migrations/postgres/0002_domains_formation.sql"),
    ),
    (
        3,
        include_str!("../migrations/postgres/0003_collaborators.sql"),
    ),
    (
        4,
        include_str!("../migrations/postgres/0004_maintenance.sql"),
    ),
    (5, include_str!("../migrations/postgres/0005_events.sql")),
    (
        6,
        include_str!("../migrations/postgres/0006_deploy_keys.sql"),
    ),
    (
        7,
        include_str!("../migrations/postgres/0007_limits_health.sql"),
    ),
    (
        8,
        include_str!("../migrations/postgres/0008_event_fingerprint.sql"),
    ),
    (9, include_str!("../migrations/postgres/0009_certs.sql")),
];

/// The apps table's on/off columns; their queries are literals, never built from input.
#[derive(Debug, Clone, Copy)]
enum AppFlag {
    Maintenance,
    HttpsEnforced,
}

impl AppFlag {
    fn select(self) -> &'static str {
        match self {
            AppFlag::Maintenance => "SELECT maintenance FROM apps WHERE name = $1",
            AppFlag::HttpsEnforced => "SELECT https_enforced FROM apps WHERE name = $1",
        }
    }

    fn update(self) -> &'static str {
        match self {
            AppFlag::Maintenance => "UPDATE apps SET maintenance = $1 WHERE name = $2",
            AppFlag::HttpsEnforced => "UPDATE apps SET https_enforced = $1 WHERE name = $2",
        }
    }
}

/// The database backends Slipway runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A file under the data directory; the default.
    Sqlite,
    /// A PostgreSQL server, from `--database-url postgres://...`.
    Postgres,
}

impl Backend {
    /// The backend a database URL names, if Slipway supports it.
    pub fn of_url(url: &str) -> Option<Backend> {
        let scheme = url.split_once(':')?.0;
        match scheme {
            "sqlite" => Some(Backend::Sqlite),
            "postgres" | "postgresql" => Some(Backend::Postgres),
            _ => None,
        }
    }

    fn migrations(self) -> &'static [(i64, &'static str)] {
        match self {
            Backend::Sqlite => SQLITE_MIGRATIONS,
            Backend::Postgres => POSTGRES_MIGRATIONS,
        }
    }
}

/// The URL of an SQLite database file at `path`, created if missing. The path is
/// percent-encoded, so any file name works.
pub fn sqlite_url(path: &Path) -> String {
    use std::fmt::Write;
    let mut url = String::from("sqlite://");
    for b in path.as_os_str().as_encoded_bytes() {
        if b.is_ascii_alphanumeric() || b"/._-".contains(b) {
            url.push(char::from(*b));
        } else {
            let _ = write!(url, "%{b:02X}");
        }
    }
    url.push_str("?mode=rwc");
    url
}

/// A user's SSH key as listed.
#[derive(Debug, Clone)]
pub struct KeyRow {
    /// The key's fingerprint.
    pub fingerprint: String,
    /// The canonical key line.
    pub public_key: String,
    /// The key's comment.
    pub comment: String,
    /// Seconds since the epoch.
    pub created_at: i64,
    /// For a deploy key, its app.
    pub app: Option<String>,
}

/// An app as listed.
#[derive(Debug, Clone)]
pub struct AppRow {
    /// The app's name.
    pub name: AppName,
    /// Its owner.
    pub owner: String,
    /// Seconds since the epoch.
    pub created_at: i64,
}

/// One entry of the audit log.
#[derive(Debug, Clone)]
pub struct EventRow {
    /// The app it concerns, if any.
    pub app: Option<String>,
    /// What kind of thing happened: `release`, `deploy`, `crash`, `scale`, `key`, ...
    pub kind: String,
    /// Who did it (`slipway` for the platform itself).
    pub actor: String,
    /// The SSH key the actor used (a push); `None` when an API token acted.
    pub fingerprint: Option<String>,
    /// What happened, for people.
    pub detail: String,
    /// Seconds since the epoch.
    pub created_at: i64,
}

/// A certificate of an app as listed: everything but its key.
#[derive(Debug, Clone)]
pub struct CertRow {
    /// The DNS names it covers.
    pub names: Vec<String>,
    /// `SHA256:<hex>` of the leaf certificate.
    pub fingerprint: String,
    /// Expiry, in seconds since the epoch.
    pub not_after: i64,
    /// When it was added, in seconds since the epoch.
    pub created_at: i64,
}

/// Resource limits of one process type; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Memory, in bytes.
    pub memory_bytes: Option<i64>,
    /// CPU, in billionths of a CPU.
    pub nano_cpus: Option<i64>,
}

/// A release's rollout state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseStatus {
    /// Recorded, not yet serving.
    Pending,
    /// Its instances are serving.
    Deployed,
    /// Its instances never became ready.
    Failed,
}

impl ReleaseStatus {
    fn as_str(self) -> &'static str {
        match self {
            ReleaseStatus::Pending => "pending",
            ReleaseStatus::Deployed => "deployed",
            ReleaseStatus::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "pending" => Ok(ReleaseStatus::Pending),
            "deployed" => Ok(ReleaseStatus::Deployed),
            "failed" => Ok(ReleaseStatus::Failed),
            other => Err(DbError::Corrupt(format!("release status {other:?}"))),
        }
    }
}

/// The database handle.
#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
}

/// Seconds since the epoch, as the database stores times.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

fn parse_name<T: FromStr>(s: String) -> Result<T> {
    s.parse()
        .map_err(|_| DbError::Corrupt(format!("name {s:?}")))
}

impl Db {
    /// Connects to the database at `url` (`sqlite://PATH?mode=rwc` or `postgres://...`) and
    /// runs pending migrations.
    pub async fn open(url: &str) -> Result<Db> {
        let backend = Backend::of_url(url).ok_or_else(|| {
            DbError::Unsupported(url.split_once(':').map_or(url, |(s, _)| s).to_owned())
        })?;
        sqlx::any::install_default_drivers();
        // One connection first: a wrong address or password fails now with the server's own
        // reason, not later as a pool timeout.
        sqlx::Connection::close(<sqlx::AnyConnection as sqlx::Connection>::connect(url).await?)
            .await?;
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // Per connection: enforce references, and wait for the writer rather
                        // than fail when two statements race.
                        sqlx::raw_sql("PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000")
                            .execute(conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        if backend == Backend::Sqlite {
            // Persistent in the file: readers never block the writer.
            sqlx::raw_sql("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        let db = Db { pool, backend };
        db.migrate().await?;
        Ok(db)
    }

    /// Opens (creating if missing) the SQLite database at `path` and runs pending migrations.
    pub async fn open_sqlite(path: &Path) -> Result<Db> {
        Db::open(&sqlite_url(path)).await
    }

    /// Which backend this database runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    async fn migrate(&self) -> Result<()> {
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY)")
            .execute(&self.pool)
            .await?;
        for (version, sql) in self.backend.migrations() {
            let mut tx = self.pool.begin().await?;
            let done = sqlx::query("SELECT 1 FROM schema_migrations WHERE version = $1")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?
                .is_some();
            if done {
                continue;
            }
            sqlx::raw_sql(*sql).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO schema_migrations (version) VALUES ($1)")
                .bind(version)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// Creates a user with one API token (given as its hash).
    pub async fn create_user(&self, name: &UserName, token_hash: &str) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let id: i64 =
            sqlx::query("INSERT INTO users (name, created_at) VALUES ($1, $2) RETURNING id")
                .bind(name.as_str())
                .bind(now())
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| {
                    if unique_violation(&e) {
                        DbError::Exists(format!("user {name}"))
                    } else {
                        e.into()
                    }
                })?
                .try_get(0)?;
        sqlx::query("INSERT INTO tokens (token_hash, user_id, created_at) VALUES ($1, $2, $3)")
            .bind(token_hash)
            .bind(id)
            .bind(now())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Adds another API token (given as its hash) for `user`.
    pub async fn add_token(&self, user: &UserName, token_hash: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO tokens (token_hash, user_id, created_at) SELECT $1, id, $2 FROM users WHERE name = $3",
        )
        .bind(token_hash)
        .bind(now())
        .bind(user.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The custom domains of `app`, sorted.
    pub async fn domains(&self, app: &AppName) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT d.host FROM domains d JOIN apps a ON a.id = d.app_id WHERE a.name = $1 ORDER BY d.host",
        )
        .bind(app.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// Routes `host` to `app`.
    pub async fn add_domain(&self, app: &AppName, host: &str) -> Result<()> {
        sqlx::query("INSERT INTO domains (host, app_id, created_at) SELECT $1, id, $2 FROM apps WHERE name = $3")
            .bind(host)
            .bind(now())
            .bind(app.as_str())
            .execute(&self.pool)
            .await
            .map_err(|e| {
                if unique_violation(&e) {
                    DbError::Exists(format!("domain {host}"))
                } else {
                    e.into()
                }
            })?;
        Ok(())
    }

    /// Stops routing `host` to `app`; whether it was.
    pub async fn remove_domain(&self, app: &AppName, host: &str) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM domains WHERE host = $1 AND app_id = (SELECT id FROM apps WHERE name = $2)",
        )
        .bind(host)
        .bind(app.as_str())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The formation of `app`: explicit quantities per process type.
    pub async fn formation(&self, app: &AppName) -> Result<BTreeMap<String, i64>> {
        let rows = sqlx::query(
            "SELECT f.process, f.quantity FROM formation f JOIN apps a ON a.id = f.app_id WHERE a.name = $1",
        )
        .bind(app.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Sets quantities for process types of `app`.
    pub async fn scale(&self, app: &AppName, quantities: &BTreeMap<String, i64>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for (process, quantity) in quantities {
            sqlx::query(
                "INSERT INTO formation (app_id, process, quantity) SELECT id, $1, $2 FROM apps WHERE name = $3 \
                 ON CONFLICT (app_id, process) DO UPDATE SET quantity = excluded.quantity",
            )
            .bind(process)
            .bind(quantity)
            .bind(app.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The resource limits of `app`'s process types that have any.
    pub async fn limits(&self, app: &AppName) -> Result<BTreeMap<String, Limits>> {
        let rows = sqlx::query(
            "SELECT l.process, l.memory_bytes, l.nano_cpus FROM limits l \
             JOIN apps a ON a.id = l.app_id WHERE a.name = $1",
        )
        .bind(app.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    Limits {
                        memory_bytes: r.try_get(1)?,
                        nano_cpus: r.try_get(2)?,
                    },
                ))
            })
            .collect()
    }

    /// Sets the limits of process types of `app`; a type with no limit left loses its row.
    pub async fn set_limits(&self, app: &AppName, limits: &BTreeMap<String, Limits>) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for (process, l) in limits {
            if *l == Limits::default() {
                sqlx::query(
                    "DELETE FROM limits WHERE process = $1 \
                     AND app_id = (SELECT id FROM apps WHERE name = $2)",
                )
                .bind(process)
                .bind(app.as_str())
                .execute(&mut *tx)
                .await?;
                continue;
            }
            sqlx::query(
                "INSERT INTO limits (app_id, process, memory_bytes, nano_cpus) \
                 SELECT id, $1, $2, $3 FROM apps WHERE name = $4 \
                 ON CONFLICT (app_id, process) DO UPDATE \
                 SET memory_bytes = excluded.memory_bytes, nano_cpus = excluded.nano_cpus",
            )
            .bind(process)
            .bind(l.memory_bytes)
            .bind(l.nano_cpus)
            .bind(app.as_str())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The HTTP path a new web instance must answer before it gets traffic, if one is set.
    pub async fn health_path(&self, app: &AppName) -> Result<Option<String>> {
        let row = sqlx::query("SELECT health_path FROM apps WHERE name = $1")
            .bind(app.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => r.try_get(0)?,
            None => None,
        })
    }

    /// Sets or clears the health check path.
    pub async fn set_health_path(&self, app: &AppName, path: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE apps SET health_path = $1 WHERE name = $2")
            .bind(path)
            .bind(app.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// One release of `app`.
    pub async fn release(
        &self,
        app: &AppName,
        version: i64,
    ) -> Result<Option<(Release, ReleaseStatus)>> {
        let row = sqlx::query(release_query("AND r.version = $2"))
            .bind(app.as_str())
            .bind(version)
            .fetch_optional(&self.pool)
            .await?;
        row.map(release_row).transpose()
    }

    /// The collaborators of `app`, by name.
    pub async fn collaborators(&self, app: &AppName) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT u.name FROM collaborators c JOIN users u ON u.id = c.user_id \
             JOIN apps a ON a.id = c.app_id WHERE a.name = $1 ORDER BY u.name",
        )
        .bind(app.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    /// Adds `user` as a collaborator on `app`; false when there is no such user.
    pub async fn add_collaborator(&self, app: &AppName, user: &UserName) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO collaborators (app_id, user_id, created_at) \
             SELECT a.id, u.id, $1 FROM apps a, users u WHERE a.name = $2 AND u.name = $3",
        )
        .bind(now())
        .bind(app.as_str())
        .bind(user.as_str())
        .execute(&self.pool)
        .await
        .map_err(|e| {
            if unique_violation(&e) {
                DbError::Exists(format!("collaborator {user} on {app}"))
            } else {
                e.into()
            }
        })?;
        Ok(done.rows_affected() > 0)
    }

    /// Removes `user` from `app`'s collaborators; whether they were one.
    pub async fn remove_collaborator(&self, app: &AppName, user: &UserName) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM collaborators WHERE app_id = (SELECT id FROM apps WHERE name = $1) \
             AND user_id = (SELECT id FROM users WHERE name = $2)",
        )
        .bind(app.as_str())
        .bind(user.as_str())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Whether `app` is in maintenance mode.
    pub async fn maintenance(&self, app: &AppName) -> Result<bool> {
        self.app_flag(app, AppFlag::Maintenance).await
    }

    /// Turns maintenance mode on or off.
    pub async fn set_maintenance(&self, app: &AppName, on: bool) -> Result<()> {
        self.set_app_flag(app, AppFlag::Maintenance, on).await
    }

    /// Whether the router redirects `app`'s plain HTTP requests to HTTPS.
    pub async fn https_enforced(&self, app: &AppName) -> Result<bool> {
        self.app_flag(app, AppFlag::HttpsEnforced).await
    }

    /// Turns the redirect to HTTPS on or off.
    pub async fn set_https_enforced(&self, app: &AppName, on: bool) -> Result<()> {
        self.set_app_flag(app, AppFlag::HttpsEnforced, on).await
    }

    /// One of the app's on/off columns; false for an app that does not exist.
    async fn app_flag(&self, app: &AppName, flag: AppFlag) -> Result<bool> {
        let row = sqlx::query(flag.select())
            .bind(app.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => r.try_get::<i64, _>(0)? != 0,
            None => false,
        })
    }

    async fn set_app_flag(&self, app: &AppName, flag: AppFlag, on: bool) -> Result<()> {
        sqlx::query(flag.update())
            .bind(i64::from(on))
            .bind(app.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The certificates of `app`, soonest to expire first; keys are not read.
    pub async fn certs(&self, app: &AppName) -> Result<Vec<CertRow>> {
        let rows = sqlx::query(
            "SELECT c.names, c.fingerprint, c.not_after, c.created_at FROM certs c JOIN apps a ON a.id = c.app_id WHERE a.name = $1 ORDER BY c.not_after, c.fingerprint",
        )
        .bind(app.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(CertRow {
                    names: split_names(&r.try_get::<String, _>(0)?),
                    fingerprint: r.try_get(1)?,
                    not_after: r.try_get(2)?,
                    created_at: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// Every app's certificates with their keys, for the router.
    pub async fn tls_certs(&self) -> Result<Vec<TlsCert>> {
        let rows =
            sqlx::query("SELECT names, fingerprint, not_after, chain_pem, key_pem FROM certs")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|r| {
                Ok(TlsCert::new(
                    split_names(&r.try_get::<String, _>(0)?),
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get(3)?,
                    r.try_get(4)?,
                ))
            })
            .collect()
    }

    /// Stores a certificate of `app`, replacing the app's certificates that cover exactly the
    /// same names (a renewal); returns how many it replaced.
    pub async fn add_cert(&self, app: &AppName, cert: &crate::certs::CheckedCert) -> Result<u64> {
        let names = cert.names.join(" ");
        let mut tx = self.pool.begin().await?;
        let app_id: i64 = sqlx::query("SELECT id FROM apps WHERE name = $1")
            .bind(app.as_str())
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        let same = sqlx::query("SELECT 1 FROM certs WHERE app_id = $1 AND fingerprint = $2")
            .bind(app_id)
            .bind(&cert.fingerprint)
            .fetch_optional(&mut *tx)
            .await?;
        if same.is_some() {
            return Err(DbError::Exists(format!("certificate {}", cert.fingerprint)));
        }
        let replaced = sqlx::query("DELETE FROM certs WHERE app_id = $1 AND names = $2")
            .bind(app_id)
            .bind(&names)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(
            "INSERT INTO certs (app_id, fingerprint, names, not_after, chain_pem, key_pem, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(app_id)
        .bind(&cert.fingerprint)
        .bind(&names)
        .bind(cert.not_after)
        .bind(&cert.chain_pem)
        .bind(&cert.key_pem)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(replaced)
    }

    /// Removes the certificate of `app` with this fingerprint; whether there was one.
    pub async fn remove_cert(&self, app: &AppName, fingerprint: &str) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM certs WHERE fingerprint = $1 AND app_id = (SELECT id FROM apps WHERE name = $2)",
        )
        .bind(fingerprint)
        .bind(app.as_str())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Appends to the audit log; `key` is the SSH key the actor used, if one acted.
    pub async fn add_event(
        &self,
        app: Option<&AppName>,
        kind: &str,
        actor: &str,
        key: Option<&Fingerprint>,
        detail: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO events (app, kind, actor, fingerprint, detail, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(app.map(AppName::as_str))
        .bind(kind)
        .bind(actor)
        .bind(key.map(Fingerprint::as_str))
        .bind(detail)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The newest `limit` events, oldest first: of one app, or of one actor, or all.
    pub async fn events(
        &self,
        app: Option<&AppName>,
        actor: Option<&str>,
        limit: i64,
    ) -> Result<Vec<EventRow>> {
        let rows = sqlx::query(
            "SELECT app, kind, actor, fingerprint, detail, created_at FROM events \
             WHERE (CAST($1 AS TEXT) IS NULL OR app = $1) \
             AND (CAST($2 AS TEXT) IS NULL OR actor = $2) \
             ORDER BY id DESC LIMIT $3",
        )
        .bind(app.map(AppName::as_str))
        .bind(actor)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut out = rows
            .into_iter()
            .map(|r| {
                Ok(EventRow {
                    app: r.try_get(0)?,
                    kind: r.try_get(1)?,
                    actor: r.try_get(2)?,
                    fingerprint: r.try_get(3)?,
                    detail: r.try_get(4)?,
                    created_at: r.try_get(5)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.reverse();
        Ok(out)
    }

    /// Whether any user exists yet.
    pub async fn has_users(&self) -> Result<bool> {
        Ok(sqlx::query("SELECT 1 FROM users LIMIT 1")
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }

    /// The user holding the token with this hash.
    pub async fn user_by_token_hash(&self, token_hash: &str) -> Result<Option<UserName>> {
        let row = sqlx::query(
            "SELECT u.name FROM tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| parse_name(r.try_get(0)?)).transpose()
    }

    /// The owner of the key with this fingerprint, and its app if it is a deploy key.
    pub async fn key_owner(&self, fp: &Fingerprint) -> Result<Option<KeyOwner>> {
        let row = sqlx::query(
            "SELECT u.name, a.name FROM keys k JOIN users u ON u.id = k.user_id \
             LEFT JOIN apps a ON a.id = k.app_id WHERE k.fingerprint = $1",
        )
        .bind(fp.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            let app: Option<String> = r.try_get(1)?;
            Ok(KeyOwner {
                user: parse_name(r.try_get(0)?)?,
                app: app.map(parse_name).transpose()?,
            })
        })
        .transpose()
    }

    /// Adds a key for `user`.
    pub async fn add_key(
        &self,
        user: &UserName,
        fp: &Fingerprint,
        public_key: &str,
        comment: &str,
        app: Option<&AppName>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO keys (fingerprint, user_id, public_key, comment, created_at, app_id) \
             SELECT $1, id, $2, $3, $4, (SELECT id FROM apps WHERE name = $5) FROM users WHERE name = $6",
        )
        .bind(fp.as_str())
        .bind(public_key)
        .bind(comment)
        .bind(now())
        .bind(app.map(AppName::as_str))
        .bind(user.as_str())
        .execute(&self.pool)
        .await
        .map_err(|e| {
            if unique_violation(&e) {
                DbError::Exists(format!("key {fp}"))
            } else {
                e.into()
            }
        })?;
        Ok(())
    }

    /// The keys of `user`.
    pub async fn keys(&self, user: &UserName) -> Result<Vec<KeyRow>> {
        let rows = sqlx::query(
            "SELECT k.fingerprint, k.public_key, k.comment, k.created_at, a.name FROM keys k \
             JOIN users u ON u.id = k.user_id LEFT JOIN apps a ON a.id = k.app_id \
             WHERE u.name = $1 ORDER BY k.created_at, k.fingerprint",
        )
        .bind(user.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(KeyRow {
                    fingerprint: r.try_get(0)?,
                    public_key: r.try_get(1)?,
                    comment: r.try_get(2)?,
                    created_at: r.try_get(3)?,
                    app: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// Removes `user`'s key; whether there was one.
    pub async fn remove_key(&self, user: &UserName, fp: &Fingerprint) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM keys WHERE fingerprint = $1 AND user_id = (SELECT id FROM users WHERE name = $2)",
        )
        .bind(fp.as_str())
        .bind(user.as_str())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Creates an app owned by `owner`.
    pub async fn create_app(&self, name: &AppName, owner: &UserName) -> Result<()> {
        sqlx::query(
            "INSERT INTO apps (name, owner_id, created_at) SELECT $1, id, $2 FROM users WHERE name = $3",
        )
        .bind(name.as_str())
        .bind(now())
        .bind(owner.as_str())
        .execute(&self.pool)
        .await
        .map_err(|e| {
            if unique_violation(&e) {
                DbError::Exists(format!("app {name}"))
            } else {
                e.into()
            }
        })?;
        Ok(())
    }

    /// An app by name.
    pub async fn app(&self, name: &AppName) -> Result<Option<AppRow>> {
        let row = sqlx::query(
            "SELECT a.name, u.name, a.created_at FROM apps a JOIN users u ON u.id = a.owner_id \
             WHERE a.name = $1",
        )
        .bind(name.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(app_row).transpose()
    }

    /// Every app, by name.
    pub async fn apps(&self) -> Result<Vec<AppRow>> {
        let rows = sqlx::query(
            "SELECT a.name, u.name, a.created_at FROM apps a JOIN users u ON u.id = a.owner_id \
             ORDER BY a.name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(app_row).collect()
    }

    /// Deletes an app with its releases; whether there was one.
    pub async fn delete_app(&self, name: &AppName) -> Result<bool> {
        let done = sqlx::query("DELETE FROM apps WHERE name = $1")
            .bind(name.as_str())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records the next release of `app`, numbered one past the latest. `make` gets the newest
    /// release that did not fail (if any) and returns the new one's contents, so a config change
    /// after a failed deploy builds on what is serving, not on the image that never started. The
    /// read and the insert share one transaction, so concurrent changes never lose each other's
    /// config.
    pub async fn add_release(
        &self,
        app: &AppName,
        make: impl FnOnce(Option<&Release>) -> NewRelease,
    ) -> Result<Release> {
        let mut tx = self.pool.begin().await?;
        // Taking SQLite's write lock first makes the read-modify-write below serial.
        sqlx::query("UPDATE apps SET created_at = created_at WHERE name = $1")
            .bind(app.as_str())
            .execute(&mut *tx)
            .await?;
        let base = sqlx::query(release_query(
            "AND r.status != 'failed' ORDER BY r.version DESC LIMIT 1",
        ))
        .bind(app.as_str())
        .fetch_optional(&mut *tx)
        .await?
        .map(release_row)
        .transpose()?;
        let last: i64 = sqlx::query(
            "SELECT COALESCE(MAX(r.version), 0) FROM releases r JOIN apps a ON a.id = r.app_id \
             WHERE a.name = $1",
        )
        .bind(app.as_str())
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
        let new = make(base.as_ref().map(|(r, _)| r));
        let release = Release {
            app: app.clone(),
            version: last + 1,
            image: new.image,
            config: new.config,
            processes: new.processes,
            commit: new.commit,
            description: new.description,
            created_by: new.created_by,
            created_at: now(),
        };
        let json = |v: &std::collections::BTreeMap<String, String>| {
            serde_json::to_string(v).map_err(|e| DbError::Corrupt(e.to_string()))
        };
        sqlx::query(
            "INSERT INTO releases (app_id, version, image, config, processes, commit_sha, \
             description, created_by, created_at, status) \
             SELECT id, $1, $2, $3, $4, $5, $6, $7, $8, $9 FROM apps WHERE name = $10",
        )
        .bind(release.version)
        .bind(&release.image)
        .bind(json(&release.config)?)
        .bind(json(&release.processes)?)
        .bind(&release.commit)
        .bind(&release.description)
        .bind(&release.created_by)
        .bind(release.created_at)
        .bind(ReleaseStatus::Pending.as_str())
        .bind(app.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(release)
    }

    /// The releases of `app`, newest first.
    pub async fn releases(&self, app: &AppName) -> Result<Vec<(Release, ReleaseStatus)>> {
        let rows = sqlx::query(release_query("ORDER BY r.version DESC"))
            .bind(app.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(release_row).collect()
    }

    /// The newest release of `app` that did not fail: the one whose config is current.
    pub async fn current_release(&self, app: &AppName) -> Result<Option<Release>> {
        let row = sqlx::query(release_query(
            "AND r.status != 'failed' ORDER BY r.version DESC LIMIT 1",
        ))
        .bind(app.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(release_row).transpose()?.map(|(r, _)| r))
    }

    /// The release the reconciler should run: the newest one with an image that has not failed.
    pub async fn target_release(&self, app: &AppName) -> Result<Option<(Release, ReleaseStatus)>> {
        let row = sqlx::query(release_query(
            "AND r.image IS NOT NULL AND r.status != 'failed' \
             ORDER BY r.version DESC LIMIT 1",
        ))
        .bind(app.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(release_row).transpose()
    }

    /// The status of one release.
    pub async fn release_status(
        &self,
        app: &AppName,
        version: i64,
    ) -> Result<Option<ReleaseStatus>> {
        Ok(self.release(app, version).await?.map(|(_, s)| s))
    }

    /// Sets a release's rollout status.
    pub async fn set_release_status(
        &self,
        app: &AppName,
        version: i64,
        status: ReleaseStatus,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE releases SET status = $1 WHERE version = $2 \
             AND app_id = (SELECT id FROM apps WHERE name = $3)",
        )
        .bind(status.as_str())
        .bind(version)
        .bind(app.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// The contents of a release about to be recorded.
#[derive(Debug, Clone)]
pub struct NewRelease {
    /// The image by digest.
    pub image: Option<String>,
    /// Config vars.
    pub config: Config,
    /// Process types.
    pub processes: ProcessTypes,
    /// The commit built.
    pub commit: Option<String>,
    /// What made it.
    pub description: String,
    /// Who made it.
    pub created_by: String,
}

/// A release query: [`RELEASE_SELECT`] followed by `tail`, both constants. Assembled from
/// constants only, so no value ever reaches the SQL text.
fn release_query(tail: &'static str) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(format!("{RELEASE_SELECT} {tail}"))
}

const RELEASE_SELECT: &str = "SELECT a.name, r.version, r.image, r.config, r.processes, \
    r.commit_sha, r.description, r.created_by, r.created_at, r.status \
    FROM releases r JOIN apps a ON a.id = r.app_id WHERE a.name = $1";

/// The names of a certificate as stored: space-separated.
fn split_names(stored: &str) -> Vec<String> {
    stored.split_whitespace().map(str::to_owned).collect()
}

fn app_row(r: AnyRow) -> Result<AppRow> {
    Ok(AppRow {
        name: parse_name(r.try_get(0)?)?,
        owner: r.try_get(1)?,
        created_at: r.try_get(2)?,
    })
}

fn release_row(r: AnyRow) -> Result<(Release, ReleaseStatus)> {
    let json = |s: String| -> Result<std::collections::BTreeMap<String, String>> {
        serde_json::from_str(&s).map_err(|e| DbError::Corrupt(e.to_string()))
    };
    let release = Release {
        app: parse_name(r.try_get(0)?)?,
        version: r.try_get(1)?,
        image: r.try_get(2)?,
        config: json(r.try_get(3)?)?,
        processes: json(r.try_get(4)?)?,
        commit: r.try_get(5)?,
        description: r.try_get(6)?,
        created_by: r.try_get(7)?,
        created_at: r.try_get(8)?,
    };
    let status: String = r.try_get(9)?;
    Ok((release, ReleaseStatus::parse(&status)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh SQLite database, and, when `SLIPWAY_TEST_POSTGRES` names a server
    /// (`postgres://user:pass@host:port`, as `scripts/postgres.sh` prints), a fresh PostgreSQL
    /// database on it too: every test runs on each.
    async fn fresh() -> (tempfile::TempDir, Vec<Db>) {
        let dir = tempfile::tempdir().unwrap();
        let mut dbs = vec![
            Db::open_sqlite(&dir.path().join("db.sqlite"))
                .await
                .unwrap(),
        ];
        if let Ok(base) = std::env::var("SLIPWAY_TEST_POSTGRES") {
            dbs.push(Db::open(&fresh_postgres(&base).await).await.unwrap());
        }
        (dir, dbs)
    }

    async fn fresh_postgres(base: &str) -> String {
        sqlx::any::install_default_drivers();
        let name = format!("slipway_unit_{}", hex::encode(rand::random::<[u8; 6]>()));
        let admin = AnyPool::connect(&format!("{base}/postgres")).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .unwrap();
        format!("{base}/{name}")
    }

    #[tokio::test]
    async fn migrations_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db with 'odd' #name?.sqlite");
        drop(Db::open_sqlite(&path).await.unwrap());
        Db::open_sqlite(&path).await.unwrap();
        assert!(path.exists());
        if let Ok(base) = std::env::var("SLIPWAY_TEST_POSTGRES") {
            let url = fresh_postgres(&base).await;
            drop(Db::open(&url).await.unwrap());
            assert_eq!(Db::open(&url).await.unwrap().backend(), Backend::Postgres);
        }
    }

    #[test]
    fn both_backends_have_the_same_migrations() {
        let versions = |m: &[(i64, &str)]| m.iter().map(|(v, _)| *v).collect::<Vec<_>>();
        assert_eq!(versions(SQLITE_MIGRATIONS), versions(POSTGRES_MIGRATIONS));
        // 1, 2, 3, ... with no gap: a migration is never skipped or applied out of order.
        let expected: Vec<i64> = (1..=SQLITE_MIGRATIONS.len() as i64).collect();
        assert_eq!(versions(SQLITE_MIGRATIONS), expected);
    }

    #[test]
    fn backends_by_url() {
        assert_eq!(Backend::of_url("postgres://h/db"), Some(Backend::Postgres));
        assert_eq!(
            Backend::of_url("postgresql://h/db"),
            Some(Backend::Postgres)
        );
        assert_eq!(
            Backend::of_url("sqlite:///x?mode=rwc"),
            Some(Backend::Sqlite)
        );
        assert_eq!(Backend::of_url("mysql://h/db"), None);
        assert_eq!(Backend::of_url("nothing"), None);
    }

    #[tokio::test]
    async fn events_keep_the_key_a_push_came_from() {
        let (_dir, dbs) = fresh().await;
        let app: AppName = "web".parse().unwrap();
        let key: Fingerprint = "SHA256:2Wq0ycrMuyHQ6Qq6rYBeHdKwnSGBwNH3GJtOYSjATjI"
            .parse()
            .unwrap();
        for db in dbs {
            db.add_event(
                Some(&app),
                "release",
                "alice",
                Some(&key),
                "v1: deploy abc1234",
            )
            .await
            .unwrap();
            db.add_event(Some(&app), "access", "alice", None, "added bob")
                .await
                .unwrap();
            let events = db.events(Some(&app), None, 10).await.unwrap();
            let keys: Vec<_> = events
                .iter()
                .map(|e| (e.kind.as_str(), e.fingerprint.as_deref()))
                .collect();
            assert_eq!(
                keys,
                [("release", Some(key.as_str())), ("access", None)],
                "{:?}",
                db.backend()
            );
        }
    }

    #[tokio::test]
    async fn users_keys_apps_releases() {
        let (_dir, dbs) = fresh().await;
        for db in dbs {
            users_keys_apps_releases_on(db).await;
        }
    }

    async fn users_keys_apps_releases_on(db: Db) {
        let admin: UserName = "admin".parse().unwrap();
        db.create_user(&admin, "h1").await.unwrap();
        assert!(matches!(
            db.create_user(&admin, "h2").await,
            Err(DbError::Exists(_))
        ));
        assert_eq!(
            db.user_by_token_hash("h1").await.unwrap(),
            Some(admin.clone())
        );
        assert_eq!(db.user_by_token_hash("nope").await.unwrap(), None);

        let fp: Fingerprint = "SHA256:eYDXum8idINQ8AP/VNoA/k7PGqZTO212zbq3BDQbDHc"
            .parse()
            .unwrap();
        db.add_key(&admin, &fp, "ssh-ed25519 AAAA", "c", None)
            .await
            .unwrap();
        assert!(matches!(
            db.add_key(&admin, &fp, "x", "c", None).await,
            Err(DbError::Exists(_))
        ));
        assert_eq!(
            db.key_owner(&fp).await.unwrap(),
            Some(KeyOwner {
                user: admin.clone(),
                app: None
            })
        );

        let app: AppName = "web".parse().unwrap();
        db.create_app(&app, &admin).await.unwrap();
        let make = |desc: &str, image: Option<&str>| {
            let desc = desc.to_owned();
            let image = image.map(str::to_owned);
            move |prev: Option<&Release>| NewRelease {
                image: image.or_else(|| prev.and_then(|p| p.image.clone())),
                config: prev.map(|p| p.config.clone()).unwrap_or_default(),
                processes: Default::default(),
                commit: None,
                description: desc,
                created_by: "admin".into(),
            }
        };
        let v1 = db.add_release(&app, make("set A", None)).await.unwrap();
        assert_eq!(v1.version, 1);
        assert!(db.target_release(&app).await.unwrap().is_none());
        let v2 = db
            .add_release(&app, make("deploy", Some("img@sha256:1")))
            .await
            .unwrap();
        assert_eq!(v2.version, 2);
        db.set_release_status(&app, 2, ReleaseStatus::Failed)
            .await
            .unwrap();
        assert!(db.target_release(&app).await.unwrap().is_none());
        // v2 failed: a config change builds on v1 (no image), numbered after v2.
        let v3 = db.add_release(&app, make("set B", None)).await.unwrap();
        assert_eq!((v3.version, v3.image.as_deref()), (3, None));
        let v4 = db
            .add_release(&app, make("deploy", Some("img@sha256:2")))
            .await
            .unwrap();
        let v5 = db.add_release(&app, make("set C", None)).await.unwrap();
        assert_eq!((v4.version, v5.version), (4, 5));
        assert_eq!(v5.image.as_deref(), Some("img@sha256:2"));
        let web_limits = Limits {
            memory_bytes: Some(512 << 20),
            nano_cpus: None,
        };
        db.set_limits(&app, &BTreeMap::from([("web".to_owned(), web_limits)]))
            .await
            .unwrap();
        assert_eq!(db.limits(&app).await.unwrap()["web"], web_limits);
        db.set_limits(
            &app,
            &BTreeMap::from([("web".to_owned(), Limits::default())]),
        )
        .await
        .unwrap();
        assert!(db.limits(&app).await.unwrap().is_empty());
        assert_eq!(db.health_path(&app).await.unwrap(), None);
        db.set_health_path(&app, Some("/up")).await.unwrap();
        assert_eq!(db.health_path(&app).await.unwrap().as_deref(), Some("/up"));
        certs_on(&db, &app).await;
        let (target, status) = db.target_release(&app).await.unwrap().unwrap();
        assert_eq!((target.version, status), (5, ReleaseStatus::Pending));
        assert_eq!(db.releases(&app).await.unwrap().len(), 5);
        assert!(db.delete_app(&app).await.unwrap());
        assert!(db.releases(&app).await.unwrap().is_empty());
        assert!(db.tls_certs().await.unwrap().is_empty());
    }

    /// Certificates and the HTTPS redirect of `app`, which exists.
    async fn certs_on(db: &Db, app: &AppName) {
        use crate::certs::{check, tests::self_signed};
        let now = now();
        let (pem, key) = self_signed(&["www.example.com", "example.com"], -1, 30);
        let first = check(&pem, &key, now).unwrap();
        assert_eq!(db.add_cert(app, &first).await.unwrap(), 0);
        assert!(matches!(
            db.add_cert(app, &first).await,
            Err(DbError::Exists(_))
        ));
        // The same names again: a renewal replaces the first.
        let (pem, key) = self_signed(&["www.example.com", "example.com"], -1, 60);
        let renewed = check(&pem, &key, now).unwrap();
        assert_eq!(db.add_cert(app, &renewed).await.unwrap(), 1);
        let (pem, key) = self_signed(&["*.example.com"], -1, 10);
        let wild = check(&pem, &key, now).unwrap();
        assert_eq!(db.add_cert(app, &wild).await.unwrap(), 0);

        let listed = db.certs(app).await.unwrap();
        let fps: Vec<&str> = listed.iter().map(|c| c.fingerprint.as_str()).collect();
        assert_eq!(
            fps,
            [wild.fingerprint.as_str(), renewed.fingerprint.as_str()]
        );
        assert_eq!(listed[1].names, ["www.example.com", "example.com"]);
        let all = db.tls_certs().await.unwrap();
        assert_eq!(all.len(), 2);
        assert!(all.iter().all(|c| c.key_pem().contains("PRIVATE KEY")));

        assert!(db.remove_cert(app, &wild.fingerprint).await.unwrap());
        assert!(!db.remove_cert(app, &wild.fingerprint).await.unwrap());
        assert_eq!(db.certs(app).await.unwrap().len(), 1);

        assert!(!db.https_enforced(app).await.unwrap());
        db.set_https_enforced(app, true).await.unwrap();
        assert!(db.https_enforced(app).await.unwrap());
    }
}
