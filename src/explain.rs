//! `dunetrace.explain(signal_id)`: a stored signal with its deterministic explanation.

use crate::errors::raise;
use dunetrace_core::explain::{self, SignalView};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use serde_json::{Map, Value};

/// A stored signal row, as the explanation and alert code need it.
pub struct StoredSignal {
    pub id: i64,
    pub failure_type: String,
    pub severity: String,
    pub run_id: String,
    pub agent_id: String,
    pub agent_version: String,
    pub step_index: i32,
    pub confidence: f64,
    pub evidence: Map<String, Value>,
    /// Epoch seconds.
    pub detected_at: f64,
    pub shadow: bool,
    pub alerted: bool,
    pub co_signal_count: i32,
}

impl StoredSignal {
    pub fn view(&self) -> SignalView<'_> {
        SignalView {
            failure_type: &self.failure_type,
            severity: &self.severity,
            run_id: &self.run_id,
            agent_id: &self.agent_id,
            agent_version: &self.agent_version,
            step_index: self.step_index,
            confidence: self.confidence,
            evidence: &self.evidence,
        }
    }

    /// Loads one signal; `None` when there is no such id.
    pub fn load(id: i64) -> Option<StoredSignal> {
        Spi::connect(|client| {
            let rows = client.select(
                "SELECT failure_type, severity, run_id, agent_id, agent_version, step_index, \
                        confidence, evidence::text, extract(epoch FROM detected_at)::float8, \
                        shadow, alerted, co_signal_count \
                 FROM dunetrace.failure_signals WHERE id = $1",
                None,
                &[id.into()],
            )?;
            let mut out = None;
            for row in rows {
                let evidence: String = row.get(8)?.unwrap_or_default();
                out = Some(StoredSignal {
                    id,
                    failure_type: row.get(1)?.unwrap_or_default(),
                    severity: row.get(2)?.unwrap_or_default(),
                    run_id: row.get(3)?.unwrap_or_default(),
                    agent_id: row.get(4)?.unwrap_or_default(),
                    agent_version: row.get(5)?.unwrap_or_default(),
                    step_index: row.get(6)?.unwrap_or_default(),
                    confidence: row.get(7)?.unwrap_or_default(),
                    evidence: match serde_json::from_str(&evidence) {
                        Ok(Value::Object(m)) => m,
                        _ => Map::new(),
                    },
                    detected_at: row.get(9)?.unwrap_or_default(),
                    shadow: row.get(10)?.unwrap_or(true),
                    alerted: row.get(11)?.unwrap_or(false),
                    co_signal_count: row.get(12)?.unwrap_or_default(),
                });
            }
            Ok::<_, pgrx::spi::SpiError>(out)
        })
        .unwrap_or_else(|e| {
            raise(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!("could not load signal {id}: {e}"),
            )
        })
    }
}

/// The signal's own fields plus title, what, why_it_matters, evidence_summary,
/// suggested_fixes and fix_type.
#[pg_extern(stable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn explain(signal_id: i64) -> pgrx::JsonB {
    let Some(s) = StoredSignal::load(signal_id) else {
        raise(
            PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
            format!("no signal with id {signal_id}"),
        );
    };
    let e = explain::explain(&s.view());
    let mut out = Map::new();
    out.insert("signal_id".into(), s.id.into());
    out.insert("failure_type".into(), s.failure_type.clone().into());
    out.insert("severity".into(), s.severity.clone().into());
    out.insert("run_id".into(), s.run_id.clone().into());
    out.insert("agent_id".into(), s.agent_id.clone().into());
    out.insert("agent_version".into(), s.agent_version.clone().into());
    out.insert("step_index".into(), s.step_index.into());
    out.insert("confidence".into(), s.confidence.into());
    out.insert("detected_at".into(), s.detected_at.into());
    out.insert("shadow".into(), s.shadow.into());
    out.insert("alerted".into(), s.alerted.into());
    out.insert("co_signal_count".into(), s.co_signal_count.into());
    if let Value::Object(m) = e.to_json() {
        out.extend(m);
    }
    out.insert("fix_type".into(), explain::fix_type(&s.failure_type).into());
    out.insert("evidence".into(), Value::Object(s.evidence));
    pgrx::JsonB(Value::Object(out))
}

/// Just the title, for views.
#[pg_extern(stable, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn signal_title(failure_type: &str, evidence: pgrx::JsonB) -> String {
    let evidence = match evidence.0 {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let view = SignalView {
        failure_type,
        severity: "",
        run_id: "",
        agent_id: "",
        agent_version: "",
        step_index: 0,
        confidence: 0.0,
        evidence: &evidence,
    };
    explain::explain(&view).title
}
