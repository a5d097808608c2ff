//! Realistic agent runs in the wire format of `dunetrace.ingest()`, generated in-process.
//!
//! A deterministic PRNG drives a few agents (each with two versions) through healthy runs and
//! the failure patterns the detectors look for: tool loops, thrashing, retry storms, context
//! bloat, truncation loops, empty retrievals, prompt-injection attempts and empty LLM answers.
//! Steps follow the client's rule: `run.started` is step 0, each `*.called` advances the step,
//! each `*.responded` carries its call's step, external signals and the terminal event carry the
//! current step. Hashes are 64 lowercase hex characters, names are short identifiers.

use serde_json::{json, Map, Value};

/// splitmix64: small, fast, deterministic.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0, items.len() as u64 - 1) as usize]
    }

    /// `len` lowercase hex characters (a digest as the client would compute it).
    pub fn hex(&mut self, len: usize) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(len);
        while s.len() < len {
            let mut x = self.next_u64();
            for _ in 0..16 {
                if s.len() == len {
                    break;
                }
                s.push(HEX[(x & 15) as usize] as char);
                x >>= 4;
            }
        }
        s
    }

    /// A random UUID v4 string, like the client's run ids.
    pub fn uuid(&mut self) -> String {
        let h = self.hex(32);
        format!(
            "{}-{}-4{}-a{}-{}",
            &h[0..8],
            &h[8..12],
            &h[13..16],
            &h[17..20],
            &h[20..32]
        )
    }
}

/// One agent configuration (id, version, model, tools).
#[derive(Clone)]
pub struct Agent {
    pub id: &'static str,
    pub version: String,
    pub model: &'static str,
    pub tools: &'static [&'static str],
    pub index: &'static str,
}

/// Four agents, two versions each: eight baseline keys.
pub fn agents() -> Vec<Agent> {
    let base: [(&str, &str, &[&str], &str); 4] = [
        (
            "support-bot",
            "gpt-4o",
            &["search_orders", "lookup_customer", "refund", "send_email"],
            "help_center",
        ),
        (
            "research-bot",
            "claude-sonnet",
            &["web_search", "fetch_page", "summarize"],
            "papers",
        ),
        (
            "sql-agent",
            "gpt-4o-mini",
            &["list_tables", "describe_table", "run_query"],
            "schema_docs",
        ),
        (
            "triage-bot",
            "llama-3-70b",
            &["classify", "assign", "comment", "close_ticket"],
            "runbooks",
        ),
    ];
    let mut out = Vec::new();
    for (i, (id, model, tools, index)) in base.iter().enumerate() {
        for v in 0..2u64 {
            let mut r = Rng::new(1000 + i as u64 * 10 + v);
            out.push(Agent {
                id,
                version: r.hex(8),
                model,
                tools,
                index,
            });
        }
    }
    out
}

/// What a run does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    Healthy,
    ToolLoop,
    Thrashing,
    RetryStorm,
    ContextBloat,
    Truncation,
    EmptyRetrieval,
    Injection,
    EmptyLlm,
}

impl Pattern {
    /// 60 % healthy, 5 % each failure pattern.
    pub fn draw(rng: &mut Rng) -> Pattern {
        let x = rng.range(0, 99);
        if x < 60 {
            Pattern::Healthy
        } else {
            FAILING[((x - 60) / 5) as usize]
        }
    }

    /// One of the failure patterns, evenly.
    pub fn draw_failing(rng: &mut Rng) -> Pattern {
        FAILING[rng.range(0, FAILING.len() as u64 - 1) as usize]
    }
}

const FAILING: [Pattern; 8] = [
    Pattern::ToolLoop,
    Pattern::Thrashing,
    Pattern::RetryStorm,
    Pattern::ContextBloat,
    Pattern::Truncation,
    Pattern::EmptyRetrieval,
    Pattern::Injection,
    Pattern::EmptyLlm,
];

/// One generated run: its id and its events in order.
pub struct Run {
    pub run_id: String,
    pub events: Vec<Value>,
}

struct Builder<'a> {
    agent: &'a Agent,
    run_id: String,
    ts: f64,
    step: u64,
    tool_calls: u64,
    events: Vec<Value>,
}

impl Builder<'_> {
    fn emit(&mut self, t: &str, step: u64, payload: Value) {
        let mut ev = Map::new();
        ev.insert("event_type".into(), t.into());
        ev.insert("run_id".into(), self.run_id.clone().into());
        ev.insert("agent_id".into(), self.agent.id.into());
        ev.insert("agent_version".into(), self.agent.version.clone().into());
        ev.insert("step_index".into(), step.into());
        ev.insert(
            "timestamp".into(),
            json!((self.ts * 1000.0).round() / 1000.0),
        );
        ev.insert("payload".into(), payload);
        self.events.push(Value::Object(ev));
    }

    fn advance(&mut self, ms: u64) {
        self.ts += ms as f64 / 1000.0;
    }

    fn llm(&mut self, rng: &mut Rng, prompt: u64, finish: &str, completion: u64, empty: bool) {
        self.step += 1;
        let s = self.step;
        self.emit(
            "llm.called",
            s,
            json!({"model": self.agent.model, "prompt_tokens": prompt}),
        );
        let latency = rng.range(300, 2500);
        self.advance(latency);
        let (hash, len) = if empty {
            (String::new(), 0)
        } else {
            (rng.hex(64), rng.range(20, 1200))
        };
        self.emit(
            "llm.responded",
            s,
            json!({"output_hash": hash, "output_length": len, "finish_reason": finish,
                   "completion_tokens": if empty { 0 } else { completion }, "latency_ms": latency}),
        );
    }

    fn tool(&mut self, rng: &mut Rng, name: &str, args: &str, ok: bool) {
        self.step += 1;
        self.tool_calls += 1;
        let s = self.step;
        self.emit(
            "tool.called",
            s,
            json!({"tool_name": name, "args_hash": args}),
        );
        let latency = rng.range(15, 600);
        self.advance(latency);
        let payload = if ok {
            json!({"tool_name": name, "success": true, "output_length": rng.range(10, 4000),
                   "latency_ms": latency})
        } else {
            json!({"tool_name": name, "success": false, "latency_ms": latency,
                   "error_hash": rng.hex(64)})
        };
        self.emit("tool.responded", s, payload);
    }

    fn retrieval(&mut self, rng: &mut Rng, results: u64) {
        self.step += 1;
        let s = self.step;
        let index = self.agent.index;
        self.emit(
            "retrieval.called",
            s,
            json!({"index_name": index, "query_hash": rng.hex(64)}),
        );
        let latency = rng.range(5, 120);
        self.advance(latency);
        let score = if results > 0 {
            json!((rng.range(550, 950) as f64) / 1000.0)
        } else {
            Value::Null
        };
        self.emit(
            "retrieval.responded",
            s,
            json!({"index_name": index, "result_count": results, "top_score": score,
                   "latency_ms": latency}),
        );
    }
}

/// Generates one run of exactly `n` events (`n` ≥ 4) following `pattern`.
pub fn run(rng: &mut Rng, agent: &Agent, pattern: Pattern, n: usize, start_ts: f64) -> Run {
    let n = n.max(4);
    let mut b = Builder {
        agent,
        run_id: rng.uuid(),
        ts: start_ts,
        step: 0,
        tool_calls: 0,
        events: Vec::with_capacity(n),
    };
    let mut started = json!({"input_hash": rng.hex(64), "model": agent.model,
                             "tools": agent.tools});
    if pattern == Pattern::Injection {
        started["injection_signal"] = json!({"matched_pattern_count": 2,
            "matched_patterns": ["ignore_previous", "role_override"], "input_length": 180});
    }
    b.emit("run.started", 0, started);
    b.advance(rng.range(5, 50));
    let loop_tool = *rng.pick(agent.tools);
    let loop_args = rng.hex(64);
    let other_tool = agent.tools[(agent
        .tools
        .iter()
        .position(|t| *t == loop_tool)
        .unwrap_or(0)
        + 1)
        % agent.tools.len()];
    let mut prompt = rng.range(400, 900);
    let mut k = 0u64;
    // Body: pairs of events until one or two slots are left for the end.
    while b.events.len() + 2 < n {
        let left = n - 1 - b.events.len();
        let final_llm = left <= 2;
        match pattern {
            _ if final_llm => {
                let finish = if pattern == Pattern::Truncation {
                    "length"
                } else {
                    "stop"
                };
                let completion = rng.range(40, 400);
                b.llm(
                    rng,
                    prompt,
                    finish,
                    completion,
                    pattern == Pattern::EmptyLlm,
                );
            }
            Pattern::Healthy | Pattern::Injection => match k % 3 {
                0 => {
                    let p = prompt + rng.range(0, 600);
                    b.llm(rng, p, "tool_calls", 40, false);
                }
                1 => {
                    let t = *rng.pick(agent.tools);
                    let args = rng.hex(64);
                    let ok = rng.chance(0.97);
                    b.tool(rng, t, &args, ok);
                }
                _ if rng.chance(0.3) => {
                    let results = rng.range(2, 12);
                    b.retrieval(rng, results);
                }
                _ => {
                    let t = *rng.pick(agent.tools);
                    let args = rng.hex(64);
                    b.tool(rng, t, &args, true);
                }
            },
            Pattern::ToolLoop => {
                if k.is_multiple_of(2) {
                    b.llm(rng, prompt, "tool_calls", 30, false);
                } else {
                    b.tool(rng, loop_tool, &loop_args, true);
                }
            }
            Pattern::Thrashing => {
                let t = if k.is_multiple_of(2) {
                    loop_tool
                } else {
                    other_tool
                };
                let args = rng.hex(64);
                b.tool(rng, t, &args, true);
            }
            Pattern::RetryStorm => {
                let args = rng.hex(64);
                b.tool(rng, loop_tool, &args, false);
            }
            Pattern::ContextBloat => {
                if k.is_multiple_of(2) {
                    b.llm(rng, prompt, "tool_calls", 60, false);
                    prompt = (prompt * 3 / 2).min(120_000);
                } else {
                    let t = *rng.pick(agent.tools);
                    let args = rng.hex(64);
                    b.tool(rng, t, &args, true);
                }
            }
            Pattern::Truncation => b.llm(rng, 3000, "length", 1024, false),
            Pattern::EmptyRetrieval => {
                if k.is_multiple_of(2) {
                    b.retrieval(rng, 0);
                } else {
                    b.llm(rng, prompt, "stop", 50, false);
                }
            }
            Pattern::EmptyLlm => {
                if k.is_multiple_of(2) {
                    b.llm(rng, prompt, "stop", 0, true);
                } else {
                    let t = *rng.pick(agent.tools);
                    let args = rng.hex(64);
                    b.tool(rng, t, &args, true);
                }
            }
        }
        k += 1;
        b.advance(rng.range(2, 40));
    }
    if b.events.len() + 1 < n {
        let s = b.step;
        b.emit(
            "external.signal",
            s,
            json!({"signal_name": "rate_limited", "source": "provider",
                   "meta": {"retry_after_s": 2}}),
        );
    }
    let s = b.step;
    if pattern == Pattern::RetryStorm {
        let h = rng.hex(64);
        b.emit(
            "run.errored",
            s,
            json!({"error_type": "ToolError", "error_hash": h, "step_index": s}),
        );
    } else {
        let tc = b.tool_calls;
        b.emit(
            "run.completed",
            s,
            json!({"total_steps": s, "exit_reason": "final_answer", "tool_call_count": tc}),
        );
    }
    Run {
        run_id: b.run_id,
        events: b.events,
    }
}

/// `count` runs of `lo..=hi` events over the standard agents and pattern mix.
pub fn runs(seed: u64, count: usize, lo: usize, hi: usize) -> Vec<Run> {
    let agents = agents();
    let mut rng = Rng::new(seed);
    let mut ts = 1_764_000_000.0 + (seed % 1000) as f64 * 100_000.0;
    (0..count)
        .map(|_| {
            let agent = rng.pick(&agents).clone();
            let pattern = Pattern::draw(&mut rng);
            let n = rng.range(lo as u64, hi as u64) as usize;
            ts += rng.range(50, 2000) as f64 / 1000.0;
            run(&mut rng, &agent, pattern, n, ts)
        })
        .collect()
}

/// The events of `runs` as a client with `concurrent` runs in flight sends them: groups of
/// runs interleaved round-robin, one event at a time.
pub fn stream(runs: &[Run], concurrent: usize) -> Vec<&Value> {
    let mut out = Vec::with_capacity(runs.iter().map(|r| r.events.len()).sum());
    for group in runs.chunks(concurrent.max(1)) {
        let longest = group.iter().map(|r| r.events.len()).max().unwrap_or(0);
        for i in 0..longest {
            for r in group {
                if let Some(e) = r.events.get(i) {
                    out.push(e);
                }
            }
        }
    }
    out
}

/// JSON array texts of at most `size` events each.
pub fn batches(events: &[&Value], size: usize) -> Vec<(String, usize)> {
    events
        .chunks(size.max(1))
        .map(|c| {
            (
                serde_json::to_string(c).expect("serialise a batch"),
                c.len(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_have_the_requested_length_and_end_with_a_terminal_event() {
        let rs = runs(7, 300, 10, 60);
        for r in &rs {
            let n = r.events.len();
            assert!((10..=60).contains(&n), "{n}");
            let last = r.events[n - 1]["event_type"].as_str().unwrap();
            assert!(last == "run.completed" || last == "run.errored");
            assert_eq!(r.events[0]["event_type"], "run.started");
        }
        let long = runs(8, 3, 1000, 1000);
        assert!(long.iter().all(|r| r.events.len() == 1000));
    }

    #[test]
    fn stream_interleaves_every_event_once() {
        let rs = runs(9, 10, 5, 9);
        let total: usize = rs.iter().map(|r| r.events.len()).sum();
        assert_eq!(stream(&rs, 4).len(), total);
    }

    #[test]
    fn uuids_and_hashes_look_right() {
        let mut r = Rng::new(1);
        let u = r.uuid();
        assert_eq!(u.len(), 36);
        let h = r.hex(64);
        assert!(h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
