-- Demo traffic: an agent key, three runs in the wire format the client sends, and what was
-- stored. Every content field is a SHA-256 digest; nothing readable leaves the agent.
\pset footer off
SELECT dunetrace.create_api_key('support-bot') AS key \gset

\echo '--- a healthy run, a run that loops a tool, and a run that is still going'
SELECT dunetrace.ingest(:'key', jsonb_agg(e)) AS result FROM (
  SELECT jsonb_build_object(
           'event_type', t, 'run_id', r, 'agent_id', 'support-bot', 'agent_version', 'a1b2c3d4',
           'step_index', s, 'timestamp', extract(epoch FROM now()) + s, 'payload', p::jsonb) AS e
  FROM (VALUES
    ('run-healthy', 'run.started', 0, '{"input_hash": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "model": "gpt-4o", "tools": ["search", "lookup_order"]}'),
    ('run-healthy', 'llm.called', 1, '{"model": "gpt-4o", "prompt_tokens": 420}'),
    ('run-healthy', 'llm.responded', 1, '{"completion_tokens": 38, "latency_ms": 640, "finish_reason": "tool_calls", "output_length": 152}'),
    ('run-healthy', 'tool.called', 2, '{"tool_name": "lookup_order", "args_hash": "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752"}'),
    ('run-healthy', 'tool.responded', 2, '{"tool_name": "lookup_order", "success": true, "output_length": 512, "latency_ms": 85}'),
    ('run-healthy', 'run.completed', 2, '{"total_steps": 2, "exit_reason": "final_answer", "tool_call_count": 1}'),
    ('run-loop', 'run.started', 0, '{"model": "gpt-4o", "tools": ["search"]}'),
    ('run-loop', 'tool.called', 1, '{"tool_name": "search", "args_hash": "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"}'),
    ('run-loop', 'tool.called', 2, '{"tool_name": "search", "args_hash": "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"}'),
    ('run-loop', 'tool.called', 3, '{"tool_name": "search", "args_hash": "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"}'),
    ('run-loop', 'tool.called', 4, '{"tool_name": "search", "args_hash": "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"}'),
    ('run-loop', 'tool.called', 5, '{"tool_name": "search", "args_hash": "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"}'),
    ('run-loop', 'run.completed', 5, '{"total_steps": 5, "exit_reason": "completed", "tool_call_count": 5}'),
    ('run-open', 'run.started', 0, '{"model": "gpt-4o-mini", "tools": []}'),
    ('run-open', 'llm.called', 1, '{"model": "gpt-4o-mini", "prompt_tokens": 90}')
  ) AS v(r, t, s, p)
) q;

\echo '--- raw content is refused (nothing is stored):'
\set ON_ERROR_STOP off
SELECT dunetrace.ingest(:'key', '{"event_type": "llm.responded", "run_id": "run-x", "agent_id": "support-bot", "agent_version": "a1b2c3d4", "step_index": 1, "payload": {"output_hash": "The capital of France is Paris"}}');
\set ON_ERROR_STOP on

\echo '--- runs tracked by ingest'
SELECT run_id, agent_id, event_count, max_step, has_started, terminal_event FROM dunetrace.runs ORDER BY run_id;
\echo '--- events stored'
SELECT run_id, step_index, event_type, payload->>'tool_name' AS tool FROM dunetrace.events ORDER BY run_id, id;
