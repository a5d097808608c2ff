//! The issue lifecycle (README, "Issues"): one issue per (agent, failure
//! type) of live signals; open → resolved after 5 clean runs → reopened on recurrence; an
//! ignored issue keeps counting but never changes status on its own and sends no alerts.

/// Clean runs after which an open or reopened issue is resolved.
pub const CLEAN_RUNS_THRESHOLD: i32 = 5;

/// The status column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Open,
    Resolved,
    Reopened,
    Ignored,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Resolved => "resolved",
            Status::Reopened => "reopened",
            Status::Ignored => "ignored",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "open" => Some(Status::Open),
            "resolved" => Some(Status::Resolved),
            "reopened" => Some(Status::Reopened),
            "ignored" => Some(Status::Ignored),
            _ => None,
        }
    }
}

/// One issue as the lifecycle sees it, plus what changed since it was loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub failure_type: String,
    pub status: Status,
    pub affected_runs: i32,
    pub clean_runs_since: i32,
    /// Not stored yet: insert with first_seen = now.
    pub is_new: bool,
    /// last_seen must become now.
    pub seen: bool,
    /// resolved_at must become now.
    pub resolved_now: bool,
    /// resolved_at must be cleared.
    pub reopened_now: bool,
    /// Anything changed.
    pub dirty: bool,
}

impl Issue {
    /// An issue loaded from storage.
    pub fn stored(failure_type: &str, status: Status, affected_runs: i32, clean: i32) -> Issue {
        Issue {
            failure_type: failure_type.to_string(),
            status,
            affected_runs,
            clean_runs_since: clean,
            is_new: false,
            seen: false,
            resolved_now: false,
            reopened_now: false,
            dirty: false,
        }
    }
}

/// Applies one processed run of an agent to that agent's issues. `fired`: the live failure
/// types signalled for the run (duplicates ignored).
pub fn apply_run(issues: &mut Vec<Issue>, fired: &[&str]) {
    let mut types: Vec<&str> = fired.to_vec();
    types.sort_unstable();
    types.dedup();
    for t in &types {
        match issues.iter_mut().find(|i| i.failure_type == *t) {
            Some(i) => {
                i.affected_runs += 1;
                i.clean_runs_since = 0;
                i.seen = true;
                i.dirty = true;
                if i.status == Status::Resolved {
                    i.status = Status::Reopened;
                    i.reopened_now = true;
                    i.resolved_now = false;
                }
            }
            None => issues.push(Issue {
                failure_type: t.to_string(),
                status: Status::Open,
                affected_runs: 1,
                clean_runs_since: 0,
                is_new: true,
                seen: true,
                resolved_now: false,
                reopened_now: false,
                dirty: true,
            }),
        }
    }
    for i in issues.iter_mut() {
        if types.contains(&i.failure_type.as_str()) {
            continue;
        }
        if matches!(i.status, Status::Open | Status::Reopened) {
            i.clean_runs_since += 1;
            i.dirty = true;
            if i.clean_runs_since >= CLEAN_RUNS_THRESHOLD {
                i.status = Status::Resolved;
                i.resolved_now = true;
                i.reopened_now = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_resolve_reopen() {
        let mut v = Vec::new();
        apply_run(&mut v, &["TOOL_LOOP"]);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].status, Status::Open);
        assert!(v[0].is_new);
        for n in 1..=4 {
            apply_run(&mut v, &[]);
            assert_eq!(v[0].clean_runs_since, n);
            assert_eq!(v[0].status, Status::Open);
        }
        apply_run(&mut v, &[]);
        assert_eq!(v[0].status, Status::Resolved);
        assert!(v[0].resolved_now);
        // Resolved issues do not count clean runs further.
        apply_run(&mut v, &[]);
        assert_eq!(v[0].clean_runs_since, 5);
        apply_run(&mut v, &["TOOL_LOOP"]);
        assert_eq!(v[0].status, Status::Reopened);
        assert_eq!(v[0].affected_runs, 2);
        assert_eq!(v[0].clean_runs_since, 0);
        assert!(v[0].reopened_now && !v[0].resolved_now);
    }

    #[test]
    fn other_types_count_clean_runs() {
        let mut v = Vec::new();
        apply_run(&mut v, &["TOOL_LOOP", "RETRY_STORM"]);
        apply_run(&mut v, &["TOOL_LOOP"]);
        let loop_ = v.iter().find(|i| i.failure_type == "TOOL_LOOP").unwrap();
        let storm = v.iter().find(|i| i.failure_type == "RETRY_STORM").unwrap();
        assert_eq!(loop_.affected_runs, 2);
        assert_eq!(loop_.clean_runs_since, 0);
        assert_eq!(storm.clean_runs_since, 1);
    }

    #[test]
    fn a_type_twice_in_one_run_counts_once() {
        let mut v = Vec::new();
        apply_run(&mut v, &["TOOL_LOOP", "TOOL_LOOP"]);
        apply_run(&mut v, &["TOOL_LOOP", "TOOL_LOOP"]);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].affected_runs, 2);
    }

    #[test]
    fn ignored_issues_keep_their_status() {
        let mut v = vec![Issue::stored("TOOL_LOOP", Status::Ignored, 3, 0)];
        for _ in 0..6 {
            apply_run(&mut v, &[]);
        }
        assert_eq!(v[0].status, Status::Ignored);
        assert_eq!(v[0].clean_runs_since, 0);
        apply_run(&mut v, &["TOOL_LOOP"]);
        assert_eq!(v[0].status, Status::Ignored);
        assert_eq!(v[0].affected_runs, 4);
    }
}
