//! The issue lifecycle through the worker: open → resolved after 5 clean runs → reopened on
//! recurrence; `ignore_issue` mutes its alerts and `reopen_issue` restores them.

use dunetrace_e2e::*;
use postgres::Client;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(15);

#[derive(Debug, PartialEq)]
struct IssueRow {
    id: i64,
    status: String,
    affected_runs: i32,
    clean_runs_since: i32,
    resolved: bool,
}

fn issue(c: &mut Client, agent_id: &str) -> IssueRow {
    let r = c
        .query_one(
            "SELECT id, status, affected_runs, clean_runs_since, resolved_at IS NOT NULL \
             FROM dunetrace.issues WHERE agent_id = $1 AND failure_type = 'TOOL_LOOP'",
            &[&agent_id],
        )
        .expect("exactly one TOOL_LOOP issue for the agent");
    IssueRow {
        id: r.get(0),
        status: r.get(1),
        affected_runs: r.get(2),
        clean_runs_since: r.get(3),
        resolved: r.get(4),
    }
}

fn issue_count(c: &mut Client, agent_id: &str) -> i64 {
    c.query_one(
        "SELECT count(*) FROM dunetrace.issues WHERE agent_id = $1",
        &[&agent_id],
    )
    .expect("count issues")
    .get(0)
}

fn call_bool(c: &mut Client, sql: &str, id: i64) -> bool {
    c.query_one(sql, &[&id]).expect(sql).get(0)
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn issue_opens_resolves_reopens_and_ignoring_it_mutes_alerts() {
    let mut c = connect_ready();
    reset_destinations(&mut c);
    let hook = Receiver::ok();
    add_destination(&mut c, "webhook", &hook.url("/issues"), None, None);
    let agent = Agent::new(&mut c, "e2e-issue");

    // A looping run opens the issue.
    let r1 = agent.loop_run(&mut c);
    wait_processed(&mut c, &r1.run_id, WAIT);
    let i = issue(&mut c, &agent.id);
    assert_eq!(
        (
            i.status.as_str(),
            i.affected_runs,
            i.clean_runs_since,
            i.resolved
        ),
        ("open", 1, 0, false)
    );
    assert_eq!(issue_count(&mut c, &agent.id), 1, "only TOOL_LOOP fired");
    hook.wait_for_containing(&r1.run_id, 1, WAIT);

    // Four clean runs: still open; the fifth resolves it.
    for _ in 0..4 {
        agent.clean_run(&mut c);
    }
    wait_processed_count(&mut c, &agent.id, 5, WAIT);
    let i = issue(&mut c, &agent.id);
    assert_eq!(
        (
            i.status.as_str(),
            i.affected_runs,
            i.clean_runs_since,
            i.resolved
        ),
        ("open", 1, 4, false)
    );
    agent.clean_run(&mut c);
    wait_processed_count(&mut c, &agent.id, 6, WAIT);
    let i = issue(&mut c, &agent.id);
    assert_eq!(
        (
            i.status.as_str(),
            i.affected_runs,
            i.clean_runs_since,
            i.resolved
        ),
        ("resolved", 1, 5, true)
    );

    // It comes back: reopened, two affected runs, resolved_at cleared; the alert goes out.
    let r2 = agent.loop_run(&mut c);
    wait_processed(&mut c, &r2.run_id, WAIT);
    let i = issue(&mut c, &agent.id);
    assert_eq!(
        (
            i.status.as_str(),
            i.affected_runs,
            i.clean_runs_since,
            i.resolved
        ),
        ("reopened", 2, 0, false)
    );
    hook.wait_for_containing(&r2.run_id, 1, WAIT);

    // Ignored: the next looping run is recorded but queues no delivery.
    assert!(call_bool(&mut c, "SELECT dunetrace.ignore_issue($1)", i.id));
    assert_eq!(issue(&mut c, &agent.id).status, "ignored");
    let r3 = agent.loop_run(&mut c);
    wait_processed(&mut c, &r3.run_id, WAIT);
    wait_signal(&mut c, &r3.run_id, "TOOL_LOOP", WAIT);
    // A barrier: another agent's looping run, ingested after, is alerted; anything queued for
    // the ignored run would have been sent no later than that.
    let other = Agent::new(&mut c, "e2e-issue-barrier");
    let barrier = other.loop_run(&mut c);
    hook.wait_for_containing(&barrier.run_id, 1, WAIT);
    let queued = deliveries_for_run(&mut c, &r3.run_id);
    assert!(
        queued.is_empty(),
        "an ignored issue queued a delivery: {queued:?}"
    );
    assert!(
        hook.requests_containing(&r3.run_id).is_empty(),
        "an ignored issue's alert was sent"
    );
    let i = issue(&mut c, &agent.id);
    assert_eq!((i.status.as_str(), i.affected_runs), ("ignored", 3));

    // reopen_issue: alerts again.
    assert!(call_bool(&mut c, "SELECT dunetrace.reopen_issue($1)", i.id));
    let i = issue(&mut c, &agent.id);
    assert_eq!((i.status.as_str(), i.clean_runs_since), ("open", 0));
    let r4 = agent.loop_run(&mut c);
    hook.wait_for_containing(&r4.run_id, 1, WAIT);
    let s4 = wait_signal(&mut c, &r4.run_id, "TOOL_LOOP", WAIT);
    let ds = deliveries_for_signal(&mut c, s4);
    assert_eq!(ds.len(), 1, "{ds:?}");
    let i = issue(&mut c, &agent.id);
    assert_eq!((i.status.as_str(), i.affected_runs), ("open", 4));

    // Unknown ids are reported, not errors.
    assert!(!call_bool(&mut c, "SELECT dunetrace.ignore_issue($1)", -1));
    assert!(!call_bool(&mut c, "SELECT dunetrace.reopen_issue($1)", -1));
}
