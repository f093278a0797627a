//! Health checks and query plans: callers of the pipeline like any other,
//! with limits of their own so that a check never hangs.

use std::panic::Location;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};
use crate::pipeline::{Limit, Op, Outcome, Shared};
use crate::sql::Dialect;
use crate::status::CircuitState;
use crate::status::{
    now_rfc3339, BackendKind, Health, HealthStatus, MigrationState, MigrationSummary, QueryPlan,
    ScalingLevel,
};
use crate::value::{Params, Row, Value};

/// Checks `shared` within its health timeout, whatever the server does: the
/// probe runs on a thread of its own and the caller stops waiting at the
/// timeout (the probe itself is bounded by the connect and query timeouts).
/// `migrations` reads the migration state on the probe's thread once the
/// database answered (`unknown` when it did not).
pub(crate) fn check(
    shared: &Arc<Shared>,
    migrations: impl FnOnce() -> MigrationSummary + Send + 'static,
) -> HealthStatus {
    let config = &shared.config;
    let started = Instant::now();
    let limit = config.health_timeout;
    let before = shared.pool_status();
    let probe = {
        let shared = Arc::clone(shared);
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("dbmanager-health".into())
            .spawn(move || {
                let answered = probe(&shared, started + limit);
                let _ = tx.send(answered.map(|()| migrations()));
            });
        match spawned {
            Err(e) => Err((
                false,
                format!("the health-check thread could not start: {e}"),
            )),
            Ok(_) => rx.recv_timeout(limit).unwrap_or_else(|_| {
                Err((
                    false,
                    format!(
                        "no answer within the health-check timeout of {}",
                        crate::error::fmt_duration(limit)
                    ),
                ))
            }),
        }
    };
    let elapsed = started.elapsed();
    let (connection, query_test, error, migrations) = match probe {
        Ok(summary) => (true, true, None, summary),
        Err((connected, why)) => (connected, false, Some(why), MigrationSummary::unknown(None)),
    };
    let max = f64::from(before.max_size.max(1));
    let mut status = HealthStatus {
        database_name: config.name.to_string(),
        database_type: config.kind,
        status: Health::Healthy,
        connection,
        query_test,
        migration_status: migrations,
        error,
        response_time_ms: elapsed.as_secs_f64() * 1e3,
        timestamp: now_rfc3339(),
        pool_saturation: f64::from(before.checked_out) / max,
        read_only: config.read_only,
        scaling: shared.scaling_level(Instant::now()),
        degraded_reasons: Vec::new(),
        circuit: shared.circuit_state(),
        serving_host: None,
        serving_role: None,
    };
    let after = shared.pool_status();
    status.serving_host = after.serving_host;
    status.serving_role = after.serving_role;
    verdict(
        &mut status,
        config.degraded_after,
        before.waiting,
        before.checked_out >= before.max_size,
    );
    status
}

/// A connection and `SELECT 1` before `deadline`; `Err((connected, why))`.
fn probe(shared: &Shared, deadline: Instant) -> std::result::Result<(), (bool, String)> {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    shared
        .probe_server(left, Location::caller())
        .map_err(|(connected, e)| (connected, e.to_string()))
}

/// The health statuses, with the degraded rules written down in
/// [`HealthStatus`]'s docs.
fn verdict(s: &mut HealthStatus, degraded_after: Duration, waiting: u32, saturated: bool) {
    if !(s.connection && s.query_test) || s.circuit == CircuitState::Open {
        s.status = Health::Unhealthy;
        return;
    }
    if s.migration_status.state == MigrationState::Failed {
        // Migrations refuse to run until someone fixes this: never healthy.
        let why: Vec<String> = s
            .migration_status
            .problems
            .iter()
            .map(|p| format!("migrations blocked: {p}"))
            .collect();
        s.status = Health::Unhealthy;
        s.error = Some(if why.is_empty() {
            "migrations blocked: a migration failed or does not match its file".to_owned()
        } else {
            why.join("; ")
        });
        s.degraded_reasons = why;
        return;
    }
    let mut why = Vec::new();
    if s.circuit == CircuitState::HalfOpen {
        why.push("circuit breaker half-open: probing whether the database is back".to_owned());
    }
    if s.response_time_ms > degraded_after.as_secs_f64() * 1e3 {
        why.push(format!(
            "slow: answered in {:.0} ms, over the degraded threshold of {}",
            s.response_time_ms,
            crate::error::fmt_duration(degraded_after)
        ));
    }
    if saturated || waiting > 0 {
        why.push(format!(
            "pool saturated: every connection in use{}",
            if waiting > 0 {
                format!(", {waiting} callers waiting")
            } else {
                String::new()
            }
        ));
    }
    if !s.migration_status.pending_migrations.is_empty() {
        why.push(format!(
            "{} migrations pending",
            s.migration_status.pending_migrations.len()
        ));
    }
    if s.migration_status.state == MigrationState::Unknown {
        why.push(format!(
            "migration state unknown: {}",
            if s.migration_status.problems.is_empty() {
                "it could not be read".to_owned()
            } else {
                s.migration_status.problems.join("; ")
            }
        ));
    }
    if s.scaling >= ScalingLevel::HighLoad {
        why.push(format!("timeouts: {}", s.scaling.advice()));
    }
    if !why.is_empty() {
        s.status = Health::Degraded;
        s.degraded_reasons = why;
    }
}

/// Runs the backend's EXPLAIN for `sql` through the pipeline and reads the
/// plan.
#[track_caller]
pub(crate) fn explain(shared: &Shared, sql: &str, params: Params) -> Result<QueryPlan> {
    let prefix = shared.dialect.explain_prefix().ok_or_else(|| {
        Error::new(
            ErrorKind::FeatureDisabled,
            "query plans are not available for this backend in this release",
        )
        .on_database(shared.name())
    })?;
    let rows = match shared.run(
        None,
        Op::Query,
        &format!("{prefix}{sql}"),
        params,
        Limit::DEFAULT,
    )? {
        Outcome::Rows(r) => r,
        _ => Vec::new(),
    };
    plan(shared.dialect, shared.config.kind, &rows).map_err(|e| e.on_database(shared.name()))
}

fn plan(dialect: Dialect, database_type: BackendKind, rows: &[Row]) -> Result<QueryPlan> {
    let (plan, raw) = match dialect {
        Dialect::Sqlite => {
            let items: Vec<serde_json::Value> = rows.iter().map(Row::to_json).collect();
            let raw = rows
                .iter()
                .map(|r| r.get::<String>("detail").unwrap_or_default())
                .collect::<Vec<_>>()
                .join("\n");
            (serde_json::Value::Array(items), raw)
        }
        _ => {
            let cell = rows
                .first()
                .and_then(|r| r.value(0))
                .ok_or_else(|| Error::new(ErrorKind::Database, "the server returned no plan"))?;
            match cell {
                Value::Json(j) => (j.clone(), j.to_string()),
                Value::Text(t) => {
                    let j = serde_json::from_str(t).map_err(|e| {
                        Error::conversion("the server's plan is not valid JSON").with_source(e)
                    })?;
                    (j, t.clone())
                }
                other => {
                    return Err(Error::conversion(format!(
                        "the server's plan came as {other:?}, not JSON text"
                    )))
                }
            }
        }
    };
    Ok(QueryPlan {
        database_type,
        plan,
        raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> HealthStatus {
        HealthStatus {
            database_name: "db".into(),
            database_type: BackendKind::Sqlite,
            status: Health::Healthy,
            connection: true,
            query_test: true,
            migration_status: MigrationSummary {
                state: MigrationState::Ok,
                ..MigrationSummary::default()
            },
            error: None,
            response_time_ms: 3.0,
            timestamp: now_rfc3339(),
            pool_saturation: 0.2,
            read_only: false,
            scaling: ScalingLevel::Normal,
            degraded_reasons: Vec::new(),
            circuit: CircuitState::Closed,
            serving_host: None,
            serving_role: None,
        }
    }

    #[test]
    fn the_documented_rules_decide_the_status() {
        let limit = Duration::from_secs(1);
        let mut s = healthy();
        verdict(&mut s, limit, 0, false);
        assert_eq!(s.status, Health::Healthy);
        for (mut s, waiting, saturated, word) in [
            (
                HealthStatus {
                    response_time_ms: 1500.0,
                    ..healthy()
                },
                0,
                false,
                "slow",
            ),
            (healthy(), 2, false, "saturated"),
            (healthy(), 0, true, "saturated"),
            (
                HealthStatus {
                    migration_status: MigrationSummary {
                        state: MigrationState::Pending,
                        current_version: Some("1".into()),
                        pending_migrations: vec!["2".into()],
                        problems: Vec::new(),
                    },
                    ..healthy()
                },
                0,
                false,
                "pending",
            ),
            (
                HealthStatus {
                    scaling: ScalingLevel::HighLoad,
                    ..healthy()
                },
                0,
                false,
                "scale",
            ),
            (
                HealthStatus {
                    migration_status: MigrationSummary::unknown(Some("no folder".into())),
                    ..healthy()
                },
                0,
                false,
                "unknown",
            ),
            (
                HealthStatus {
                    circuit: CircuitState::HalfOpen,
                    ..healthy()
                },
                0,
                false,
                "half-open",
            ),
        ] {
            verdict(&mut s, limit, waiting, saturated);
            assert_eq!(s.status, Health::Degraded, "{word}");
            assert!(
                s.degraded_reasons.iter().any(|r| r.contains(word)),
                "{:?}",
                s.degraded_reasons
            );
        }
        let mut s = HealthStatus {
            query_test: false,
            response_time_ms: 9000.0,
            ..healthy()
        };
        verdict(&mut s, limit, 0, false);
        assert_eq!(s.status, Health::Unhealthy);
        let mut s = HealthStatus {
            migration_status: MigrationSummary {
                state: MigrationState::Failed,
                current_version: Some("1".into()),
                pending_migrations: Vec::new(),
                problems: vec!["`V2__b.sql` (version 2) failed part-way".into()],
            },
            ..healthy()
        };
        verdict(&mut s, limit, 0, false);
        assert_eq!(s.status, Health::Unhealthy);
        assert!(
            s.error.as_deref().is_some_and(|e| e.contains("V2__b.sql"))
                && s.degraded_reasons
                    .iter()
                    .any(|r| r.contains("failed part-way")),
            "{s:?}"
        );
        let mut s = HealthStatus {
            circuit: CircuitState::Open,
            ..healthy()
        };
        verdict(&mut s, limit, 0, false);
        assert_eq!(s.status, Health::Unhealthy);
    }
}
