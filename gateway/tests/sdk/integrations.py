"""Drives the original SDK's own framework integrations (LangChain callback, Hermes plugin)
and its policy engine without the frameworks installed, so that every payload shape they
emit is shipped through the gateway. Prints the run ids as JSON; exits non-zero if the SDK
logged any warning (a batch it could not ship, for instance)."""

import json
import logging
import sys
import threading
import uuid
from types import SimpleNamespace

import dunetrace.integrations.langchain as lc
from dunetrace import Dunetrace, PolicyViolation
from dunetrace.integrations.hermes import DunetraceHermesPlugin

warnings = []


class Collect(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.WARNING:
            warnings.append(record.getMessage())


logging.getLogger("dunetrace").addHandler(Collect())

import os  # noqa: E402

AGENT = os.environ["AGENT_ID"]
runs = {}

dt = Dunetrace()

# ── LangChain callback (langchain itself is not installed; the handler needs no more) ──
lc._LANGCHAIN_AVAILABLE = True
cb = lc.DunetraceCallbackHandler(dt, agent_id=AGENT, model="gpt-4o", tools=["web_search"])


def ids():
    return str(uuid.uuid4())


root = ids()
cb.on_chain_start({}, {"input": "What is the weather in Paris?"}, run_id=root)
llm1 = ids()
cb.on_chat_model_start({"kwargs": {"model_name": "gpt-4o"}}, [[]], run_id=llm1, parent_run_id=root)
gen = SimpleNamespace(text="Let me search.", generation_info={"finish_reason": "stop"}, message=None)
usage = {"prompt_tokens": 120, "completion_tokens": 9,
         "completion_tokens_details": {"reasoning_tokens": 64}}
cb.on_llm_end(SimpleNamespace(generations=[[gen]], llm_output={"token_usage": usage}),
              run_id=llm1, parent_run_id=root)
llm2 = ids()
cb.on_chat_model_start({"kwargs": {"model": "gpt-4o"}}, [[]], run_id=llm2, parent_run_id=root)
cb.on_llm_error(RuntimeError("rate limited"), run_id=llm2, parent_run_id=root)
t1, t2, t3 = ids(), ids(), ids()
cb.on_tool_start({"name": "web_search"}, "weather in Paris", run_id=t1, parent_run_id=root)
cb.on_tool_end("Sunny, 21C", run_id=t1, parent_run_id=root, name="web_search")
cb.on_tool_start({"name": "web_search"}, "weather in Paris", run_id=t2, parent_run_id=root)
cb.on_tool_error(RuntimeError("timeout"), run_id=t2, parent_run_id=root, name="web_search")
cb.on_tool_start({"name": "web_search"}, "weather in Paris", run_id=t3, parent_run_id=root)
cb.on_tool_end("", run_id=t3, parent_run_id=root, name="web_search", error=RuntimeError("bad input"))
r1, r2 = ids(), ids()
cb.on_retriever_start({"name": "docs_index"}, "paris weather", run_id=r1, parent_run_id=root)
cb.on_retriever_end([SimpleNamespace(metadata={"score": 0.82}, page_content="...")],
                    run_id=r1, parent_run_id=root)
cb.on_retriever_start({"name": "docs_index"}, "paris weather", run_id=r2, parent_run_id=root)
cb.on_retriever_error(RuntimeError("index offline"), run_id=r2, parent_run_id=root)
cb.on_chain_end({"output": "Sunny."}, run_id=root)
runs["langchain_completed"] = root

root2 = ids()
cb.on_chain_start({}, {"messages": [("human", "hello")]}, run_id=root2)
cb.on_chain_error(ValueError("parse failure"), run_id=root2)
runs["langchain_errored"] = root2

# ── Hermes plugin hooks ──
hermes = DunetraceHermesPlugin(dt, agent_id=AGENT, model="anthropic/claude-3.5-sonnet")
for name, completed, interrupted in (("hermes_completed", True, False),
                                     ("hermes_interrupted", True, True)):
    turn = ids()
    hermes._pre_llm_call(turn_id=turn, session_id="s1", user_message="list my files",
                         model="anthropic/claude-3.5-sonnet")
    hermes._pre_api_request(turn_id=turn, api_request_id="a1", model="anthropic/claude-3.5-sonnet",
                            approx_input_tokens=150)
    hermes._post_api_request(turn_id=turn, api_request_id="a1", api_duration=0.4,
                             finish_reason="tool_calls", usage={"output_tokens": 30})
    hermes._pre_tool_call(turn_id=turn, tool_name="terminal", args={"cmd": "ls"}, tool_call_id="c1")
    hermes._post_tool_call(turn_id=turn, tool_name="terminal", tool_call_id="c1", duration_ms=12,
                           status="error", error_message="exit status 1")
    hermes._on_session_end(turn_id=turn, completed=completed, interrupted=interrupted)
    runs[name] = turn

# ── Policies: a log policy on a detector signal, and a stop policy ──
watch = Dunetrace()
watch.add_policy(name="loop_watch",
                 condition={"trigger": "signal", "operator": "contains", "value": "TOOL_LOOP"},
                 action={"type": "log"})
with watch.run(AGENT, user_input="weather?", model="gpt-4o", tools=["web_search"]) as run:
    for _ in range(6):
        run.tool_called("web_search", {"query": "weather"})
        run.tool_responded("web_search", success=True, output_length=10, latency_ms=1)
    run.final_answer()
    runs["policy_signal"] = run.run_id

stop = Dunetrace()
stop.add_policy(name="cap_tool_calls",
                condition={"trigger": "tool_call_count", "operator": "gt", "value": 2},
                action={"type": "stop"})
try:
    with stop.run(AGENT, user_input="weather?", model="gpt-4o", tools=["web_search"]) as run:
        runs["policy_stop"] = run.run_id
        for _ in range(5):
            run.tool_called("web_search", {"query": "weather"})
            run.tool_responded("web_search", success=True, output_length=10, latency_ms=1)
except PolicyViolation:
    pass

for t in threading.enumerate():
    if t is not threading.main_thread() and not t.name.startswith("dunetrace-drain"):
        t.join(timeout=10)
for client in (dt, watch, stop):
    client.flush(block=True, timeout=10)
    client.shutdown(timeout=10)

print(json.dumps({"runs": runs, "warnings": warnings}))
sys.exit(1 if warnings else 0)
