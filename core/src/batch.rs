//! What one accepted batch does to run tracking: per run, how many events arrived, whether
//! it started, whether it finished. The shell upserts one `dunetrace.runs` row per summary.

use crate::event::{Event, EventType};

/// The effect of a batch on one run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunTouch {
    pub run_id: String,
    /// Identity from the run's first event in the batch.
    pub agent_id: String,
    pub agent_version: String,
    pub parent_run_id: Option<String>,
    pub has_started: bool,
    /// The first terminal event type in batch order, if any.
    pub terminal: Option<EventType>,
    pub events: i32,
    pub max_step: i32,
    /// Position of the run's last event in the batch: runs finished by one batch are
    /// processed in the order their events arrived.
    pub last_pos: i32,
    /// Position of the run's first event in the batch (named in errors about the run).
    pub first_pos: i32,
}

/// A run belongs to one agent (the agent of its first event ever stored). Within one batch
/// this returns the index of the first event whose run already appeared earlier in the batch
/// with another agent, if any; the shell checks the stored runs the same way.
pub fn mixed_agent_event(events: &[Event]) -> Option<usize> {
    let mut owner: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for (i, e) in events.iter().enumerate() {
        let agent = *owner
            .entry(e.run_id.as_str())
            .or_insert(e.agent_id.as_str());
        if agent != e.agent_id {
            return Some(i);
        }
    }
    None
}

/// Summarises a batch per run, sorted by run_id (so concurrent batches lock runs in the same
/// order and cannot deadlock).
pub fn summarize(events: &[Event]) -> Vec<RunTouch> {
    let mut out: Vec<RunTouch> = Vec::new();
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_by(|a, b| events[*a].run_id.cmp(&events[*b].run_id).then(a.cmp(b)));
    for i in order {
        let e = &events[i];
        let is_new = out.last().is_none_or(|t| t.run_id != e.run_id);
        if is_new {
            out.push(RunTouch {
                run_id: e.run_id.clone(),
                agent_id: e.agent_id.clone(),
                agent_version: e.agent_version.clone(),
                parent_run_id: e.parent_run_id.clone(),
                has_started: false,
                terminal: None,
                events: 0,
                max_step: 0,
                last_pos: 0,
                first_pos: i as i32,
            });
        }
        let t = out.last_mut().expect("pushed above");
        t.events += 1;
        t.last_pos = t.last_pos.max(i as i32);
        t.max_step = t.max_step.max(e.step_index);
        t.has_started |= e.event_type == EventType::RunStarted;
        if t.terminal.is_none() && e.event_type.is_terminal() {
            t.terminal = Some(e.event_type);
        }
        if t.parent_run_id.is_none() {
            t.parent_run_id = e.parent_run_id.clone();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(run: &str, t: EventType, step: i32) -> Event {
        Event {
            event_type: t,
            run_id: run.into(),
            agent_id: "a".into(),
            agent_version: "v".into(),
            step_index: step,
            timestamp: 0.0,
            payload: crate::event::Payload::new(),
            parent_run_id: None,
        }
    }

    #[test]
    fn summarises_per_run_sorted() {
        let s = summarize(&[
            e("b", EventType::RunStarted, 0),
            e("a", EventType::ToolCalled, 3),
            e("b", EventType::RunErrored, 2),
            e("b", EventType::RunCompleted, 2),
        ]);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].run_id, "a");
        assert!(!s[0].has_started);
        assert_eq!(s[0].max_step, 3);
        assert_eq!(s[1].run_id, "b");
        assert!(s[1].has_started);
        assert_eq!(s[1].terminal, Some(EventType::RunErrored));
        assert_eq!(s[1].events, 3);
        assert_eq!(s[1].last_pos, 3);
        assert_eq!(s[0].last_pos, 1);
        assert_eq!(s[1].first_pos, 0);
        assert_eq!(s[0].first_pos, 1);
    }

    #[test]
    fn a_run_with_two_agents_in_one_batch_is_found() {
        let mut other = e("b", EventType::ToolCalled, 1);
        other.agent_id = "intruder".into();
        let batch = [
            e("a", EventType::RunStarted, 0),
            e("b", EventType::RunStarted, 0),
            other,
        ];
        assert_eq!(mixed_agent_event(&batch), Some(2));
        assert_eq!(mixed_agent_event(&batch[..2]), None);
    }
}
