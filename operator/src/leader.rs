//! Leader election, so several operator replicas are safe: only the holder
//! of the Lease `fleetward-operator` (in the operator's own namespace) runs
//! the controllers. A standby keeps trying and takes over once the
//! leader's lease runs out (at most `lease_duration` after a crash) or at
//! once when the leader lets go on a clean shutdown.
//!
//! A leader that loses the lease stops at once with an error, instead of
//! carrying on beside the new leader: the pod restarts and comes back as a
//! standby (what controller-runtime does too). Touches only the Lease.

use std::future::Future;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseManagerError};

use crate::metrics::Metrics;

pub const LEASE_NAME: &str = "fleetward-operator";

#[derive(Clone, Debug)]
pub struct LeaderConfig {
    /// Where the Lease lives: the operator's namespace.
    pub namespace: String,
    /// Unique per replica: the pod name.
    pub identity: String,
    /// How long a lease lasts without renewal.
    pub lease_duration: Duration,
}

#[derive(thiserror::Error, Debug)]
pub enum LeaderError {
    #[error("leader election with Lease {namespace}/{LEASE_NAME} failed: {source}")]
    Lease {
        namespace: String,
        #[source]
        source: LeaseManagerError,
    },
    #[error("lost the Lease {namespace}/{LEASE_NAME} to another replica; stopping so that only one operator writes")]
    Lost { namespace: String },
}

/// Renewals start this long before the lease ends: a third of its length,
/// at least a second.
fn grace(duration: Duration) -> u64 {
    (duration.as_secs() / 3).max(1)
}

/// Waits for the lease, then runs `work` while holding it. Returns when
/// `work` ends (releasing the lease), when `shutdown` fires first, or with
/// an error when the lease is lost.
pub async fn run_as_leader<W, S>(
    client: Client,
    config: &LeaderConfig,
    metrics: &Metrics,
    shutdown: S,
    work: W,
) -> Result<(), LeaderError>
where
    W: Future<Output = ()>,
    S: Future<Output = ()>,
{
    let lease_err = |source| LeaderError::Lease {
        namespace: config.namespace.clone(),
        source,
    };
    let manager = LeaseManagerBuilder::new(client, LEASE_NAME)
        .with_namespace(&config.namespace)
        .with_identity(&config.identity)
        .with_duration(config.lease_duration.as_secs())
        .with_grace(grace(config.lease_duration))
        .build()
        .await
        .map_err(lease_err)?;
    let (mut leading, task) = manager.watch().await;
    tokio::pin!(shutdown);

    tracing::info!(identity = %config.identity, lease = LEASE_NAME, namespace = %config.namespace,
        "waiting to become the leader");
    loop {
        if *leading.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = leading.changed() => {
                if changed.is_err() {
                    return Err(finish(task, &config.namespace).await.err().unwrap_or(LeaderError::Lost {
                        namespace: config.namespace.clone(),
                    }));
                }
            }
            _ = &mut shutdown => {
                drop(leading);
                return finish(task, &config.namespace).await;
            }
        }
    }
    tracing::info!(identity = %config.identity, "became the leader; starting the controllers");
    metrics.leader.set(1);

    let lost = async {
        loop {
            if leading.changed().await.is_err() || !*leading.borrow_and_update() {
                return;
            }
        }
    };
    let outcome = tokio::select! {
        _ = work => Ok(()),
        _ = lost => Err(LeaderError::Lost { namespace: config.namespace.clone() }),
    };
    metrics.leader.set(0);
    // Closing the channel makes the manager release the lease, so a
    // standby takes over now instead of when the lease runs out.
    drop(leading);
    let released = finish(task, &config.namespace).await;
    outcome.and(released)
}

async fn finish(
    task: tokio::task::JoinHandle<Result<kube_lease_manager::LeaseManager, LeaseManagerError>>,
    namespace: &str,
) -> Result<(), LeaderError> {
    match task.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(source)) => Err(LeaderError::Lease {
            namespace: namespace.to_string(),
            source,
        }),
        // The manager task panicked or was cancelled: nothing is held any more.
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_starts_a_third_of_the_lease_before_its_end() {
        assert_eq!(grace(Duration::from_secs(15)), 5);
        assert_eq!(grace(Duration::from_secs(2)), 1);
    }
}
