//! The jsonb reader (`jsonb.rs`) against the text path it replaces: `jsonb_out`, then serde.

#[pgrx::pg_schema]
mod tests {
    use dunetrace_core::validate::{parse_batch_text, validate_batch};
    use pgrx::datum::DatumWithOid;
    use pgrx::prelude::*;
    use serde_json::{json, Value};

    const H16: &str = "0123456789abcdef";

    /// Runs `sql` (one row: a jsonb value and its text) and hands `f` the value's binary form
    /// and the text.
    fn with_jsonb<R>(sql: &str, arg: DatumWithOid<'_>, f: impl FnOnce(&[u8], &str) -> R) -> R {
        Spi::connect(|c| {
            let rows = c.select(sql, None, &[arg]).unwrap();
            let row = rows.first();
            let datum = row.get_datum_by_ordinal(1).unwrap().unwrap();
            let text: String = row.get(2).unwrap().unwrap();
            // SAFETY: a jsonb datum of the live SPI result.
            let bytes = unsafe {
                let v = pg_sys::pg_detoast_datum(datum.cast_mut_ptr());
                pgrx::varlena::varlena_to_byte_slice(v)
            };
            f(bytes, &text)
        })
    }

    /// (binary read → validate, text read → validate) for one jsonb literal.
    fn both(text: &str) -> (String, String) {
        let sql = "SELECT $1::jsonb, $1::jsonb::text";
        with_jsonb(sql, text.into(), |bytes, printed| {
            let read = dunetrace_core::jsonb::read_batch(bytes);
            let text = format!("{:?}", parse_batch_text(printed, 0.0));
            let binary = match read {
                Ok(b) => format!("{:?}", validate_batch(b, 0.0)),
                // The text path names the line and column; the kind of refusal is the same.
                Err(dunetrace_core::jsonb::ReadError::Number)
                    if text.contains("number out of range") =>
                {
                    text.clone()
                }
                Err(e) => format!("read error {e:?}"),
            };
            (binary, text)
        })
    }

    fn ev(i: usize, t: &str, payload: Value) -> Value {
        json!({"event_type": t, "run_id": format!("run-{}", i % 7), "agent_id": "agent-a",
               "agent_version": "v1", "step_index": i, "timestamp": 1700000000.125 + i as f64,
               "payload": payload})
    }

    #[pg_test]
    fn reads_batches_as_the_text_path_does() {
        let numbers = [
            json!(0),
            json!(-0.0),
            json!(7),
            json!(1.5),
            json!(0.05),
            json!(1e-7),
            json!(123_456_789.987_654_33),
            json!(1e21),
            json!(-2.5e-300),
            json!(9007199254740993u64),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(0.1 + 0.2),
        ];
        let mut many = Vec::new();
        for i in 0..150 {
            many.push(match i % 5 {
                0 => ev(i, "llm.called", json!({"model": "gpt-4o", "prompt_tokens": i * 97})),
                1 => ev(
                    i,
                    "retrieval.responded",
                    json!({"index_name": "docs", "result_count": i, "top_score": numbers[i % numbers.len()].clone()}),
                ),
                2 => ev(
                    i,
                    "external.signal",
                    json!({"signal_name": "rate_limited",
                           "meta": (0..32).map(|k| (format!("k{k}"), numbers[(i + k) % numbers.len()].clone()))
                                          .collect::<serde_json::Map<String, Value>>()}),
                ),
                3 => ev(
                    i,
                    "policy.triggered",
                    json!({"policy_name": "p", "value": numbers[i % numbers.len()].clone()}),
                ),
                _ => ev(
                    i,
                    "run.started",
                    json!({"input_hash": H16, "tools": (0..40).map(|t| format!("tool_{t}")).collect::<Vec<_>>()}),
                ),
            });
        }
        let mut cases: Vec<String> = vec![
            Value::Array(many).to_string(),
            ev(
                1,
                "tool.called",
                json!({"tool_name": "s\u{e9}arch \"x\"", "args_hash": H16}),
            )
            .to_string(),
            json!([ev(1, "tool.called", json!(null)), 5, "x", null, [1, 2], {}]).to_string(),
            json!([]).to_string(),
            json!(3).to_string(),
            json!("text").to_string(),
            json!(null).to_string(),
            json!({"event_type": "run.started"}).to_string(),
            r#"[{"event_type":"tool.called","run_id":"r","agent_id":"agent-a","agent_version":"v",
                "step_index":1,"payload":{"tool_name":"a b","tool_name":"ok"},"timestamp":1e300}]"#
                .to_string(),
            r#"{"event_type":"tool.called","run_id":"r","agent_id":"a","agent_version":"v",
                "step_index":1e2,"payload":{"tool_name":"x"}}"#
                .to_string(),
            r#"{"event_type":"tool.called","run_id":"r","agent_id":"a","agent_version":"v",
                "step_index":4.0,"timestamp":1e400}"#
                .to_string(),
        ];
        for n in &numbers {
            cases.push(ev(1, "policy.triggered", json!({"value": n})).to_string());
        }
        for (i, case) in cases.iter().enumerate() {
            let (binary, text) = both(case);
            assert_eq!(binary, text, "{case}");
            if i == 0 {
                // The large batch is valid: the events themselves were compared.
                assert!(binary.starts_with("Ok(["), "{binary}");
            }
        }
    }

    #[pg_test]
    fn stored_payloads_read_as_their_text() {
        let payloads = [
            json!({}),
            json!({"tool_name": "search", "args_hash": H16}),
            json!({"meta": {"a": 1, "b": [1.5, "x"], "c": {"d": null}}, "signal_name": "s"}),
            json!({"value": 1e21, "n": -0.000125, "big": u64::MAX, "t": true, "f": false}),
            json!((0..40)
                .map(|k| (format!("key_{k}"), json!(k)))
                .collect::<serde_json::Map<_, _>>()),
            json!([1, 2]),
            json!("scalar"),
        ];
        Spi::run("CREATE TEMP TABLE p (id int, payload jsonb)").unwrap();
        for (i, p) in payloads.iter().enumerate() {
            Spi::run_with_args(
                "INSERT INTO p VALUES ($1, $2::jsonb)",
                &[(i as i32).into(), p.to_string().into()],
            )
            .unwrap();
        }
        for i in 0..payloads.len() {
            let sql = "SELECT payload, payload::text FROM p WHERE id = $1";
            with_jsonb(sql, (i as i32).into(), |bytes, text| {
                let read = dunetrace_core::jsonb::read_payload(bytes).unwrap();
                let parsed = serde_json::from_str::<dunetrace_core::event::Payload>(text)
                    .unwrap_or_default();
                assert_eq!(read, parsed, "{text}");
            });
        }
    }

    #[pg_test]
    fn numeric_text_is_numeric_out() {
        for n in [
            "0",
            "-0",
            "1",
            "-1",
            "10000",
            "9999.9999",
            "0.0001",
            "0.00012300",
            "-123.456",
            "1e21",
            "1.5e-10",
            "123456789012345678901234567890.000000001",
            "100000000",
            "0.1",
            "3.14159265358979323846264338327950288419716939937510",
        ] {
            let (bytes, out) = Spi::connect(|c| {
                let rows = c
                    .select("SELECT $1::numeric, $1::numeric::text", None, &[n.into()])
                    .unwrap();
                let row = rows.first();
                let datum = row.get_datum_by_ordinal(1).unwrap().unwrap();
                // SAFETY: a numeric datum of the live SPI result.
                let bytes = unsafe {
                    let v = datum.cast_mut_ptr::<pg_sys::varlena>();
                    let len = pgrx::varlena::varsize_any(v);
                    std::slice::from_raw_parts(v as *const u8, len).to_vec()
                };
                (bytes, row.get::<String>(2).unwrap().unwrap())
            });
            assert_eq!(
                dunetrace_core::jsonb::numeric_text(&bytes).unwrap(),
                out,
                "{n}"
            );
        }
    }
}
