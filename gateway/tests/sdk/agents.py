"""Two scripted agents instrumented with the original dunetrace SDK's manual API, pointed at
the gateway only through the environment (DUNETRACE_ENDPOINT, DUNETRACE_API_KEY): one that
loops a tool and one that behaves. Prints the run ids as JSON; exits non-zero if the SDK
logged any warning (a batch it could not ship, for instance)."""

import json
import logging
import os
import sys
import threading

from dunetrace import Dunetrace
from dunetrace.models import hash_content

warnings = []


class Collect(logging.Handler):
    def emit(self, record):
        if record.levelno >= logging.WARNING:
            warnings.append(record.getMessage())


logging.getLogger("dunetrace").addHandler(Collect())

AGENT = os.environ["AGENT_ID"]
TOOLS = ["web_search", "calculator"]
SYSTEM = "You are a helpful assistant."

dt = Dunetrace()  # endpoint and key come from the environment: that is the whole migration


def think(run, prompt_tokens):
    text = "Let me look that up."
    run.llm_called("gpt-4o", prompt_tokens=prompt_tokens)
    run.llm_responded(
        completion_tokens=8,
        latency_ms=12,
        finish_reason="stop",
        output_hash=hash_content(text),
        output_length=len(text),
    )


# An agent stuck in a loop: the same search, again and again.
with dt.run(AGENT, user_input="What is the weather in Paris?", system_prompt=SYSTEM,
            model="gpt-4o", tools=TOOLS) as run:
    for _ in range(6):
        think(run, 200)
        run.tool_called("web_search", {"query": "weather in Paris"})
        run.tool_responded("web_search", success=True, output_length=512, latency_ms=5)
    think(run, 260)
    run.final_answer()
    loop_run = run.run_id

# A healthy agent: one tool call, then the answer.
with dt.run(AGENT, user_input="What is 2 + 2?", system_prompt=SYSTEM,
            model="gpt-4o", tools=TOOLS) as run:
    think(run, 100)
    run.tool_called("calculator", {"expression": "2 + 2"})
    run.tool_responded("calculator", success=True, output_length=1, latency_ms=1)
    think(run, 120)
    run.final_answer()
    healthy_run = run.run_id

dt.mark_deploy(AGENT, version="v1.4.2", commit="abc1234", env="production")

# Let the SDK's background threads (policy fetch, deploy marker) finish, then flush.
for t in threading.enumerate():
    if t is not threading.main_thread() and t.name != "dunetrace-drain":
        t.join(timeout=10)
dt.flush(block=True, timeout=10)
dt.shutdown(timeout=10)

print(json.dumps({"loop_run": loop_run, "healthy_run": healthy_run, "warnings": warnings}))
sys.exit(1 if warnings else 0)
