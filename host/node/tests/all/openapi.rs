//! docs/openapi.json against a live cluster: every documented operation is served, answers
//! 200 with a body of the documented schema and content type, and, where it needs a token,
//! answers 401 with the documented error body without one; the refusals a caller can cause
//! (400, 403, 404, 413, 422) are documented for their operations with the error body they
//! carry; docs/api.md's endpoint table lists the same operations.

use serde_json::Value;

use crate::http::{READER, WRITER, cluster_with_sequencer};

fn spec() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/openapi.json"
    ))
    .expect("docs/openapi.json");
    serde_json::from_str(&text).expect("docs/openapi.json is JSON")
}

/// `#/components/schemas/X` in `spec`.
fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let path = r.strip_prefix("#/").expect("a local $ref");
            let target = path.split('/').fold(spec, |v, key| &v[key]);
            assert!(!target.is_null(), "{r} names nothing");
            resolve(spec, target)
        }
        None => schema,
    }
}

/// Checks `value` against the subset of JSON Schema the description uses: `$ref`, `type`
/// (one or a list, with `null`), `required`, `properties`, `items`, `enum`, `pattern`,
/// `minimum`, `minLength`, `maxLength` (`description` and `default` say nothing to check).
/// Hand-made on purpose: a full validator crate would bring some thirty crates into the
/// test build for these ten keywords; a keyword outside them fails the test, so the
/// description cannot silently outgrow the check.
fn check(spec: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    const KNOWN: &[&str] = &[
        "$ref",
        "type",
        "required",
        "properties",
        "items",
        "enum",
        "pattern",
        "minimum",
        "description",
        "default",
        "minLength",
        "maxLength",
    ];
    let schema = resolve(spec, schema);
    for key in schema.as_object().expect("a schema is an object").keys() {
        assert!(
            KNOWN.contains(&key.as_str()),
            "{at}: schema keyword {key} is not checked"
        );
    }
    if let Some(types) = schema.get("type") {
        let types: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            other => panic!("{at}: type {other}"),
        };
        let fits = types.iter().any(|t| match *t {
            "null" => value.is_null(),
            "integer" => value.is_u64() || value.is_i64(),
            "number" => value.is_number(),
            "string" => value.is_string(),
            "boolean" => value.is_boolean(),
            "array" => value.is_array(),
            "object" => value.is_object(),
            other => panic!("{at}: type {other}"),
        });
        if !fits {
            return Err(format!("{at}: {value} is not {types:?}"));
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        return Err(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let (Some(p), Some(s)) = (
        schema.get("pattern").and_then(Value::as_str),
        value.as_str(),
    ) && !regex::Regex::new(p).expect("a pattern").is_match(s)
    {
        return Err(format!("{at}: {s:?} does not match {p}"));
    }
    if let Some(s) = value.as_str() {
        let chars = s.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && chars < min
        {
            return Err(format!("{at}: {s:?} is shorter than {min}"));
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && chars > max
        {
            return Err(format!("{at}: {s:?} is longer than {max}"));
        }
    }
    if let (Some(min), Some(n)) = (
        schema.get("minimum").and_then(Value::as_i64),
        value.as_i64(),
    ) && n < min
    {
        return Err(format!("{at}: {n} < {min}"));
    }
    if let Some(object) = value.as_object() {
        for key in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = key.as_str().expect("a name");
            if !object.contains_key(key) {
                return Err(format!("{at}: no {key:?} in {value}"));
            }
        }
        if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
            for (key, v) in object {
                let Some(s) = properties.get(key) else {
                    return Err(format!("{at}: {key:?} is not in the description"));
                };
                check(spec, s, v, &format!("{at}.{key}"))?;
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (i, v) in array.iter().enumerate() {
            check(spec, items, v, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

/// The documented operations, as (METHOD, path).
fn operations(spec: &Value) -> Vec<(String, String)> {
    let mut ops = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            ops.push((method.to_uppercase(), path.clone()));
        }
    }
    ops.sort();
    ops
}

#[test]
fn the_openapi_description_lists_what_docs_api_md_lists() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/api.md"))
        .expect("docs/api.md");
    let mut table: Vec<(String, String)> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(op, _)| op.to_string()))
        .filter_map(|op| {
            let (method, path) = op.split_once(' ')?;
            let path = path.split('?').next().unwrap_or(path);
            ["GET", "POST"]
                .contains(&method)
                .then(|| (method.to_string(), path.to_string()))
        })
        .collect();
    table.sort();
    assert_eq!(
        table,
        operations(&spec()),
        "docs/api.md's table vs docs/openapi.json"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_description_matches_the_server() {
    let spec = spec();
    let mut c = cluster_with_sequencer().await;
    let leader = c.leader().await.id;
    let port = c.http_port(leader);
    let mut checked = 0;
    for (method, path) in operations(&spec) {
        let op = &spec["paths"][&path][method.to_lowercase()];
        let id = op["operationId"].as_str().expect("an operationId");
        let mut url = path.clone();
        for p in op["parameters"].as_array().into_iter().flatten() {
            let p = resolve(&spec, p);
            if p["in"] == "path" {
                let example = p["example"].as_str().expect("a path parameter's example");
                url = url.replace(
                    &format!("{{{}}}", p["name"].as_str().expect("a name")),
                    example,
                );
            }
        }
        let body = op["requestBody"]["content"]["application/json"]["example"].to_string();
        let body = if op.get("requestBody").is_some() {
            body.into_bytes()
        } else {
            Vec::new()
        };
        let needs_token = op.get("security").is_some();
        let token = if method == "POST" && id != "query" {
            WRITER
        } else {
            READER
        };
        let auth = [format!("Authorization: Bearer {token}")];
        let headers: &[String] = if needs_token { &auth } else { &[] };
        let (status, answer) = port
            .exchange_full(&method, &url, headers, &body)
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(status, 200, "{id}: {method} {url}: {}", answer.body);
        let documented = &op["responses"]["200"]["content"];
        let content_type = answer.content_type.split(';').next().unwrap_or("").trim();
        let Some(media) = documented.get(content_type) else {
            panic!("{id}: served {content_type:?}, documented {documented}");
        };
        if content_type == "application/json" {
            let value: Value = serde_json::from_str(&answer.body).expect("a JSON body");
            if let Some(schema) = media.get("schema") {
                check(&spec, schema, &value, id).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        if needs_token {
            let (status, answer) = port
                .exchange_full(&method, &url, &[], &body)
                .await
                .unwrap_or_else(|e| panic!("{id}: {e}"));
            assert_eq!(status, 401, "{id} without a token");
            let documented = resolve(&spec, &op["responses"]["401"]);
            let schema = &documented["content"]["application/json"]["schema"];
            let value: Value = serde_json::from_str(&answer.body).expect("a JSON error");
            check(&spec, schema, &value, id).unwrap_or_else(|e| panic!("{e}"));
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} operations documented");

    // The refusals a caller can cause: each status documented for its operation, with the
    // documented error body and the kind docs/api.md gives it.
    let example = |path: &str| {
        spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["example"]
            .to_string()
            .into_bytes()
    };
    let (apply, query, batch) = ("/v1/fsms/{fsm}/apply", "/v1/fsms/{fsm}/query", "/v1/batch");
    let too_large = vec![b' '; (1 << 20) + 1];
    // A block below the latest one, which the examples above committed: refused.
    let older = {
        let mut block: Value = serde_json::from_slice(&example(apply)).expect("the example");
        let number = &mut block["Commit"]["number"];
        *number = (number.as_u64().expect("a block number") - 1).into();
        block.to_string().into_bytes()
    };
    // (operation, FSM, token, body, status, kind)
    type Refusal<'a> = (&'a str, &'a str, &'a str, Vec<u8>, u16, &'a str);
    let refusals: [Refusal; 8] = [
        (apply, "sequencer", READER, example(apply), 403, "forbidden"),
        (batch, "", READER, example(batch), 403, "forbidden"),
        (apply, "nosuch", WRITER, example(apply), 404, "unknown_fsm"),
        (query, "nosuch", READER, example(query), 404, "unknown_fsm"),
        (apply, "sequencer", WRITER, b"{".to_vec(), 400, "bad_json"),
        (apply, "sequencer", WRITER, too_large, 413, "too_large"),
        (apply, "sequencer", WRITER, older, 422, "failed"),
        // The batch's example commits block 1, below the apply example's block 2.
        (batch, "", WRITER, example(batch), 422, "failed"),
    ];
    for (path, fsm, token, body, expected, kind) in refusals {
        let url = path.replace("{fsm}", fsm);
        let auth = [format!("Authorization: Bearer {token}")];
        let (status, answer) = port
            .exchange_full("POST", &url, &auth, &body)
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        assert_eq!(status, expected, "POST {url}: {}", answer.body);
        let responses = &spec["paths"][path]["post"]["responses"];
        let Some(documented) = responses.get(status.to_string()) else {
            panic!("POST {path} answers {status}, which it does not document");
        };
        let documented = resolve(&spec, documented);
        let schema = &documented["content"]["application/json"]["schema"];
        let value: Value = serde_json::from_str(&answer.body).expect("a JSON error");
        check(&spec, schema, &value, &url).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(value["error"], kind, "POST {url}: {}", answer.body);
    }
    c.stop_all().await;
}
