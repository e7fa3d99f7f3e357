//! `asheville source|sync|syncs|worker|job`: syncs from the command line.
//!
//! The queue lives in `<data-dir>/sync.redb`. Like the catalog, it is open
//! in one process at a time: `sync` runs the jobs it queues in its own
//! workers (unless `--detach`), `worker` runs whatever is queued and the
//! schedules.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use asheville_storage::{Error, ErrorKind};
use asheville_sync::{
    Conductor, JobId, JobQueue, JobRecord, JobState, QueueConfig, RedbQueue, Scheduler, SourceKind,
    SourceSpec, SyncOptions, SyncRunner, WorkerConfig, WorkerPool,
};
use clap::Subcommand;
use tokio_util::sync::CancellationToken;

use super::{Cli, open, print_json, read_json};

/// Sources of a user.
#[derive(Subcommand)]
pub enum SourceCmd {
    /// Add (or replace) a source.
    Add {
        /// Source name, unique per user.
        name: String,
        /// A local directory to sync.
        #[arg(long, conflicts_with = "bucket")]
        dir: Option<PathBuf>,
        /// A bucket to sync: a JSON file with a backend description, like
        /// `{"type":"s3","bucket":"b","endpoint":"http://...", ...}` or
        /// `{"type":"local","path":"/srv/x"}`.
        #[arg(long)]
        bucket: Option<PathBuf>,
        /// Only keys under this prefix of the bucket.
        #[arg(long, requires = "bucket")]
        prefix: Option<String>,
        /// Repository directory for its files (default /sync/USER/NAME: the job's user and source name).
        #[arg(long)]
        target: Option<String>,
        /// Sync periodically (`15m`, `1h`; run by `asheville worker`).
        #[arg(long)]
        every: Option<String>,
    },
    /// List the user's sources with their last sync.
    Ls,
    /// Remove a source (its files stay in the repository).
    Rm {
        /// Source name.
        name: String,
    },
}

/// One job.
#[derive(Subcommand)]
pub enum JobCmd {
    /// Show a job with its history.
    Show {
        /// Job id.
        id: u64,
    },
    /// Cancel a job.
    Cancel {
        /// Job id.
        id: u64,
    },
    /// Queue an ended job again (dead letters too).
    Restart {
        /// Job id.
        id: u64,
    },
    /// List the dead-letter jobs.
    Dead,
}

fn se(e: asheville_sync::Error) -> Error {
    let kind = match e.kind() {
        asheville_sync::ErrorKind::NotFound => ErrorKind::NotFound,
        asheville_sync::ErrorKind::InvalidInput => ErrorKind::InvalidInput,
        asheville_sync::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
        asheville_sync::ErrorKind::Conflict => ErrorKind::Precondition,
        asheville_sync::ErrorKind::Unsupported => ErrorKind::Unsupported,
        asheville_sync::ErrorKind::Transient => ErrorKind::Transient,
        _ => ErrorKind::Other,
    };
    Error::new(kind, e.to_string())
}

fn queue(cli: &Cli) -> Result<Arc<RedbQueue>, Error> {
    std::fs::create_dir_all(&cli.data_dir)
        .map_err(|e| Error::io("cannot create the data directory", e))?;
    RedbQueue::open(&cli.data_dir.join("sync.redb"), QueueConfig::default())
        .map(Arc::new)
        .map_err(se)
}

/// Workers (and the scheduler) for this process, over the tenant.
async fn workers(
    cli: &Cli,
    q: &Arc<RedbQueue>,
    n: usize,
) -> Result<(WorkerPool, CancellationToken), Error> {
    let tenant = open(cli, true).await?;
    let mut runner = SyncRunner::new(q.clone(), SyncOptions::default());
    // The tenant's meter store (one open handle per process).
    if let Some(m) = tenant.meter() {
        runner = runner.with_meter(m.clone());
    }
    let runner = Arc::new(runner);
    runner.add_tenant(tenant);
    let pool = WorkerPool::start(
        q.clone(),
        runner,
        WorkerConfig {
            workers: n,
            ..WorkerConfig::default()
        },
    );
    let stop = CancellationToken::new();
    tokio::spawn(Scheduler::new(q.clone(), q.clone()).run(Duration::from_secs(10), stop.clone()));
    Ok((pool, stop))
}

fn job_line(j: &JobRecord) -> String {
    let p = &j.progress;
    let mut s = format!(
        "job {} {} ({}): {}, {} seen, {} stored, {} deleted, {} unchanged, {} bytes, {} errors, attempt {}/{}",
        j.id,
        j.spec.source,
        j.spec.user,
        j.state,
        p.items_seen,
        p.items_stored,
        p.items_deleted,
        p.items_skipped,
        p.bytes,
        p.errors,
        j.attempts,
        j.max_attempts
    );
    if let Some(e) = &j.last_error {
        s.push_str(&format!("\n  error: {e}"));
    }
    for e in &j.item_errors {
        s.push_str(&format!("\n  item {}: {}", e.key, e.error));
    }
    s
}

fn show(cli: &Cli, jobs: &[JobRecord]) {
    if cli.json {
        print_json(&serde_json::to_value(jobs).unwrap_or_default());
    } else {
        for j in jobs {
            println!("{}", job_line(j));
        }
    }
}

/// `asheville source ...`
pub async fn source(cli: &Cli, user: &str, cmd: &SourceCmd) -> Result<(), Error> {
    let q = queue(cli)?;
    let c = Conductor::new(q.clone(), q.clone());
    match cmd {
        SourceCmd::Add {
            name,
            dir,
            bucket,
            prefix,
            target,
            every,
        } => {
            let kind = match (dir, bucket) {
                (Some(d), None) => SourceKind::LocalDir {
                    path: std::path::absolute(d)
                        .map_err(|e| Error::io("cannot resolve the directory", e))?,
                },
                (None, Some(f)) => SourceKind::Bucket {
                    store: read_json(f)?,
                    prefix: prefix.clone(),
                },
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidInput,
                        "give --dir DIR or --bucket CONFIG.json",
                    ));
                }
            };
            let mut spec = SourceSpec::new(&cli.tenant, user, name, kind);
            spec.target = target.clone();
            spec.every = every
                .as_deref()
                .map(asheville_sync::source::parse_period)
                .transpose()
                .map_err(se)?;
            c.add_source(spec.clone()).await.map_err(se)?;
            if cli.json {
                print_json(&serde_json::to_value(&spec).unwrap_or_default());
            } else {
                println!("source {name} of {user} syncs into {}", spec.target());
            }
        }
        SourceCmd::Ls => {
            let st = c.status(&cli.tenant, user).await.map_err(se)?;
            if cli.json {
                print_json(&serde_json::to_value(&st).unwrap_or_default());
            } else {
                for s in st {
                    let last = s
                        .last_job
                        .as_ref()
                        .map_or("never synced".to_owned(), job_line);
                    println!("{} -> {}: {last}", s.source.name, s.source.target());
                }
            }
        }
        SourceCmd::Rm { name } => {
            c.remove_source(&cli.tenant, user, name).await.map_err(se)?;
            if !cli.json {
                println!("removed source {name}");
            }
        }
    }
    Ok(())
}

/// `asheville sync`: queue syncs and (unless detached) run them here.
pub async fn sync(
    cli: &Cli,
    user: &str,
    sources: &[String],
    detach: bool,
    workers_n: usize,
) -> Result<bool, Error> {
    let q = queue(cli)?;
    let c = Conductor::new(q.clone(), q.clone());
    let names: Vec<&str> = sources.iter().map(String::as_str).collect();
    let queued = c.create_sync(&cli.tenant, user, &names).await.map_err(se)?;
    if detach {
        let ids: Vec<_> = queued.iter().map(|(_, e)| e.id).collect();
        if cli.json {
            print_json(&serde_json::json!({ "queued": ids }));
        } else {
            for (name, e) in &queued {
                println!(
                    "{name}: job {}{}",
                    e.id,
                    if e.existing { " (already queued)" } else { "" }
                );
            }
        }
        return Ok(true);
    }
    let (pool, stop) = workers(cli, &q, workers_n).await?;
    let mut ended = Vec::new();
    for (_, e) in &queued {
        ended.push(c.wait(&cli.tenant, e.id).await.map_err(se)?);
    }
    stop.cancel();
    pool.shutdown().await;
    show(cli, &ended);
    Ok(ended.iter().all(|j| j.state == JobState::Succeeded))
}

/// `asheville worker`: run queued jobs and schedules.
pub async fn worker(cli: &Cli, workers_n: usize, until_idle: bool) -> Result<(), Error> {
    let q = queue(cli)?;
    let (pool, stop) = workers(cli, &q, workers_n).await?;
    if !cli.json {
        eprintln!("worker running ({workers_n} jobs at a time); Ctrl-C stops it");
    }
    loop {
        if until_idle {
            let c = q.counts().await.map_err(se)?;
            let open: u64 = [JobState::Queued, JobState::Running, JobState::Retrying]
                .iter()
                .map(|s| c.get(s).copied().unwrap_or(0))
                .sum();
            if open == 0 {
                break;
            }
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    stop.cancel();
    pool.shutdown().await;
    Ok(())
}

/// `asheville job ...`
pub async fn job(cli: &Cli, cmd: &JobCmd) -> Result<(), Error> {
    let q = queue(cli)?;
    let c = Conductor::new(q.clone(), q.clone());
    let t = &cli.tenant;
    let jobs = match cmd {
        JobCmd::Show { id } => vec![c.job(t, JobId(*id)).await.map_err(se)?],
        JobCmd::Cancel { id } => vec![
            c.cancel(t, JobId(*id), "cancelled from the CLI")
                .await
                .map_err(se)?,
        ],
        JobCmd::Restart { id } => vec![c.restart(t, JobId(*id)).await.map_err(se)?],
        JobCmd::Dead => {
            let filter = asheville_sync::JobFilter {
                tenant: Some(t.clone()),
                state: Some(JobState::Dead),
                user: None,
            };
            q.list(filter, None, 1000).await.map_err(se)?
        }
    };
    if let (JobCmd::Show { .. }, false) = (cmd, cli.json) {
        for j in &jobs {
            println!("{}", job_line(j));
            for h in &j.history {
                println!("  {} {} ({})", h.at_ns, h.to, h.reason);
            }
        }
        return Ok(());
    }
    show(cli, &jobs);
    Ok(())
}
