//! The weekly digest: sent at most once per week window, only on schedule, with real rates.

use dunetrace_e2e::*;
use postgres::Client;
use serde_json::Value;
use std::time::Duration;

const MARK: &str = "Weekly Agent Health Digest";

/// Calls `send_digest()` with `dunetrace.digest_day` / `digest_hour` set (for the transaction) to
/// the current UTC weekday and hour plus `day_offset` days. Both are read from the same `now()`
/// the extension checks, so an hour boundary cannot fall in between.
fn send_digest_scheduled(c: &mut Client, day_offset: i32) -> bool {
    let mut tx = c.transaction().expect("begin");
    tx.execute(
        "SELECT set_config('dunetrace.digest_day', \
                    ((extract(isodow FROM now() AT TIME ZONE 'UTC')::int - 1 + $1) % 7)::text, true), \
                set_config('dunetrace.digest_hour', \
                    extract(hour FROM now() AT TIME ZONE 'UTC')::int::text, true)",
        &[&day_offset],
    )
    .expect("set the digest schedule");
    let sent: bool = tx
        .query_one("SELECT dunetrace.send_digest()", &[])
        .expect("send_digest")
        .get(0);
    tx.commit().expect("commit");
    sent
}

fn digest_deliveries(c: &mut Client, dest: i32) -> Vec<Delivery> {
    deliveries_to(c, dest)
        .into_iter()
        .filter(|d| d.kind == "digest")
        .collect()
}

fn digest_log_rows(c: &mut Client) -> i64 {
    c.query_one("SELECT count(*) FROM dunetrace.digest_log", &[])
        .expect("count digest_log")
        .get(0)
}

/// The section whose text starts with `prefix`.
fn section<'a>(blocks: &'a [Value], prefix: &str) -> &'a Value {
    blocks
        .iter()
        .find(|b| block_text(b).starts_with(prefix))
        .unwrap_or_else(|| panic!("no block starting with {prefix:?} in {blocks:?}"))
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn weekly_digest_goes_out_once_per_window_with_real_rates() {
    let mut c = connect_ready();
    reset_destinations(&mut c);
    c.execute("DELETE FROM dunetrace.digest_log", &[])
        .expect("clear digest_log");
    let slack = Receiver::ok();
    let dest = add_destination(
        &mut c,
        "slack",
        &slack.url("/services/T/B/digest"),
        None,
        None,
    );

    // One looping run out of four runs of this agent.
    let agent = Agent::new(&mut c, "e2e-digest");
    let looping = agent.loop_run(&mut c);
    for _ in 0..3 {
        agent.clean_run(&mut c);
    }
    wait_processed_count(&mut c, &agent.id, 4, Duration::from_secs(15));
    let signals: i64 = c
        .query_one(
            "SELECT count(*) FROM dunetrace.failure_signals WHERE agent_id = $1 AND NOT shadow",
            &[&agent.id],
        )
        .expect("count signals")
        .get(0);
    assert_eq!(signals, 1, "exactly one live signal (the loop)");
    // Its own alert goes to the same Slack destination; let it arrive first.
    slack.wait_for_containing(&looping.run_id, 1, Duration::from_secs(10));

    // Move what earlier tests left behind out of the 7-day window, so the digest's totals are
    // this test's alone.
    for sql in [
        "UPDATE dunetrace.processed_runs SET processed_at = processed_at - interval '8 days' \
         WHERE agent_id <> $1 AND processed_at >= now() - interval '8 days'",
        "UPDATE dunetrace.failure_signals SET detected_at = detected_at - interval '8 days' \
         WHERE agent_id <> $1 AND detected_at >= now() - interval '8 days'",
        "UPDATE dunetrace.issues SET first_seen = first_seen - interval '8 days', \
                last_seen = last_seen - interval '8 days', \
                resolved_at = resolved_at - interval '8 days' \
         WHERE agent_id <> $1 AND last_seen >= now() - interval '8 days'",
    ] {
        c.execute(sql, &[&agent.id]).expect("age other data");
    }

    // Not the scheduled day: nothing.
    assert!(!send_digest_scheduled(&mut c, 1), "sent on the wrong day");
    assert!(digest_deliveries(&mut c, dest).is_empty());
    assert_eq!(digest_log_rows(&mut c), 0);

    // On schedule: the first call sends, the second (same window) does not.
    assert!(
        send_digest_scheduled(&mut c, 0),
        "the first scheduled call sends"
    );
    assert!(
        !send_digest_scheduled(&mut c, 0),
        "the second call in the window sends again"
    );
    assert_eq!(digest_log_rows(&mut c), 1);

    let got = slack.wait_for(Duration::from_secs(10), "the digest", |rs| {
        rs.iter().any(|r| r.body_contains(MARK))
    });
    let ds = digest_deliveries(&mut c, dest);
    assert_eq!(ds.len(), 1, "one digest queued: {ds:?}");
    let delivered = wait_until(
        Duration::from_secs(10),
        "the digest delivery to be recorded",
        || {
            digest_deliveries(&mut c, dest)
                .into_iter()
                .find(|d| d.status == "delivered")
        },
    );
    assert_eq!(delivered.attempts, 1);
    let digests: Vec<&Request> = got.iter().filter(|r| r.body_contains(MARK)).collect();
    assert_eq!(
        slack.requests_containing(MARK).len(),
        1,
        "exactly one digest request"
    );
    let req = digests[0];
    assert_eq!(req.path, "/services/T/B/digest");
    assert_eq!(req.body, delivered.body.as_bytes());

    // Content: the real rates of the window (4 runs, 1 affected).
    let payload = req.json();
    assert_eq!(payload["attachments"][0]["color"], "#4a9ede");
    let blocks = slack_blocks(&payload);
    let header = block_text(&blocks[0]);
    assert!(
        header.starts_with(":bar_chart: Weekly Agent Health Digest — "),
        "{header}"
    );
    assert_eq!(
        block_text(&blocks[1]),
        "*1* agent · *4* runs · *1* signal in the last 7 days"
    );
    assert_eq!(
        block_text(section(&blocks, "*Top failure types*")),
        "*Top failure types*\n:red_circle: *TOOL_LOOP* — 1 run affected (25%)"
    );
    assert_eq!(
        block_text(section(&blocks, "*Agents by signal volume*")),
        format!(
            "*Agents by signal volume*\n`{}` — 1 signal across 1 runs _(dominant: TOOL_LOOP)_",
            agent.id
        )
    );
    let systemic = block_text(section(&blocks, "*Systemic patterns*"));
    assert!(
        systemic.contains(&format!(
            ":warning: *TOOL_LOOP* on `{}` — 1/4 runs (25%)",
            agent.id
        )),
        "{systemic}"
    );
    assert_eq!(
        systemic,
        format!(
            "*Systemic patterns* _(≥10% of runs affected)_\n:warning: *TOOL_LOOP* on `{}` — 1/4 runs (25%)",
            agent.id
        )
    );
    assert_eq!(
        block_text(section(&blocks, ":ticket:")),
        ":ticket: *Issues* — *1* opened this week · *0* resolved"
    );
    let button = &blocks.last().expect("blocks")["elements"][0];
    assert_eq!(button["text"]["text"], "Open Dashboard");
    assert_eq!(button["url"], "http://dashboard.test");

    c.execute("DELETE FROM dunetrace.digest_log", &[])
        .expect("clean up digest_log");
}

/// The current UTC weekday (0 = Monday) and hour, as the extension computes them.
fn utc_day_hour(c: &mut Client) -> (i32, i32) {
    let r = c
        .query_one(
            "SELECT (extract(isodow FROM now() AT TIME ZONE 'UTC') - 1)::int, \
                    extract(hour FROM now() AT TIME ZONE 'UTC')::int",
            &[],
        )
        .expect("UTC day and hour");
    (r.get(0), r.get(1))
}

/// Sets the worker's digest schedule with ALTER SYSTEM; dropping it restores the defaults and
/// waits until the postmaster has reloaded them (so the worker has been signalled).
struct WorkerSchedule;

impl WorkerSchedule {
    fn set(c: &mut Client, day: i32, hour: i32) -> WorkerSchedule {
        // One statement at a time: ALTER SYSTEM cannot run in a (multi-statement) transaction.
        for sql in [
            format!("ALTER SYSTEM SET dunetrace.digest_day = {day}"),
            format!("ALTER SYSTEM SET dunetrace.digest_hour = {hour}"),
            "SELECT pg_reload_conf()".to_string(),
        ] {
            c.batch_execute(&sql)
                .expect("set the worker's digest schedule");
        }
        WorkerSchedule::wait_reloaded(&format!("{day}"), &format!("{hour}"));
        WorkerSchedule
    }

    /// New sessions start from the postmaster's settings: once one shows the values, the
    /// postmaster has reloaded and signalled every process, the worker included.
    fn wait_reloaded(day: &str, hour: &str) {
        wait_until(Duration::from_secs(10), "the configuration reload", || {
            let mut c = connect();
            let r = c
                .query_one(
                    "SELECT current_setting('dunetrace.digest_day'), \
                            current_setting('dunetrace.digest_hour')",
                    &[],
                )
                .ok()?;
            (r.get::<_, String>(0) == day && r.get::<_, String>(1) == hour).then_some(())
        });
    }
}

impl Drop for WorkerSchedule {
    fn drop(&mut self) {
        let mut c = connect();
        for sql in [
            "ALTER SYSTEM RESET dunetrace.digest_day",
            "ALTER SYSTEM RESET dunetrace.digest_hour",
            "SELECT pg_reload_conf()",
        ] {
            let _ = c.batch_execute(sql);
        }
        WorkerSchedule::wait_reloaded("0", "9");
    }
}

/// Ingests a looping run of a fresh agent and waits for its alert at `slack`: the worker has
/// woken (so it has applied any pending configuration reload) and finished a round.
fn barrier(c: &mut Client, slack: &Receiver) {
    let agent = Agent::new(c, "e2e-digest-barrier");
    let run = agent.loop_run(c);
    slack.wait_for_containing(&run.run_id, 1, Duration::from_secs(10));
}

#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn the_worker_sends_the_scheduled_digest_once_by_itself() {
    let mut c = connect_ready();
    reset_destinations(&mut c);
    c.execute("DELETE FROM dunetrace.digest_log", &[])
        .expect("clear digest_log");
    let slack = Receiver::ok();
    let dest = add_destination(
        &mut c,
        "slack",
        &slack.url("/services/T/B/auto"),
        None,
        None,
    );
    let agent = Agent::new(&mut c, "e2e-digest-auto");
    let run = agent.loop_run(&mut c);
    slack.wait_for_containing(&run.run_id, 1, Duration::from_secs(10));

    let (day, hour) = utc_day_hour(&mut c);
    {
        let _schedule = WorkerSchedule::set(&mut c, day, hour);
        // No SQL call: the worker notices the schedule on its own.
        slack.wait_for(Duration::from_secs(15), "the worker's digest", |rs| {
            rs.iter().any(|r| r.body_contains(MARK))
        });
        // Two more full rounds of the worker (each ends with the digest check and a dispatch):
        // a second digest would have arrived by then.
        barrier(&mut c, &slack);
        barrier(&mut c, &slack);
        assert_eq!(
            slack.requests_containing(MARK).len(),
            1,
            "one digest per window"
        );
        let ds = digest_deliveries(&mut c, dest);
        assert_eq!(ds.len(), 1, "{ds:?}");
        assert_eq!(digest_log_rows(&mut c), 1);
        let digest = &slack.requests_containing(MARK)[0];
        assert!(
            digest.body_contains(&agent.id),
            "this week's agent is listed"
        );
    }
    // With the schedule back to the default, the worker has reloaded (see barrier).
    barrier(&mut c, &slack);
    c.execute("DELETE FROM dunetrace.digest_log", &[])
        .expect("clean up digest_log");
}

/// A digest none of whose deliveries got through leaves no mark for the week: it is tried again
/// at the next poll within the same hour, so a failed Slack send does not use up the week.
#[test]
#[ignore = "needs a cluster: scripts/test.sh runs it"]
fn a_digest_that_could_not_be_delivered_is_sent_again_within_the_window() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let mut c = connect_ready();
    reset_destinations(&mut c);
    c.execute("DELETE FROM dunetrace.digest_log", &[])
        .expect("clear digest_log");
    let up = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&up);
    let slack = Receiver::start(move |_| {
        Reply::Status(if flag.load(Ordering::SeqCst) {
            200
        } else {
            503
        })
    });
    // Only CRITICAL alerts: this test's HIGH loop sends none, but the digest goes to every
    // Slack destination.
    let dest = add_destination(
        &mut c,
        "slack",
        &slack.url("/services/T/B/outage"),
        None,
        Some("CRITICAL"),
    );
    let agent = Agent::new(&mut c, "e2e-digest-outage");
    let run = agent.loop_run(&mut c);
    wait_processed(&mut c, &run.run_id, Duration::from_secs(10));

    assert!(
        send_digest_scheduled(&mut c, 0),
        "the scheduled digest is queued"
    );
    let failed = wait_until(
        Duration::from_secs(15),
        "the digest delivery to fail",
        || {
            digest_deliveries(&mut c, dest)
                .into_iter()
                .find(|d| d.status == "failed")
        },
    );
    assert_eq!(failed.attempts, 3);
    assert_eq!(slack.requests_containing(MARK).len(), 3);

    // Slack is back within the hour: the week's digest must still go out.
    up.store(true, Ordering::SeqCst);
    let sent_again = send_digest_scheduled(&mut c, 0);
    c.execute("DELETE FROM dunetrace.digest_log", &[])
        .expect("clean up digest_log");
    assert!(
        sent_again,
        "after a digest failed on every attempt, send_digest() in the same hour sent nothing: \
         the digest_log row is written when the digest is queued, not when it is delivered"
    );
    slack.wait_for(
        Duration::from_secs(10),
        "the digest after the outage",
        |rs| rs.iter().any(|r| r.body_contains(MARK) && r.seq >= 3),
    );
}
