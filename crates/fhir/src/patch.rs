//! JSON Patch (RFC 6902) over JSON Pointers (RFC 6901), for FHIR's `PATCH` interaction.

use serde_json::Value;

/// Why a patch was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The patch document itself is malformed (a `400`).
    #[error("{0}")]
    Malformed(String),
    /// The patch is well-formed but cannot be applied to this resource: a path that does not exist, a
    /// failed `test` (a `422`).
    #[error("{0}")]
    Unprocessable(String),
}

fn malformed<T>(msg: impl Into<String>) -> Result<T, PatchError> {
    Err(PatchError::Malformed(msg.into()))
}

fn unprocessable<T>(msg: impl Into<String>) -> Result<T, PatchError> {
    Err(PatchError::Unprocessable(msg.into()))
}

/// The reference tokens of a JSON Pointer (`/a/b~1c` → `a`, `b/c`).
fn tokens(pointer: &str) -> Result<Vec<String>, PatchError> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return malformed(format!("'{pointer}' is not a JSON Pointer (it must start with '/')"));
    };
    Ok(rest.split('/').map(|t| t.replace("~1", "/").replace("~0", "~")).collect())
}

/// An array index token: digits without leading zeros (or `-` when `end` is allowed).
fn index(token: &str, len: usize, end: bool, pointer: &str) -> Result<usize, PatchError> {
    if end && token == "-" {
        return Ok(len);
    }
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_digit()) || (token.len() > 1 && token.starts_with('0')) {
        return unprocessable(format!("'{token}' in '{pointer}' is not an array index"));
    }
    let i: usize = token.parse().map_err(|_| PatchError::Unprocessable(format!("'{token}' in '{pointer}' is out of range")))?;
    if i > len || (!end && i == len) {
        return unprocessable(format!("index {i} in '{pointer}' is out of range (the array has {len} items)"));
    }
    Ok(i)
}

fn get<'a>(doc: &'a Value, pointer: &str) -> Result<&'a Value, PatchError> {
    let mut at = doc;
    for t in tokens(pointer)? {
        at = match at {
            Value::Object(m) => m.get(&t).ok_or_else(|| PatchError::Unprocessable(format!("'{pointer}' does not exist in the resource")))?,
            Value::Array(a) => &a[index(&t, a.len(), false, pointer)?],
            _ => return unprocessable(format!("'{pointer}' does not exist in the resource")),
        };
    }
    Ok(at)
}

/// The parent container of `pointer` and the last token.
fn parent<'a>(doc: &'a mut Value, pointer: &str) -> Result<(&'a mut Value, String), PatchError> {
    let mut ts = tokens(pointer)?;
    let Some(last) = ts.pop() else { return malformed("the whole resource cannot be the target of this operation; use a path below it") };
    let mut at = doc;
    for t in ts {
        at = match at {
            Value::Object(m) => m.get_mut(&t).ok_or_else(|| PatchError::Unprocessable(format!("the parent of '{pointer}' does not exist")))?,
            Value::Array(a) => {
                let i = index(&t, a.len(), false, pointer)?;
                &mut a[i]
            }
            _ => return unprocessable(format!("the parent of '{pointer}' does not exist")),
        };
    }
    Ok((at, last))
}

fn add(doc: &mut Value, pointer: &str, value: Value) -> Result<(), PatchError> {
    let (container, last) = parent(doc, pointer)?;
    match container {
        Value::Object(m) => {
            m.insert(last, value);
        }
        Value::Array(a) => {
            let i = index(&last, a.len(), true, pointer)?;
            a.insert(i, value);
        }
        _ => return unprocessable(format!("the parent of '{pointer}' is neither an object nor an array")),
    }
    Ok(())
}

fn remove(doc: &mut Value, pointer: &str) -> Result<Value, PatchError> {
    let (container, last) = parent(doc, pointer)?;
    match container {
        Value::Object(m) => m.remove(&last).ok_or_else(|| PatchError::Unprocessable(format!("'{pointer}' does not exist in the resource"))),
        Value::Array(a) => {
            let i = index(&last, a.len(), false, pointer)?;
            Ok(a.remove(i))
        }
        _ => unprocessable(format!("'{pointer}' does not exist in the resource")),
    }
}

/// Applies the operations of `patch` (a JSON array) to a copy of `doc`, all or nothing.
pub fn apply(doc: &Value, patch: &Value) -> Result<Value, PatchError> {
    let Some(ops) = patch.as_array() else { return malformed("a JSON Patch is an array of operations") };
    let mut out = doc.clone();
    for (n, op) in ops.iter().enumerate() {
        let field = |name: &str| op.get(name).and_then(Value::as_str);
        let Some(kind) = field("op") else { return malformed(format!("operation {n} has no 'op'")) };
        let Some(path) = field("path") else { return malformed(format!("operation {n} ({kind}) has no 'path'")) };
        let value = || op.get("value").cloned().ok_or_else(|| PatchError::Malformed(format!("operation {n} ({kind} {path}) has no 'value'")));
        let from = || field("from").ok_or_else(|| PatchError::Malformed(format!("operation {n} ({kind} {path}) has no 'from'")));
        match kind {
            "add" => add(&mut out, path, value()?)?,
            "remove" => {
                remove(&mut out, path)?;
            }
            "replace" => {
                let v = value()?;
                get(&out, path)?;
                remove(&mut out, path)?;
                add(&mut out, path, v)?;
            }
            "move" => {
                let from = from()?;
                if path.starts_with(&format!("{from}/")) {
                    return unprocessable(format!("operation {n}: '{from}' cannot be moved into its own child '{path}'"));
                }
                let v = remove(&mut out, from)?;
                add(&mut out, path, v)?;
            }
            "copy" => {
                let v = get(&out, from()?)?.clone();
                add(&mut out, path, v)?;
            }
            "test" => {
                if *get(&out, path)? != value()? {
                    return unprocessable(format!("operation {n}: the test of '{path}' failed (the resource holds another value)"));
                }
            }
            other => return malformed(format!("operation {n}: '{other}' is not a JSON Patch operation (add, remove, replace, move, copy, test)")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patched(doc: Value, patch: Value) -> Result<Value, PatchError> {
        apply(&doc, &patch)
    }

    #[test]
    fn the_six_operations() {
        let doc = json!({"resourceType": "Patient", "id": "1", "name": [{"family": "Smith"}], "a/b": 1, "m~n": 2});
        let out = patched(
            doc,
            json!([
                {"op": "add", "path": "/name/0/given", "value": ["Ann"]},
                {"op": "add", "path": "/name/-", "value": {"family": "Jones"}},
                {"op": "replace", "path": "/name/0/family", "value": "Smythe"},
                {"op": "test", "path": "/a~1b", "value": 1},
                {"op": "remove", "path": "/m~0n"},
                {"op": "copy", "from": "/name/1", "path": "/contact"},
                {"op": "move", "from": "/a~1b", "path": "/gender"},
            ]),
        )
        .unwrap();
        assert_eq!(
            out,
            json!({"resourceType": "Patient", "id": "1", "name": [{"family": "Smythe", "given": ["Ann"]}, {"family": "Jones"}], "contact": {"family": "Jones"}, "gender": 1})
        );
    }

    #[test]
    fn failures_are_told_apart_and_leave_nothing_half_done() {
        let doc = json!({"id": "1", "name": [{"family": "Smith"}]});
        for (patch, malformed) in [
            (json!({"op": "add"}), true),
            (json!([{"op": "frobnicate", "path": "/x"}]), true),
            (json!([{"op": "add", "path": "x", "value": 1}]), true),
            (json!([{"op": "add", "path": "/x"}]), true),
            (json!([{"op": "replace", "path": "/birthDate", "value": "2000"}]), false),
            (json!([{"op": "remove", "path": "/name/1"}]), false),
            (json!([{"op": "add", "path": "/name/01", "value": {}}]), false),
            (json!([{"op": "add", "path": "/a/b", "value": 1}]), false),
            (json!([{"op": "test", "path": "/id", "value": "2"}]), false),
            (json!([{"op": "move", "from": "/name", "path": "/name/0"}]), false),
        ] {
            match patched(doc.clone(), patch.clone()) {
                Err(PatchError::Malformed(_)) => assert!(malformed, "{patch}"),
                Err(PatchError::Unprocessable(_)) => assert!(!malformed, "{patch}"),
                Ok(v) => panic!("{patch} applied: {v}"),
            }
        }
        // The first operation applies, the second fails: nothing of it is kept.
        let r = patched(doc.clone(), json!([{"op": "add", "path": "/gender", "value": "female"}, {"op": "test", "path": "/id", "value": "9"}]));
        assert!(r.is_err());
        assert_eq!(doc, json!({"id": "1", "name": [{"family": "Smith"}]}));
    }
}
