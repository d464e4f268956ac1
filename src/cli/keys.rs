//! `t2i-align keys create|list|revoke`: API keys in the database, without a server. This is how the first key
//! of a deployment is made (or use a bootstrap key from T2I_API_KEYS); a running server's replicas pick up each
//! change within their `--key-refresh`. The same operations exist over HTTP for admin keys (`/keys`).

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::error::{Error, Result};
use crate::http::auth::{Caller, Scope, DEFAULT_TENANT};
use crate::http::keys::{new_key, CreateKey, KeyOut, ScopeName};
use crate::storage::{now_millis, Database, NewAudit, Storage};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a key and print its secret (shown this once) on stdout; its record goes to stderr.
    Create(CreateArgs),
    /// List every key (never a secret) as JSON lines.
    List(ListArgs),
    /// Revoke a key by id; every replica refuses it within its --key-refresh.
    Revoke(RevokeArgs),
}

/// The database the server uses: the same flags and variables as `serve`.
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// The server's data directory (its SQLite database, unless --database-url names another).
    #[arg(long, env = "T2I_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// The server's database: `sqlite://<file>` or `postgres://user:password@host:port/database`.
    #[arg(long, env = "T2I_DATABASE_URL")]
    pub database_url: Option<String>,
}

impl DatabaseArgs {
    async fn open(&self) -> Result<Storage> {
        let database = Database::from_url(self.database_url.as_deref(), &self.data_dir)?;
        Storage::connect_database(&database, &self.data_dir).await
    }
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// What the key is for (1 to 64 characters).
    #[arg(long)]
    pub name: String,
    /// The tenant that owns what the key creates.
    #[arg(long, default_value = DEFAULT_TENANT)]
    pub tenant: String,
    /// Comma-separated scopes: inference, feedback, fine-tune, admin.
    #[arg(long, value_delimiter = ',', required = true)]
    pub scopes: Vec<String>,
    /// Days until the key stops working (default: never).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub expires_in_days: Option<u32>,
    /// This key's requests per minute, in place of the server's --rate-limit-requests (0: no limit).
    #[arg(long)]
    pub requests_per_minute: Option<u32>,
    /// This key's generation work per minute in pixel-steps, in place of --rate-limit-work (0: no limit).
    #[arg(long)]
    pub work_per_minute: Option<u64>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Only this tenant's keys.
    #[arg(long)]
    pub tenant: Option<String>,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The key's id (`key_...`, from `keys list`).
    pub id: String,
}

pub fn run(command: KeysCommand) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| Error::Internal(format!("cannot start the async runtime: {err}")))?;
    runtime.block_on(run_async(command))
}

fn json_line(key: KeyOut) -> Result<String> {
    serde_json::to_string(&key).map_err(|err| Error::Internal(format!("cannot write the key as JSON: {err}")))
}

/// The command line acts as an admin of the key's tenant, with no key name.
fn cli_caller(tenant: &str) -> Caller {
    Caller {
        key_id: None,
        key_name: None,
        tenant: tenant.to_string(),
        scopes: [Scope::Admin].into_iter().collect(),
        limits: Default::default(),
        client: None,
    }
}

async fn run_async(command: KeysCommand) -> Result<()> {
    match command {
        KeysCommand::Create(args) => {
            let mut scopes = Vec::new();
            for name in &args.scopes {
                let scope: ScopeName = serde_json::from_value(serde_json::Value::String(name.trim().to_string()))
                    .map_err(|_| {
                        Error::Config(format!(
                            "--scopes: unknown scope `{name}`; the scopes are {}",
                            Scope::NAMES
                        ))
                    })?;
                scopes.push(scope);
            }
            let now = now_millis();
            let request = CreateKey {
                name: args.name.clone(),
                tenant: Some(args.tenant.clone()),
                scopes,
                expires_in_seconds: args.expires_in_days.map(|days| u64::from(days) * 86_400),
                rate_limit: (args.requests_per_minute.is_some() || args.work_per_minute.is_some()).then_some(
                    crate::http::keys::KeyRateLimit {
                        requests_per_minute: args.requests_per_minute,
                        work_per_minute: args.work_per_minute,
                    },
                ),
            };
            let (key, secret) = new_key(&request, DEFAULT_TENANT, None, now).map_err(|err| {
                Error::Config(format!("--{}: {err}", err.param().unwrap_or("name").replace('_', "-")))
            })?;
            let storage = args.database.open().await?;
            let stored = storage.insert_key(&key).await?;
            let caller = cli_caller(&stored.tenant);
            storage
                .audit(&NewAudit {
                    key_name: caller.key_name.as_deref(),
                    tenant: &caller.tenant,
                    action: "key.create",
                    target: &stored.id,
                    detail: Some(serde_json::json!({"name": stored.name, "tenant": stored.tenant,
                        "scopes": stored.scopes, "via": "cli"})),
                })
                .await?;
            eprintln!("{}", json_line(KeyOut::from(stored))?);
            eprintln!("The secret below is shown once and is not stored; keep it now.");
            println!("{secret}");
        }
        KeysCommand::List(args) => {
            let storage = args.database.open().await?;
            for key in storage.list_keys(args.tenant.as_deref()).await? {
                println!("{}", json_line(KeyOut::from(key))?);
            }
        }
        KeysCommand::Revoke(args) => {
            let storage = args.database.open().await?;
            let revoked = storage
                .revoke_key(&args.id)
                .await?
                .ok_or_else(|| Error::Config(format!("no API key `{}` in this database", args.id)))?;
            storage
                .audit(&NewAudit {
                    key_name: None,
                    tenant: &revoked.tenant,
                    action: "key.revoke",
                    target: &revoked.id,
                    detail: Some(serde_json::json!({"name": revoked.name, "via": "cli"})),
                })
                .await?;
            println!("{}", json_line(KeyOut::from(revoked))?);
        }
    }
    Ok(())
}
