//! Agents and runs: what an agent reports while it works.

use crate::hash::{self, hash_content, Content};
use crate::Dunetrace;
use dunetrace_core::event::EventType;
use serde_json::{json, Map, Value};
use std::sync::{Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Pass as `tools` when the agent has none.
pub const NO_TOOLS: &[&str] = &[];

/// Most unanswered calls a run remembers for pairing (the oldest are forgotten first).
const MAX_PENDING: usize = 64;

/// Most entries the server accepts in `run.started.payload.tools`.
const MAX_TOOLS: usize = dunetrace_core::validate::MAX_TOOLS;

/// Most `meta` keys the server accepts on an external signal.
const MAX_META: usize = dunetrace_core::validate::MAX_META_KEYS;

fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

fn millis(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// One agent configuration: its id, model, tools and system prompt, which together give its
/// `agent_version`. Cheap to clone; start any number of runs from it.
///
/// ```no_run
/// # fn main() -> Result<(), dunetrace_client::Error> {
/// let dt = dunetrace_client::Dunetrace::connect("host=localhost dbname=app", "dt_...")?;
/// let agent = dt
///     .agent("support-bot")
///     .model("gpt-4o")
///     .tools(["web_search", "calculator"])
///     .system_prompt("You are a helpful support agent.");
/// let run = agent.run("How do I reset my password?");
/// // ... report the run's steps ...
/// run.finish();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Agent {
    dt: Dunetrace,
    agent_id: String,
    model: String,
    tools: Vec<String>,
    system_prompt: String,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("agent_id", &self.agent_id)
            .field("model", &self.model)
            .field("tools", &self.tools)
            .field("agent_version", &self.version())
            .finish_non_exhaustive()
    }
}

impl Agent {
    pub(crate) fn new(dt: Dunetrace, agent_id: &str) -> Agent {
        Agent {
            dt,
            agent_id: agent_id.to_string(),
            model: String::new(),
            tools: Vec::new(),
            system_prompt: String::new(),
        }
    }

    /// The model the agent runs on (reported in `run.started`, part of the version).
    pub fn model(mut self, model: &str) -> Agent {
        self.model = model.to_string();
        self
    }

    /// The tools the agent may call (reported in `run.started`, part of the version).
    pub fn tools<I, S>(mut self, tools: I) -> Agent
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.tools = tools.into_iter().map(|t| t.as_ref().to_string()).collect();
        self
    }

    /// The system prompt (default `""`). Only its influence on `agent_version` leaves the
    /// process, through a hash.
    pub fn system_prompt(mut self, system_prompt: &str) -> Agent {
        self.system_prompt = system_prompt.to_string();
        self
    }

    /// The agent's id.
    pub fn id(&self) -> &str {
        &self.agent_id
    }

    /// `agent_version`: see [`agent_version`](crate::agent_version).
    pub fn version(&self) -> String {
        hash::agent_version(&self.system_prompt, &self.model, &self.tools)
    }

    /// Starts a run for `user_input` and emits `run.started`.
    pub fn run(&self, user_input: &str) -> Run {
        Run::start(self, user_input, None)
    }

    /// Starts a child run (multi-agent): like [`run`](Self::run), with `parent_run_id` set
    /// on every event.
    pub fn child_run(&self, user_input: &str, parent_run_id: &str) -> Run {
        Run::start(self, user_input, Some(parent_run_id.to_string()))
    }
}

/// What an LLM returned, for [`Run::llm_responded`]. Every field is optional: what is not
/// set is not sent (an unmeasured output length is omitted, never sent as 0, so it cannot
/// look like an empty response).
///
/// ```
/// use dunetrace_client::LlmResponse;
/// let completion = "Paris is the capital.";
/// let r = LlmResponse::new()
///     .output(completion) // hashed here; length in characters
///     .finish_reason("stop")
///     .prompt_tokens(812)
///     .completion_tokens(6);
/// # let _ = r;
/// ```
#[derive(Debug, Clone, Default)]
pub struct LlmResponse {
    output_hash: Option<String>,
    output_length: Option<u64>,
    finish_reason: Option<String>,
    completion_tokens: Option<u64>,
    prompt_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
    latency_ms: Option<u64>,
    model: Option<String>,
}

impl LlmResponse {
    /// A response with nothing known yet.
    pub fn new() -> LlmResponse {
        LlmResponse::default()
    }

    /// The completion: hashed immediately (SHA-256); its length in characters is sent.
    pub fn output(mut self, output: impl Content) -> LlmResponse {
        let text = output.text();
        self.output_hash = Some(hash_content(&text));
        self.output_length = Some(text.chars().count() as u64);
        self
    }

    /// The output's length when the text itself is not at hand (overrides [`output`](Self::output)'s).
    pub fn output_length(mut self, chars: u64) -> LlmResponse {
        self.output_length = Some(chars);
        self
    }

    /// Why generation stopped, e.g. `stop`, `length`, `tool_calls`.
    pub fn finish_reason(mut self, reason: &str) -> LlmResponse {
        self.finish_reason = Some(hash::name(reason));
        self
    }

    /// Tokens generated.
    pub fn completion_tokens(mut self, n: u64) -> LlmResponse {
        self.completion_tokens = Some(n);
        self
    }

    /// Prompt tokens as reported with the response (the call's count is preferred).
    pub fn prompt_tokens(mut self, n: u64) -> LlmResponse {
        self.prompt_tokens = Some(n);
        self
    }

    /// Reasoning tokens, for models that report them.
    pub fn reasoning_tokens(mut self, n: u64) -> LlmResponse {
        self.reasoning_tokens = Some(n);
        self
    }

    /// The call's latency; by default the time since the matching [`Run::llm_called`].
    pub fn latency_ms(mut self, ms: u64) -> LlmResponse {
        self.latency_ms = Some(ms);
        self
    }

    /// The model that answered, when it differs from the one called.
    pub fn model(mut self, model: &str) -> LlmResponse {
        self.model = Some(hash::name(model));
        self
    }
}

/// A tool's result, for [`Run::tool_responded`].
///
/// ```
/// use dunetrace_client::ToolResult;
/// let ok = ToolResult::ok("web_search").output("3 results ...");
/// let failed = ToolResult::failed("web_search", "connection refused"); // message hashed
/// # let _ = (ok, failed);
/// ```
#[derive(Debug, Clone)]
pub struct ToolResult {
    tool_name: String,
    success: bool,
    output_length: Option<u64>,
    latency_ms: Option<u64>,
    error_hash: Option<String>,
}

impl ToolResult {
    /// The tool succeeded.
    pub fn ok(tool_name: &str) -> ToolResult {
        ToolResult {
            tool_name: hash::name(tool_name),
            success: true,
            output_length: None,
            latency_ms: None,
            error_hash: None,
        }
    }

    /// The tool failed with `error_message` (hashed immediately; `""` sends no hash).
    pub fn failed(tool_name: &str, error_message: impl Content) -> ToolResult {
        let h = hash_content(&error_message.text());
        ToolResult {
            error_hash: (!h.is_empty()).then_some(h),
            success: false,
            ..ToolResult::ok(tool_name)
        }
    }

    /// The tool's output: only its length in characters is sent.
    pub fn output(mut self, output: impl Content) -> ToolResult {
        self.output_length = Some(output.text().chars().count() as u64);
        self
    }

    /// The output's length when the text itself is not at hand.
    pub fn output_length(mut self, chars: u64) -> ToolResult {
        self.output_length = Some(chars);
        self
    }

    /// The call's latency; by default the time since the matching [`Run::tool_called`].
    pub fn latency_ms(mut self, ms: u64) -> ToolResult {
        self.latency_ms = Some(ms);
        self
    }
}

/// A retrieval's result, for [`Run::retrieval_responded`].
///
/// ```
/// use dunetrace_client::RetrievalResult;
/// let r = RetrievalResult::new("product_docs", 4).top_score(0.82);
/// # let _ = r;
/// ```
#[derive(Debug, Clone)]
pub struct RetrievalResult {
    index_name: String,
    result_count: u64,
    top_score: Option<f64>,
    latency_ms: Option<u64>,
}

impl RetrievalResult {
    /// `result_count` results came back from `index_name`.
    pub fn new(index_name: &str, result_count: u64) -> RetrievalResult {
        RetrievalResult {
            index_name: hash::name(index_name),
            result_count,
            top_score: None,
            latency_ms: None,
        }
    }

    /// The best result's score (not sent unless finite).
    pub fn top_score(mut self, score: f64) -> RetrievalResult {
        self.top_score = score.is_finite().then_some(score);
        self
    }

    /// The retrieval's latency; by default the time since the matching
    /// [`Run::retrieval_called`].
    pub fn latency_ms(mut self, ms: u64) -> RetrievalResult {
        self.latency_ms = Some(ms);
        self
    }
}

/// Something that happened outside the agent (rate limit, timeout, deploy...), for
/// [`Run::external_signal`].
///
/// ```
/// use dunetrace_client::Signal;
/// let s = Signal::new("rate_limited").source("openai").meta("retry_after_s", 2.5);
/// # let _ = s;
/// ```
#[derive(Debug, Clone)]
pub struct Signal {
    name: String,
    source: Option<String>,
    meta: Map<String, Value>,
}

impl Signal {
    /// A signal named `signal_name`, e.g. `rate_limited`, `timeout`, `deploy`.
    pub fn new(signal_name: &str) -> Signal {
        Signal {
            name: hash::name(signal_name),
            source: None,
            meta: Map::new(),
        }
    }

    /// Where the signal came from, e.g. `openai`.
    pub fn source(mut self, source: &str) -> Signal {
        self.source = Some(hash::name(source));
        self
    }

    /// Adds a scalar: a number, boolean, null or short name (strings are made names like
    /// tool names, so never put content here). Non-finite numbers become null; arrays,
    /// objects and keys past the 32nd are left out.
    pub fn meta(mut self, key: &str, value: impl Into<Value>) -> Signal {
        let key = hash::name(key);
        let value = match value.into() {
            Value::String(s) => Value::String(hash::name(&s)),
            v @ (Value::Number(_) | Value::Bool(_) | Value::Null) => v,
            _ => return self,
        };
        if !key.is_empty() && (self.meta.len() < MAX_META || self.meta.contains_key(&key)) {
            self.meta.insert(key, value);
        }
        self
    }
}

struct RunState {
    step: u32,
    tool_calls: u32,
    final_answer: bool,
    done: bool,
    /// Unanswered LLM calls (paired last-in first-out).
    llm: Vec<(u32, Instant)>,
    /// Unanswered tool calls by name (the most recent of that name answers first).
    tools: Vec<(String, u32, Instant)>,
    /// Unanswered retrievals by index.
    retrievals: Vec<(String, u32, Instant)>,
}

fn remember<T>(pending: &mut Vec<T>, item: T) {
    if pending.len() >= MAX_PENDING {
        pending.remove(0);
    }
    pending.push(item);
}

fn take_named(pending: &mut Vec<(String, u32, Instant)>, name: &str) -> Option<(u32, Instant)> {
    let i = pending.iter().rposition(|(n, _, _)| n == name)?;
    let (_, step, at) = pending.remove(i);
    Some((step, at))
}

/// One run of an agent. Report its steps with the methods below, then end it with
/// [`finish`](Self::finish) or [`fail`](Self::fail).
///
/// Every method returns at once: events are hashed and numbered here and queued for the
/// background sender. Steps follow the V4 rule: `run.started` is step 0, each `*.called`
/// advances the step, each `*.responded` carries its call's step, external signals and the
/// terminal event carry the current step.
///
/// **Dropping** a run that was not finished emits `run.completed` (with exit reason
/// `final_answer` if [`final_answer`](Self::final_answer) was called, else `completed`), so
/// an early return still closes the run; if the thread is panicking it emits `run.errored`
/// with error type `panic` instead.
///
/// A `Run` is `Send + Sync`: concurrent tool calls may report from several threads.
///
/// ```no_run
/// use dunetrace_client::{Dunetrace, LlmResponse, ToolResult};
/// use serde_json::json;
///
/// # fn main() -> Result<(), dunetrace_client::Error> {
/// let dt = Dunetrace::connect("postgres://agent@db/app", "dt_...")?;
/// let run = dt.run("support-bot", "What's 17% of 240?", "gpt-4o", &["calculator"]);
/// run.llm_called("gpt-4o", 420);
/// run.llm_responded(LlmResponse::new().finish_reason("tool_calls").completion_tokens(18));
/// run.tool_called("calculator", &json!({"expr": "0.17 * 240"}));
/// run.tool_responded(ToolResult::ok("calculator").output("40.8"));
/// run.llm_called("gpt-4o", 470);
/// run.llm_responded(LlmResponse::new().output("17% of 240 is 40.8.").finish_reason("stop"));
/// run.final_answer();
/// run.finish();
/// # Ok(()) }
/// ```
pub struct Run {
    dt: Dunetrace,
    run_id: String,
    agent_id: String,
    agent_version: String,
    parent_run_id: Option<String>,
    state: Mutex<RunState>,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("run_id", &self.run_id)
            .field("agent_id", &self.agent_id)
            .field("agent_version", &self.agent_version)
            .field("step", &self.step())
            .finish_non_exhaustive()
    }
}

impl Run {
    fn start(agent: &Agent, user_input: &str, parent_run_id: Option<String>) -> Run {
        let run = Run {
            dt: agent.dt.clone(),
            run_id: dunetrace_core::ids::uuid_v4(&hash::random16()),
            agent_id: agent.agent_id.clone(),
            agent_version: agent.version(),
            parent_run_id,
            state: Mutex::new(RunState {
                step: 0,
                tool_calls: 0,
                final_answer: false,
                done: false,
                llm: Vec::new(),
                tools: Vec::new(),
                retrievals: Vec::new(),
            }),
        };
        let mut payload = Map::new();
        payload.insert("input_hash".into(), hash_content(user_input).into());
        payload.insert("model".into(), hash::name(&agent.model).into());
        let tools: Vec<Value> = agent
            .tools
            .iter()
            .take(MAX_TOOLS)
            .map(|t| hash::name(t))
            .filter(|t| !t.is_empty())
            .map(Value::String)
            .collect();
        payload.insert("tools".into(), Value::Array(tools));
        if let Some(signal) = dunetrace_core::patterns::scan(user_input) {
            payload.insert("injection_signal".into(), signal);
        }
        let st = run.lock();
        run.emit(&st, EventType::RunStarted, 0, payload);
        drop(st);
        run
    }

    fn lock(&self) -> MutexGuard<'_, RunState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one event (called with the run's lock held, so events queue in step order).
    fn emit(&self, st: &RunState, t: EventType, step: u32, payload: Map<String, Value>) {
        if st.done {
            return;
        }
        let mut ev = Map::new();
        ev.insert("event_type".into(), t.as_str().into());
        ev.insert("run_id".into(), self.run_id.clone().into());
        ev.insert("agent_id".into(), self.agent_id.clone().into());
        ev.insert("agent_version".into(), self.agent_version.clone().into());
        ev.insert("step_index".into(), step.into());
        ev.insert("timestamp".into(), json!(now_epoch()));
        ev.insert("payload".into(), Value::Object(payload));
        if let Some(p) = &self.parent_run_id {
            ev.insert("parent_run_id".into(), p.clone().into());
        }
        self.dt.emit(&self.agent_id, Value::Object(ev));
    }

    /// The run's id (a random UUID).
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The agent's version the run reports.
    pub fn agent_version(&self) -> &str {
        &self.agent_version
    }

    /// The current step (0 until the first call).
    pub fn step(&self) -> u32 {
        self.lock().step
    }

    /// The agent calls an LLM. `prompt_tokens`: a count, or `None` when unknown.
    pub fn llm_called(&self, model: &str, prompt_tokens: impl Into<Option<u64>>) {
        let mut st = self.lock();
        st.step += 1;
        let step = st.step;
        remember(&mut st.llm, (step, Instant::now()));
        let mut p = Map::new();
        p.insert("model".into(), hash::name(model).into());
        if let Some(n) = prompt_tokens.into() {
            p.insert("prompt_tokens".into(), n.into());
        }
        self.emit(&st, EventType::LlmCalled, step, p);
    }

    /// The LLM answered (pairs with the most recent unanswered [`llm_called`](Self::llm_called)).
    pub fn llm_responded(&self, r: LlmResponse) {
        let mut st = self.lock();
        let (step, latency) = match st.llm.pop() {
            Some((step, at)) => (step, Some(millis(at))),
            None => (st.step, None),
        };
        let mut p = Map::new();
        let fields: [(&str, Option<Value>); 8] = [
            ("output_hash", r.output_hash.map(Value::from)),
            ("output_length", r.output_length.map(Value::from)),
            ("finish_reason", r.finish_reason.map(Value::from)),
            ("completion_tokens", r.completion_tokens.map(Value::from)),
            ("prompt_tokens", r.prompt_tokens.map(Value::from)),
            ("reasoning_tokens", r.reasoning_tokens.map(Value::from)),
            ("latency_ms", r.latency_ms.or(latency).map(Value::from)),
            ("model", r.model.map(Value::from)),
        ];
        for (k, v) in fields {
            if let Some(v) = v {
                p.insert(k.into(), v);
            }
        }
        self.emit(&st, EventType::LlmResponded, step, p);
    }

    /// The agent calls a tool with `args` (hashed: text as given, JSON canonically).
    pub fn tool_called(&self, tool_name: &str, args: impl Content) {
        let name = hash::name(tool_name);
        let args_hash = hash_content(&args.text());
        let mut st = self.lock();
        st.step += 1;
        st.tool_calls += 1;
        let step = st.step;
        remember(&mut st.tools, (name.clone(), step, Instant::now()));
        let mut p = Map::new();
        p.insert("tool_name".into(), name.into());
        p.insert("args_hash".into(), args_hash.into());
        self.emit(&st, EventType::ToolCalled, step, p);
    }

    /// A tool returned (pairs with the most recent unanswered call of the same tool).
    pub fn tool_responded(&self, r: ToolResult) {
        let mut st = self.lock();
        let (step, latency) = match take_named(&mut st.tools, &r.tool_name) {
            Some((step, at)) => (step, Some(millis(at))),
            None => (st.step, None),
        };
        let mut p = Map::new();
        p.insert("tool_name".into(), r.tool_name.into());
        p.insert("success".into(), r.success.into());
        if let Some(n) = r.output_length {
            p.insert("output_length".into(), n.into());
        }
        if let Some(ms) = r.latency_ms.or(latency) {
            p.insert("latency_ms".into(), ms.into());
        }
        if let Some(h) = r.error_hash {
            p.insert("error_hash".into(), h.into());
        }
        self.emit(&st, EventType::ToolResponded, step, p);
    }

    /// The agent queries an index with `query` (hashed).
    pub fn retrieval_called(&self, index_name: &str, query: impl Content) {
        let name = hash::name(index_name);
        let query_hash = hash_content(&query.text());
        let mut st = self.lock();
        st.step += 1;
        let step = st.step;
        remember(&mut st.retrievals, (name.clone(), step, Instant::now()));
        let mut p = Map::new();
        p.insert("index_name".into(), name.into());
        p.insert("query_hash".into(), query_hash.into());
        self.emit(&st, EventType::RetrievalCalled, step, p);
    }

    /// A retrieval returned (pairs with the most recent unanswered query of that index).
    pub fn retrieval_responded(&self, r: RetrievalResult) {
        let mut st = self.lock();
        let (step, latency) = match take_named(&mut st.retrievals, &r.index_name) {
            Some((step, at)) => (step, Some(millis(at))),
            None => (st.step, None),
        };
        let mut p = Map::new();
        p.insert("index_name".into(), r.index_name.into());
        p.insert("result_count".into(), r.result_count.into());
        if let Some(s) = r.top_score {
            p.insert("top_score".into(), json!(s));
        }
        if let Some(ms) = r.latency_ms.or(latency) {
            p.insert("latency_ms".into(), ms.into());
        }
        self.emit(&st, EventType::RetrievalResponded, step, p);
    }

    /// Something happened outside the agent during the current step (never advances it).
    pub fn external_signal(&self, s: Signal) {
        let st = self.lock();
        let mut p = Map::new();
        p.insert("signal_name".into(), s.name.into());
        if let Some(src) = s.source {
            p.insert("source".into(), src.into());
        }
        if !s.meta.is_empty() {
            p.insert("meta".into(), Value::Object(s.meta));
        }
        self.emit(&st, EventType::ExternalSignal, st.step, p);
    }

    /// The agent produced its final answer: the run will complete with exit reason
    /// `final_answer` (else `completed`). Emits nothing by itself.
    pub fn final_answer(&self) {
        self.lock().final_answer = true;
    }

    /// Stops tracking the run without a terminal event, as if the agent had hung or crashed:
    /// the server processes it as stalled once nothing has arrived for
    /// `dunetrace.stall_timeout` seconds.
    pub fn abandon(self) {
        self.lock().done = true;
    }

    /// Ends the run: emits `run.completed`.
    pub fn finish(self) {
        self.complete();
    }

    fn complete(&self) {
        let mut st = self.lock();
        let exit = if st.final_answer {
            "final_answer"
        } else {
            "completed"
        };
        let p =
            json!({"total_steps": st.step, "exit_reason": exit, "tool_call_count": st.tool_calls});
        let Value::Object(p) = p else { unreachable!() };
        self.emit(&st, EventType::RunCompleted, st.step, p);
        st.done = true;
    }

    /// Ends the run in error: emits `run.errored` with `error_type` (a name, e.g. the error's
    /// type) and the SHA-256 of `error_message` (`""` sends an empty hash).
    pub fn fail(self, error_type: &str, error_message: impl Content) {
        let h = hash_content(&error_message.text());
        self.errored(error_type, h);
    }

    /// Ends the run in error from a Rust error: the error type is the last segment of its
    /// type name, the hash is over its `Display` text.
    ///
    /// ```no_run
    /// # let dt = dunetrace_client::Dunetrace::connect("host=db", "dt_...").unwrap();
    /// # let run = dt.run("a", "in", "m", dunetrace_client::NO_TOOLS);
    /// let err = std::io::Error::other("disk full");
    /// run.fail_with(&err); // error_type "Error", error_hash = SHA-256("disk full")
    /// ```
    pub fn fail_with<E: std::error::Error + ?Sized>(self, error: &E) {
        let full = std::any::type_name::<E>();
        let base = full.split('<').next().unwrap_or(full);
        let short = base.rsplit("::").next().unwrap_or(base);
        self.errored(short, hash_content(&error.to_string()));
    }

    fn errored(&self, error_type: &str, error_hash: String) {
        let mut st = self.lock();
        let mut p = Map::new();
        p.insert("error_type".into(), hash::name(error_type).into());
        p.insert("error_hash".into(), error_hash.into());
        p.insert("step_index".into(), st.step.into());
        self.emit(&st, EventType::RunErrored, st.step, p);
        st.done = true;
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if self.lock().done {
            return;
        }
        if std::thread::panicking() {
            self.errored("panic", String::new());
        } else {
            self.complete();
        }
    }
}
