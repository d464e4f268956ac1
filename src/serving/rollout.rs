//! The reconcile loop that makes this replica serve the rollout's version (#25).
//!
//! Activating a version on any replica records it, with a new generation, in the database
//! (`Storage::set_active_version`), and on Postgres announces it with `NOTIFY`. Every replica runs this loop:
//! it wakes on the notification (a dedicated listening connection) or every `poll`, whichever comes first, since
//! notifications sent while the listener was reconnecting are lost. When the rollout's generation is newer than
//! the one it serves, it downloads and checks the version if needed, loads and warms it up (requests keep being
//! served by the old one meanwhile) and swaps (`ModelPool::follow`). Each pass reports the replica's generation,
//! or why it cannot serve the rollout's version, in `replicas`: `GET /rollout` shows the progress. With SQLite
//! the same loop polls.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::serving::ModelPool;
use crate::storage::{ReplicaRecord, Storage, ROLLOUT_CHANNEL};

/// How often a replica checks the rollout without a notification.
pub const POLL: Duration = Duration::from_secs(2);

/// A replica that has not reported for this long has stopped, and `GET /rollout` leaves it out.
pub const REPLICA_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts the loop for this replica (`replica` names it, as its job leases do).
pub fn spawn(storage: Arc<Storage>, pool: Arc<ModelPool>, replica: String, roles: String) {
    let wake = Arc::new(Notify::new());
    if let Some(url) = storage.postgres_url() {
        tokio::spawn(listen(url.to_string(), wake.clone()));
    }
    tokio::spawn(async move {
        let started_at = crate::storage::now_millis();
        loop {
            let notified = wake.notified();
            let error = match storage.rollout().await {
                Ok(Some(rollout)) => match pool.follow(&rollout).await {
                    Ok(_) => None,
                    Err(err) => {
                        tracing::error!(
                            version = %rollout.version,
                            generation = rollout.generation,
                            error = %err,
                            "cannot serve the rolled-out version; the current one keeps serving"
                        );
                        Some(format!("cannot serve `{}`: {err}", rollout.version))
                    }
                },
                Ok(None) => None,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot read the rollout");
                    Some(err.to_string())
                }
            };
            let report = ReplicaRecord {
                id: replica.clone(),
                roles: roles.clone(),
                version: pool.active().version.clone(),
                generation: pool.generation(),
                error,
                started_at,
                seen_at: crate::storage::now_millis(),
            };
            if let Err(err) = storage.report_replica(&report).await {
                tracing::warn!(error = %err, "cannot report this replica's rollout state");
            }
            let _ = tokio::time::timeout(POLL, notified).await;
        }
    });
}

/// Listens for rollout notifications on a dedicated Postgres connection and wakes the loop on each, and after
/// every (re)connection, since what was sent meanwhile is lost.
async fn listen(url: String, wake: Arc<Notify>) {
    use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
    let options = match PgConnectOptions::from_str(&url) {
        Ok(options) => options.application_name("t2i-align rollout listener"),
        Err(err) => {
            tracing::error!(error = %err, "the database URL does not parse; the rollout is polled only");
            return;
        }
    };
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options);
    loop {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => match listener.listen(ROLLOUT_CHANNEL).await {
                Ok(()) => {
                    tracing::debug!("listening for rollouts");
                    wake.notify_one();
                    loop {
                        match listener.try_recv().await {
                            Ok(Some(notification)) => {
                                tracing::debug!(generation = notification.payload(), "rollout notification");
                                wake.notify_one();
                            }
                            // The connection was lost; the next call reconnects and listens again.
                            Ok(None) => {
                                tracing::warn!("the rollout listener lost its connection; reconnecting");
                                wake.notify_one();
                            }
                            Err(err) => {
                                tracing::warn!(error = %err, "the rollout listener failed; reconnecting");
                                break;
                            }
                        }
                    }
                }
                Err(err) => tracing::warn!(error = %err, "cannot listen for rollouts; retrying"),
            },
            Err(err) => tracing::warn!(error = %err, "cannot connect the rollout listener; retrying"),
        }
        tokio::time::sleep(POLL).await;
    }
}
