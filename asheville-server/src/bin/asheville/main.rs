//! `asheville`: store directories in an Asheville repository and get them back.
//!
//! With no configuration it uses `./asheville-data`: three local backends
//! with `rs(2,1)`, created on first use. The tenant's passphrase comes from
//! `ASHEVILLE_PASSPHRASE` or `--passphrase-file`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use asheville_core::Redundancy;
use asheville_storage::tree::{self, Progress, PutOptions};
use asheville_storage::{Entry, Error, ErrorKind, RepoConfig, Repository, Tenant, TenantKey};
use clap::{Parser, Subcommand};

mod sync_cmd;
mod usage_cmd;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "asheville",
    version,
    about = "Encrypted, deduplicated, erasure-coded storage over many backends"
)]
struct Cli {
    /// Repository directory (catalog and, by default, the local backends).
    #[arg(
        long,
        global = true,
        env = "ASHEVILLE_DATA",
        default_value = "asheville-data"
    )]
    data_dir: PathBuf,
    /// Tenant to act as.
    #[arg(
        long,
        global = true,
        env = "ASHEVILLE_TENANT",
        default_value = "default"
    )]
    tenant: String,
    /// File holding the passphrase (else $ASHEVILLE_PASSPHRASE).
    #[arg(long, global = true)]
    passphrase_file: Option<PathBuf>,
    /// Machine-readable JSON output, no progress bars.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a repository (done automatically by the first `put`).
    Init {
        /// Redundancy of every pack: none, replicas(N), rs(K,M).
        #[arg(long, default_value = "rs(2,1)")]
        redundancy: Redundancy,
        /// Number of local backends under the data directory.
        #[arg(long, default_value_t = 3)]
        backends: usize,
        /// A JSON repository config instead (backends, redundancy, ...).
        #[arg(long, conflicts_with_all = ["redundancy", "backends"])]
        config: Option<PathBuf>,
    },
    /// Store a file or a directory (recursively).
    Put {
        /// Local file or directory.
        local: PathBuf,
        /// Where in the repository (default: the local name).
        remote: Option<String>,
        /// Commit after this many files (a crash loses at most the two
        /// batches not yet committed).
        #[arg(long, default_value_t = 10_000)]
        batch_files: usize,
        /// Read and store every file, also those whose size, mtime and mode
        /// match their latest version (which are left alone by default).
        #[arg(long)]
        rehash: bool,
    },
    /// Restore a file or a directory tree.
    Get {
        /// Path in the repository.
        remote: String,
        /// Local destination.
        local: PathBuf,
        /// Write files over 1 MiB back to the disk as they are restored and
        /// drop them from the page cache once written, so what the machine
        /// was caching stays cached. Slower where free memory is quick to
        /// take (the restore waits for the disk), quicker where it is not.
        #[arg(long)]
        drop_behind: bool,
    },
    /// List a directory.
    Ls {
        /// Directory (default: the root).
        #[arg(default_value = "/")]
        path: String,
        /// Recurse into subdirectories.
        #[arg(short = 'R', long)]
        recursive: bool,
        /// Entries per page (all pages are printed).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Delete a file (its versions stay until retention removes them).
    Rm {
        /// Path.
        path: String,
    },
    /// Show every version of a file.
    Versions {
        /// Path.
        path: String,
    },
    /// Show a file's metadata.
    Stat {
        /// Path.
        path: String,
    },
    /// Check that every shard of every pack is where the catalog says
    /// (needs no passphrase). Exit status 1 if data is at risk.
    Check {
        /// Download every shard and verify its checksum.
        #[arg(long)]
        read_data: bool,
    },
    /// Rebuild missing or corrupt shards from the survivors (needs no
    /// passphrase). Safe to interrupt and rerun.
    Repair,
    /// Forget old versions (retention). The latest version of a live file
    /// is always kept; what is forgotten becomes garbage for `gc`.
    Forget {
        /// Apply to files under this path.
        #[arg(default_value = "/")]
        path: String,
        /// Keep the newest N versions of each file.
        #[arg(long)]
        keep_last: Option<usize>,
        /// Keep versions newer than this: 45s, 30m, 12h, 7d.
        #[arg(long, value_parser = parse_duration_ns)]
        keep_within: Option<i64>,
    },
    /// Move shards to where placement now puts them. With `--config`,
    /// first apply that file's backends (add, re-weight, drain with weight
    /// 0, remove). Needs no passphrase.
    Rebalance {
        /// A repository config whose `backends` replace the current ones.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Reclaim space: condemn dead packs, repack mostly-dead ones, and
    /// delete packs condemned longer ago than the grace period.
    Gc {
        /// Grace period before a condemned pack is deleted: 45s, 30m, 12h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_duration_ns)]
        grace: i64,
        /// Repack packs whose live share is below this fraction.
        #[arg(long, default_value_t = 0.5)]
        repack_below: f64,
    },
    /// Write the tenant's files, every version, to one archive (plaintext:
    /// protect it). `-` writes to standard output.
    Export {
        /// Archive file, or `-`.
        file: PathBuf,
    },
    /// Read an archive made by `export` into the tenant; nothing is
    /// imported unless the whole archive verifies. `-` reads standard input.
    Import {
        /// Archive file, or `-`.
        file: PathBuf,
    },
    /// Sources a user syncs from (local directories, buckets).
    Source {
        /// The user whose sources these are.
        #[arg(long, global = true, env = "ASHEVILLE_USER", default_value = "default")]
        user: String,
        #[command(subcommand)]
        cmd: sync_cmd::SourceCmd,
    },
    /// Sync a user's sources (all, or the named ones) into the repository:
    /// only what changed since the last sync moves. Runs the jobs here and
    /// waits, unless `--detach` (then `asheville worker` runs them).
    Sync {
        /// Source names (default: all of the user's).
        sources: Vec<String>,
        /// The user.
        #[arg(long, env = "ASHEVILLE_USER", default_value = "default")]
        user: String,
        /// Only queue the jobs.
        #[arg(long)]
        detach: bool,
        /// Jobs run at once.
        #[arg(long, default_value_t = 2)]
        workers: usize,
    },
    /// Run the HTTP server (files, syncs, usage, tokens, events, status
    /// page) until Ctrl-C or SIGTERM. Prints its URL, and on first start
    /// an admin token.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080", env = "ASHEVILLE_LISTEN")]
        listen: std::net::SocketAddr,
        /// Sync jobs run at once in this process.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Serve a tenant by `Host`: `files.example.com=acme` (repeatable).
        #[arg(long = "host-tenant", value_name = "HOST=TENANT")]
        host_tenant: Vec<String>,
        /// Connections served at once.
        #[arg(long, default_value_t = 1024)]
        max_connections: usize,
        /// Requests per second per tenant.
        #[arg(long, default_value_t = 2000.0)]
        rate: f64,
    },
    /// Run queued sync jobs and periodic syncs until Ctrl-C.
    Worker {
        /// Jobs run at once.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Exit when no job is queued, running or waiting to retry.
        #[arg(long)]
        until_idle: bool,
    },
    /// Usage of the tenant per hour, day or month.
    Usage {
        /// Meter (`storage.bytes_ingested`, `storage.bytes_served`,
        /// `storage.bytes_stored`, `storage.bytes_stored.logical`,
        /// `sync.items`, `sync.bytes`, `api.requests`).
        #[arg(long, default_value = "storage.bytes_ingested")]
        meter: String,
        /// Row size.
        #[arg(long, default_value = "day", value_parser = ["hour", "day", "month"])]
        granularity: String,
        /// One dimension (`user=alice`); default: the tenant's total.
        #[arg(long, default_value = "")]
        dims: String,
    },
    /// The invoice of a month under a price plan (JSON file).
    Invoice {
        /// Month, `YYYY-MM`.
        period: String,
        /// Price plan (JSON).
        #[arg(long)]
        plan: PathBuf,
        /// CSV instead of a table (`--json` for JSON).
        #[arg(long)]
        csv: bool,
    },
    /// Show or set the tenant's quota.
    Quota {
        /// Logical bytes stored at most.
        #[arg(long)]
        max_stored: Option<u64>,
        /// Bytes written per UTC day at most.
        #[arg(long)]
        max_ingest_per_day: Option<u64>,
        /// Remove the quota.
        #[arg(long, conflicts_with_all = ["max_stored", "max_ingest_per_day"])]
        clear: bool,
    },
    /// Show, cancel or restart a sync job; list dead letters.
    Job {
        #[command(subcommand)]
        cmd: sync_cmd::JobCmd,
    },
    /// Make a new catalog from the backends alone (after losing it). Reads
    /// the config from `--config` or from a local backend's `config.json`
    /// under the data directory; adopts `--tenant` with the passphrase.
    RebuildCatalog {
        /// The repository config (JSON) naming the backends.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn passphrase(cli: &Cli) -> Result<String, Error> {
    if let Some(f) = &cli.passphrase_file {
        let s = std::fs::read_to_string(f).map_err(|e| {
            Error::io("cannot read the passphrase file", e).with_context("file", f.display())
        })?;
        return Ok(s.trim_end_matches(['\n', '\r']).to_owned());
    }
    match std::env::var("ASHEVILLE_PASSPHRASE") {
        Ok(p) if !p.is_empty() => Ok(p),
        _ => Err(Error::new(
            ErrorKind::InvalidInput,
            "no passphrase: set ASHEVILLE_PASSPHRASE or pass --passphrase-file FILE",
        )),
    }
}

/// `45s`, `30m`, `12h`, `7d` as nanoseconds.
fn parse_duration_ns(s: &str) -> Result<i64, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a number followed by s, m, h or d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{s}`: the unit must be s, m, h or d")),
    };
    n.checked_mul(secs * 1_000_000_000)
        .ok_or_else(|| format!("`{s}` is too long"))
}

fn read_json<T: serde::de::DeserializeOwned>(f: &Path) -> Result<T, Error> {
    let text = std::fs::read(f)
        .map_err(|e| Error::io("cannot read config", e).with_context("file", f.display()))?;
    serde_json::from_slice(&text).map_err(|e| {
        Error::new(ErrorKind::InvalidInput, "config does not parse")
            .with_context("file", f.display())
            .set_source(e)
    })
}

fn catalog_path(dir: &Path) -> PathBuf {
    dir.join("catalog.redb")
}

fn absolute(dir: &Path) -> Result<PathBuf, Error> {
    std::path::absolute(dir).map_err(|e| Error::io("cannot resolve the data directory", e))
}

async fn init(cli: &Cli, config: RepoConfig) -> Result<Tenant, Error> {
    let pw = passphrase(cli)?;
    let repo = Repository::create(&catalog_path(&cli.data_dir), config).await?;
    let _small = SmallPagesWhile::unlocking();
    repo.create_tenant(&cli.tenant, TenantKey::Passphrase(pw))
        .await
}

fn default_config(
    dir: &Path,
    redundancy: Redundancy,
    backends: usize,
) -> Result<RepoConfig, Error> {
    let mut c = RepoConfig::local(absolute(dir)?, backends, redundancy);
    // Tests set this to keep Argon2id cheap; never set it for real keys.
    if std::env::var_os("ASHEVILLE_INSECURE_FAST_KDF").is_some() {
        c.kdf = asheville_core::KdfParams::INSECURE_FAST_FOR_TESTS;
    }
    Ok(c)
}

/// The tenant, metered into `<data-dir>/meters.redb` (and held to its
/// quota, if one is set with `asheville quota`).
async fn open(cli: &Cli, create_if_missing: bool) -> Result<Tenant, Error> {
    let t = open_unmetered(cli, create_if_missing).await?;
    Ok(t.with_meter(usage_cmd::meters(cli)?))
}

async fn open_unmetered(cli: &Cli, create_if_missing: bool) -> Result<Tenant, Error> {
    let cat = catalog_path(&cli.data_dir);
    if !cat.exists() && create_if_missing {
        if !cli.json {
            eprintln!(
                "note: creating a new repository in {} (3 local backends, rs(2,1))",
                cli.data_dir.display()
            );
        }
        return init(cli, default_config(&cli.data_dir, "rs(2,1)".parse()?, 3)?).await;
    }
    let repo = Repository::open(&cat).await?;
    unlock(cli, &repo, create_if_missing).await
}

/// The tenant of `repo` the CLI acts as, unlocked with the passphrase
/// (Argon2id), or created if missing and `create_if_missing`.
async fn unlock(cli: &Cli, repo: &Repository, create_if_missing: bool) -> Result<Tenant, Error> {
    let pw = passphrase(cli)?;
    let _small = SmallPagesWhile::unlocking();
    match repo
        .tenant(&cli.tenant, TenantKey::Passphrase(pw.clone()))
        .await
    {
        Err(e) if e.kind() == ErrorKind::NotFound && create_if_missing => {
            repo.create_tenant(&cli.tenant, TenantKey::Passphrase(pw))
                .await
        }
        r => r,
    }
}

struct Bar(ProgressBar);

impl Bar {
    fn new(json: bool) -> Bar {
        let pb = ProgressBar::with_draw_target(
            None,
            if json {
                ProgressDrawTarget::hidden()
            } else {
                ProgressDrawTarget::stderr()
            },
        );
        pb.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Bar(pb)
    }
}

impl Bar {
    /// A bar for maintenance work, which counts packs, not bytes.
    fn packs(json: bool) -> Bar {
        let bar = Bar::new(json);
        bar.0.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {pos} packs {per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar
    }
}

impl Progress for Bar {
    fn start(&self, files: u64, bytes: u64) {
        self.0.set_length(bytes);
        self.0.set_message(format!("0/{files} files"));
    }
    fn file_done(&self, _path: &str, bytes: u64) {
        self.0.inc(bytes);
    }
    fn skipped(&self, path: &str, why: &str) {
        self.0.suspend(|| eprintln!("skipped {path}: {why}"));
    }
}

fn mb_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs.max(1e-9) / 1e6
}

fn print_json(v: &serde_json::Value) {
    println!("{v}");
}

async fn run(cli: &Cli) -> Result<ExitCode, Error> {
    match &cli.cmd {
        Cmd::Init {
            redundancy,
            backends,
            config,
        } => {
            let config = match config {
                Some(f) => read_json(f)?,
                None => default_config(&cli.data_dir, *redundancy, *backends)?,
            };
            init(cli, config).await?;
            if cli.json {
                print_json(&serde_json::json!({"created": cli.data_dir, "tenant": cli.tenant}));
            } else {
                println!(
                    "created repository in {} with tenant {}",
                    cli.data_dir.display(),
                    cli.tenant
                );
            }
        }
        Cmd::Put {
            local,
            remote,
            batch_files,
            rehash,
        } => {
            let remote = match remote {
                Some(r) => r.clone(),
                None => local
                    .canonicalize()
                    .map_err(|e| Error::io("cannot stat", e).with_context("path", local.display()))?
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "give a remote path"))?,
            };
            // Walk the tree while the repository opens (Argon2id takes
            // about as long as walking 20,000 files), and leave out the
            // files the catalog has unchanged (it needs no key).
            let walk = async {
                tokio::task::spawn_blocking({
                    let local = local.clone();
                    move || tree::LocalListing::new(&local)
                })
                .await
                .map_err(|e| {
                    Error::new(ErrorKind::Other, "the directory walk panicked").set_source(e)
                })?
            };
            let cat = catalog_path(&cli.data_dir);
            let (t, listing) = if cat.exists() {
                let repo = Repository::open(&cat).await?;
                let check = async {
                    let mut listing = walk.await?;
                    if !*rehash {
                        listing
                            .leave_out_unchanged(&repo, &cli.tenant, &remote)
                            .await?;
                    }
                    Ok::<_, Error>(listing)
                };
                let (t, listing) = futures::future::join(unlock(cli, &repo, true), check).await;
                (t?.with_meter(usage_cmd::meters(cli)?), listing?)
            } else {
                let (t, listing) = futures::future::join(open(cli, true), walk).await;
                (t?, listing?)
            };
            let bar = Bar::new(cli.json);
            let opts = PutOptions {
                batch_files: (*batch_files).max(1),
                skip_unchanged: !*rehash,
                ..PutOptions::default()
            };
            let r = tree::put_listed(&t, listing, &remote, opts, &bar).await?;
            bar.0.finish_and_clear();
            if cli.json {
                print_json(
                    &serde_json::json!({"files": r.files, "bytes": r.bytes, "unchanged": r.unchanged, "unchanged_bytes": r.unchanged_bytes, "seconds": r.seconds, "skipped": r.skipped, "remote": remote}),
                );
            } else {
                println!(
                    "stored {} files, {} bytes under /{} ({} unchanged files left alone) in {:.2} s ({:.0} MB/s, {:.0} files/s)",
                    r.files,
                    r.bytes,
                    remote.trim_start_matches('/'),
                    r.unchanged,
                    r.seconds,
                    mb_s(r.bytes, r.seconds),
                    r.files as f64 / r.seconds.max(1e-9)
                );
            }
        }
        Cmd::Get {
            remote,
            local,
            drop_behind,
        } => {
            // Plan the restore (catalog lookups, which need no key) while
            // Argon2id unlocks the tenant; a wrong passphrase still fails
            // before anything is written or shown.
            let repo = Repository::open(&catalog_path(&cli.data_dir)).await?;
            let (t, plan) = futures::future::join(
                unlock(cli, &repo, false),
                tree::RestorePlan::new(&repo, &cli.tenant, remote),
            )
            .await;
            let t = t?.with_meter(usage_cmd::meters(cli)?);
            let plan = plan?.drop_behind(*drop_behind);
            let bar = Bar::new(cli.json);
            let r = tree::get_planned(&t, plan, local, &bar).await?;
            bar.0.finish_and_clear();
            if cli.json {
                print_json(
                    &serde_json::json!({"files": r.files, "bytes": r.bytes, "seconds": r.seconds}),
                );
            } else {
                println!(
                    "restored {} files, {} bytes to {} in {:.2} s ({:.0} MB/s)",
                    r.files,
                    r.bytes,
                    local.display(),
                    r.seconds,
                    mb_s(r.bytes, r.seconds)
                );
            }
        }
        Cmd::Ls {
            path,
            recursive,
            limit,
        } => {
            let t = open(cli, false).await?;
            let depth = if *recursive { usize::MAX } else { 1 };
            let mut cursor: Option<String> = None;
            let mut all = Vec::new();
            loop {
                let page = t.list(path, depth, cursor.as_deref(), *limit)?;
                for e in &page.entries {
                    if cli.json {
                        all.push(serde_json::to_value(e).unwrap_or_default());
                    } else {
                        match e {
                            Entry::File {
                                path,
                                size,
                                version,
                                ..
                            } => println!("{size:>14}  v{version:<4} /{path}"),
                            Entry::Dir { path } => println!("{:>14}  {:<5} /{path}/", "-", "dir"),
                        }
                    }
                }
                cursor = page.cursor;
                if cursor.is_none() {
                    break;
                }
            }
            if cli.json {
                print_json(&serde_json::Value::Array(all));
            }
        }
        Cmd::Rm { path } => {
            let t = open(cli, false).await?;
            t.delete(path).await?;
            if cli.json {
                print_json(&serde_json::json!({"deleted": path}));
            }
        }
        Cmd::Versions { path } => {
            let t = open(cli, false).await?;
            let vs = t.versions(path)?;
            if vs.is_empty() {
                return Err(
                    Error::new(ErrorKind::NotFound, "no such file").with_context("path", path)
                );
            }
            if cli.json {
                let v: Vec<_> = vs.iter().map(|v| serde_json::json!({"version": v.version, "size": v.size, "created_ns": v.created_ns, "mtime_ns": v.meta.mtime_ns})).collect();
                print_json(&serde_json::Value::Array(v));
            } else {
                for v in vs {
                    println!(
                        "v{:<4} {:>14} bytes  committed {} ns",
                        v.version, v.size, v.created_ns
                    );
                }
            }
        }
        Cmd::Check { read_data } => {
            let repo = Repository::open(&catalog_path(&cli.data_dir)).await?;
            let bar = Bar::packs(cli.json);
            let r = repo.check(*read_data, &bar).await?;
            bar.0.finish_and_clear();
            if cli.json {
                print_json(&serde_json::to_value(&r).unwrap_or_default());
            } else {
                for p in &r.problems {
                    println!(
                        "{:?}: pack {} shard {} on {}: {}",
                        p.kind,
                        p.pack.map(|p| p.to_hex()).unwrap_or_else(|| "-".into()),
                        p.shard.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                        p.backend.as_deref().unwrap_or("-"),
                        p.detail
                    );
                }
                println!(
                    "checked {} packs, {} shards{}: {} problems",
                    r.packs,
                    r.shards,
                    if *read_data {
                        format!(", {} bytes read", r.bytes_read)
                    } else {
                        String::new()
                    },
                    r.problems.len()
                );
            }
            if !r.is_healthy() {
                if !cli.json {
                    eprintln!(
                        "error: check found problems that put data at risk; run `asheville repair`"
                    );
                }
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Repair => {
            let repo = Repository::open(&catalog_path(&cli.data_dir)).await?;
            let bar = Bar::packs(cli.json);
            let r = repo.repair(&bar).await?;
            bar.0.finish_and_clear();
            if cli.json {
                print_json(&serde_json::to_value(&r).unwrap_or_default());
            } else {
                println!(
                    "examined {} packs, rewrote {} shards",
                    r.packs, r.shards_rewritten
                );
                for (pack, why) in &r.failed {
                    println!("could not repair pack {pack}: {why}");
                }
            }
            if !r.failed.is_empty() {
                if !cli.json {
                    eprintln!(
                        "error: some packs could not be repaired (fewer than k good shards, or a backend refused writes)"
                    );
                }
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Forget {
            path,
            keep_last,
            keep_within,
        } => {
            let t = open(cli, false).await?;
            let rule = asheville_storage::Retention {
                keep_last: *keep_last,
                keep_within_ns: *keep_within,
            };
            let r = t.apply_retention(path, rule).await?;
            if cli.json {
                print_json(&serde_json::to_value(&r).unwrap_or_default());
            } else {
                println!(
                    "{} files: kept {} versions, forgot {}",
                    r.paths, r.kept, r.forgotten
                );
            }
        }
        Cmd::Rebalance { config } => {
            let mut repo = Repository::open(&catalog_path(&cli.data_dir)).await?;
            if let Some(f) = config {
                let new: RepoConfig = read_json(f)?;
                repo = repo.update_backends(new.backends).await?;
            }
            let bar = Bar::packs(cli.json);
            let r = repo.rebalance(&bar).await?;
            bar.0.finish_and_clear();
            if cli.json {
                print_json(&serde_json::to_value(&r).unwrap_or_default());
            } else {
                println!(
                    "examined {} packs: moved {} shards, {} already in place",
                    r.packs, r.shards_moved, r.shards_in_place
                );
                for (pack, why) in &r.failed {
                    println!("could not move pack {pack}: {why}");
                }
            }
            if !r.failed.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Export { file } => {
            let t = open(cli, false).await?;
            let r = if file.as_os_str() == "-" {
                asheville_storage::archive::export(&t, tokio::io::stdout()).await?
            } else {
                let f = tokio::fs::File::create(file).await.map_err(|e| {
                    Error::io("cannot create the archive", e).with_context("file", file.display())
                })?;
                let mut w = tokio::io::BufWriter::with_capacity(1 << 20, f);
                let r = asheville_storage::archive::export(&t, &mut w).await?;
                w.into_inner()
                    .sync_all()
                    .await
                    .map_err(|e| Error::io("cannot sync the archive", e))?;
                r
            };
            if cli.json {
                print_json(&serde_json::to_value(&r).unwrap_or_default());
            } else if file.as_os_str() != "-" {
                println!(
                    "exported {} files, {} versions, {} bytes",
                    r.paths, r.versions, r.bytes
                );
            }
        }
        Cmd::Import { file } => {
            let t = open(cli, true).await?;
            let r = if file.as_os_str() == "-" {
                asheville_storage::archive::import(&t, tokio::io::stdin()).await?
            } else {
                let f = tokio::fs::File::open(file).await.map_err(|e| {
                    Error::io("cannot open the archive", e).with_context("file", file.display())
                })?;
                asheville_storage::archive::import(
                    &t,
                    tokio::io::BufReader::with_capacity(1 << 20, f),
                )
                .await?
            };
            if cli.json {
                print_json(&serde_json::to_value(&r).unwrap_or_default());
            } else {
                println!(
                    "imported {} files, {} versions, {} bytes",
                    r.paths, r.versions, r.bytes
                );
            }
        }
        Cmd::Gc {
            grace,
            repack_below,
        } => {
            if !(0.0..=1.0).contains(repack_below) {
                return Err(Error::new(
                    ErrorKind::InvalidInput,
                    "--repack-below must be between 0 and 1",
                ));
            }
            let t = open(cli, false).await?;
            let bar = Bar::packs(cli.json);
            let opts = asheville_storage::GcOptions {
                grace_ns: *grace,
                repack_below: *repack_below,
            };
            let r = t.gc_with_progress(opts, &bar).await?;
            bar.0.finish_and_clear();
            if cli.json {
                print_json(&serde_json::to_value(&r).unwrap_or_default());
            } else {
                println!(
                    "deleted {} packs ({} objects), condemned {}, repacked {} ({} blobs moved), kept {} referenced again",
                    r.packs_deleted,
                    r.objects_deleted,
                    r.packs_condemned,
                    r.packs_repacked,
                    r.blobs_moved,
                    r.packs_revived
                );
            }
        }
        Cmd::RebuildCatalog { config } => {
            let config: RepoConfig = match config {
                Some(f) => read_json(f)?,
                None => {
                    let found = std::fs::read_dir(&cli.data_dir)
                        .map_err(|e| Error::io("cannot read the data directory", e))?
                        .flatten()
                        .map(|e| e.path().join("config.json"))
                        .find(|p| p.is_file())
                        .ok_or_else(|| {
                            Error::new(
                                ErrorKind::NotFound,
                                "no backend config.json under the data directory; pass --config",
                            )
                        })?;
                    read_json(&found)?
                }
            };
            let pw = passphrase(cli)?;
            let bar = Bar::packs(cli.json);
            let (_, r) = asheville_storage::rebuild::rebuild_catalog_with_progress(
                &catalog_path(&cli.data_dir),
                config,
                vec![(cli.tenant.clone(), TenantKey::Passphrase(pw))],
                &bar,
            )
            .await?;
            bar.0.finish_and_clear();
            if cli.json {
                print_json(&serde_json::to_value(&r).unwrap_or_default());
            } else {
                println!(
                    "recorded {} of {} packs ({} blobs), replayed {} journal records ({} versions, {} deletes)",
                    r.packs_recorded,
                    r.packs_found,
                    r.blobs,
                    r.journal_records,
                    r.versions,
                    r.deletes
                );
                for (p, why) in &r.skipped {
                    println!("skipped pack {p}: {why}");
                }
            }
        }
        Cmd::Source { user, cmd } => sync_cmd::source(cli, user, cmd).await?,
        Cmd::Sync {
            sources,
            user,
            detach,
            workers,
        } => {
            if !sync_cmd::sync(cli, user, sources, *detach, (*workers).max(1)).await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Serve {
            listen,
            workers,
            host_tenant,
            max_connections,
            rate,
        } => serve(cli, *listen, *workers, host_tenant, *max_connections, *rate).await?,
        Cmd::Worker {
            workers,
            until_idle,
        } => sync_cmd::worker(cli, (*workers).max(1), *until_idle).await?,
        Cmd::Job { cmd } => sync_cmd::job(cli, cmd).await?,
        Cmd::Usage {
            meter,
            granularity,
            dims,
        } => usage_cmd::usage(cli, meter, granularity, dims)?,
        Cmd::Invoice { period, plan, csv } => usage_cmd::invoice(cli, period, plan, *csv)?,
        Cmd::Quota {
            max_stored,
            max_ingest_per_day,
            clear,
        } => usage_cmd::quota(cli, *max_stored, *max_ingest_per_day, *clear)?,
        Cmd::Stat { path } => {
            let t = open(cli, false).await?;
            let v = t.stat(path)?;
            let j = serde_json::json!({
                "path": v.path, "version": v.version, "size": v.size, "chunks": v.chunks.len(),
                "mtime_ns": v.meta.mtime_ns, "mode": format!("{:o}", v.meta.mode), "created_ns": v.created_ns,
            });
            if cli.json {
                print_json(&j);
            } else {
                println!("{}", serde_json::to_string_pretty(&j).unwrap_or_default());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn serve(
    cli: &Cli,
    listen: std::net::SocketAddr,
    workers: usize,
    host_tenant: &[String],
    max_connections: usize,
    rate: f64,
) -> Result<(), Error> {
    use asheville_server::http::{Server, ServerConfig};
    let mut cfg = ServerConfig::new(&cli.data_dir);
    cfg.workers = workers;
    cfg.passphrase = passphrase(cli).ok();
    cfg.insecure_fast_kdf = std::env::var_os("ASHEVILLE_INSECURE_FAST_KDF").is_some();
    cfg.limits.connections = max_connections.max(1);
    cfg.limits.tenant_rate = rate;
    cfg.limits.tenant_burst = (rate * 2.0).max(1.0);
    for h in host_tenant {
        let (host, tenant) = h.split_once('=').ok_or_else(|| {
            Error::new(ErrorKind::InvalidInput, "--host-tenant is HOST=TENANT")
                .with_context("value", h)
        })?;
        cfg.hosts
            .insert(host.to_ascii_lowercase(), tenant.to_owned());
    }
    let api = |e: asheville_server::http::ApiError| Error::new(ErrorKind::Other, e.to_string());
    let server = Server::open(cfg).await.map_err(api)?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::io("cannot listen", e).with_context("address", listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("cannot listen", e))?;
    if cli.json {
        print_json(&serde_json::json!({
            "url": format!("http://{addr}"),
            "admin_token": server.first_admin_token(),
        }));
    } else {
        println!(
            "asheville serving http://{addr}/ (data: {})",
            cli.data_dir.display()
        );
        if let Some(t) = server.first_admin_token() {
            println!("admin token (shown once, keep it): {t}");
        }
    }
    let shutdown = async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    };
    server.serve(listener, shutdown).await;
    Ok(())
}

/// What [`tune_malloc`] tunes glibc's malloc for.
#[derive(Clone, Copy, PartialEq)]
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
enum MallocFor {
    /// `put`: large short-lived buffers mapped and unmapped, two arenas.
    Put,
    /// `get`: chunk buffers kept on the heap, two arenas.
    Get,
    /// Everything else (the server among them): large buffers mapped.
    Other,
}

/// glibc's malloc raises its mmap threshold as large buffers are freed, so
/// the pipeline's pack and chunk buffers (1–16 MiB, short-lived) end up on
/// the heap and stay there: a `put` of ~1 GiB peaked at ~330 MiB RSS.
///
/// For everything but `get`, a fixed 1 MiB threshold maps those buffers
/// and unmaps them when freed: peak RSS of a put of the peers set 124–129
/// MiB (152–166 MiB with the `get` setting below), at about the same speed
/// on disk. A put also keeps to two arenas: small files are read on
/// tokio's blocking threads and freed on the sealing threads, and each
/// thread's arena held on to some of them (peers set, rs(2,1): 133–135 →
/// 128–129 MiB; 1 GiB bench set rs(4,2) on tmpfs: wall median 2.26 →
/// 2.02 s in the same noisy run).
///
/// A restore is another matter: with a 1 MiB threshold each chunk buffer
/// is mapped fresh (page faults and zeroing, ~20% of its profile). For
/// `get`, a threshold just above the largest chunk (4 MiB) keeps chunk
/// and blob buffers on the heap, where they are reused, and two arenas
/// bound what freed memory is held: a get of 1 GiB (rs(4,2), tmpfs) went
/// from 2.4–2.5 s to 1.5–1.7 s at 74–88 MiB peak RSS. Figures from
/// `/usr/bin/time -v`, in issue 9's note. Setting the mmap threshold also
/// fixes the trim threshold at 128 KiB, so the heap's free top went back
/// to the kernel and came back as fresh zeroed pages a moment later; `get`
/// keeps up to 64 MiB of it: page faults of a restore of the 1 GiB bench
/// set 64–132k → 36–37k, peak RSS 75–80 → 82–88 MiB.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tune_malloc(work: MallocFor) {
    let threshold = if work == MallocFor::Get {
        (4 << 20) + (64 << 10)
    } else {
        1 << 20
    };
    // SAFETY: mallopt only sets allocator parameters; it is called before
    // the runtime starts, while main is the only thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, threshold);
        if work != MallocFor::Other {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
        if work == MallocFor::Get {
            libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc(_work: MallocFor) {}

/// Transparent huge pages off for this process while it lives (Linux's
/// `PR_SET_THP_DISABLE`), around the unlock: Argon2id's 64 MiB are
/// touched once, in ~0.1 s, and huge pages (which [`reexec_with_huge_pages`]
/// asks malloc for, for `get` at least) buy them nothing: `asheville ls`
/// of the peers repository, mostly the unlock, took 0.07-0.10 s either way
/// (3 rounds). Where the host takes back the memory the guest freed
/// ([`asheville_server::free_page_reporting`]), each fresh 2 MiB page is
/// dear: the same `ls` 4 s after `drop_caches` took 0.49-0.51 s with huge
/// pages and 0.12-0.14 s with 4 KiB pages (3 alternating rounds), and cold
/// restores of the peers set 5 s after `drop_caches` spent 0.76-0.92 s of
/// system CPU with this guard against 1.03-1.41 s without (3 alternating
/// rounds; wall 1.49-1.67 against 1.29-2.15 s, the disk being the bound).
/// Pages faulted after the guard is dropped are huge again.
struct SmallPagesWhile {
    /// Whether this guard turned huge pages off (and so turns them on).
    set: bool,
}

impl SmallPagesWhile {
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    fn unlocking() -> SmallPagesWhile {
        // SAFETY: prctl with these options reads or sets one flag of this
        // process; no memory is passed.
        let set = unsafe {
            libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) == 0
                && libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0
        };
        SmallPagesWhile { set }
    }

    #[cfg(not(target_os = "linux"))]
    fn unlocking() -> SmallPagesWhile {
        SmallPagesWhile { set: false }
    }
}

impl Drop for SmallPagesWhile {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if self.set {
            // SAFETY: as in `unlocking`.
            unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 0, 0, 0, 0) };
        }
    }
}

/// Runs this program again, at once, with the `GLIBC_TUNABLES` of
/// [`asheville_server::huge_page_env`] (huge pages for malloc), unless it
/// already has them, `ASHEVILLE_NO_HUGE_PAGES` is set, or the command is
/// not a restore (`get`) and the kernel reports freed memory to a
/// hypervisor (where huge pages cost puts more than they save: see
/// [`asheville_server::free_page_reporting`]). glibc reads
/// its tunables only when a process starts, and no `mallopt` asks for huge
/// pages. A put or restore touches hundreds of MiB of fresh buffers (pack
/// buffers, read windows, Argon2id's 64 MiB). In an earlier session on
/// this project's VM, with huge pages taken from memory freed a moment
/// before, CLI puts of the peers set went 2.51 -> 2.37 s with this exec
/// and cold restores 1.46 -> 1.29 s (4 alternating rounds each), for 3-5
/// MiB more peak RSS. If the exec fails, the program carries on as it is.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn reexec_with_huge_pages(restore: bool) {
    use std::os::unix::process::CommandExt;
    let Some(tunables) = asheville_server::huge_page_env() else {
        return;
    };
    if !restore && asheville_server::free_page_reporting() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    // Returns only if the exec failed.
    let _ = std::process::Command::new(&exe)
        .arg0(arg0)
        .args(args)
        .env("GLIBC_TUNABLES", tunables)
        .exec();
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn reexec_with_huge_pages(_restore: bool) {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Parsing starts no thread and changes nothing: the exec replaces
    // this process, which parses its arguments again.
    reexec_with_huge_pages(matches!(cli.cmd, Cmd::Get { .. }));
    // Argument parsing starts no thread, so this still runs single-threaded.
    tune_malloc(match cli.cmd {
        Cmd::Put { .. } => MallocFor::Put,
        Cmd::Get { .. } => MallocFor::Get,
        _ => MallocFor::Other,
    });
    let result = match asheville_storage::runtime() {
        Ok(rt) => rt.block_on(run(&cli)),
        Err(e) => Err(Error::io("cannot start the async runtime", e)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            if cli.json {
                print_json(
                    &serde_json::json!({"error": {"kind": e.kind().as_str(), "message": e.to_string()}}),
                );
            } else {
                eprintln!("error: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::SmallPagesWhile;

    /// Whether this process has transparent huge pages turned off.
    #[allow(unsafe_code)]
    fn huge_pages_off() -> bool {
        // SAFETY: reads one flag of this process.
        unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1 }
    }

    #[test]
    fn huge_pages_are_off_while_unlocking_and_back_after() {
        assert!(
            !huge_pages_off(),
            "huge pages were off for the test process already"
        );
        {
            let _outer = SmallPagesWhile::unlocking();
            assert!(huge_pages_off());
            {
                // A guard that found them off leaves them off.
                let _inner = SmallPagesWhile::unlocking();
                assert!(huge_pages_off());
            }
            assert!(huge_pages_off());
        }
        assert!(!huge_pages_off());
    }
}
