//! Input validation with marshmallow-compatible error maps.
//!
//! The original validates every request body with marshmallow schemas (`unknown=RAISE`) and answers
//! 422 with `errors: {field: [message, ...]}` (nested maps for nested schemas). [`Fields`] reproduces
//! that: each accessor checks one field and records a message under the field's name; [`Fields::finish`]
//! adds "Unknown field." for every key nobody asked for and turns the collected map into a [`Problem`].

use crate::problem::Problem;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

pub const MSG_REQUIRED: &str = "Missing data for required field.";
pub const MSG_UNKNOWN: &str = "Unknown field.";
pub const MSG_NULL: &str = "Field may not be null.";
pub const MSG_STRING: &str = "Not a valid string.";
pub const MSG_BOOL: &str = "Not a valid boolean.";
pub const MSG_INTEGER: &str = "Not a valid integer.";
pub const MSG_UUID: &str = "Not a valid UUID.";
pub const MSG_LIST: &str = "Not a valid list.";
pub const MSG_OBJECT: &str = "Invalid input type.";

/// Checks that a request body is present and not "falsy" (the original's `if not request.get_json()`),
/// and that it is a JSON object. Returns the object.
pub fn body_object(body: Option<&Value>) -> Result<&Map<String, Value>, Problem> {
    let Some(v) = body else {
        return Err(Problem::no_input());
    };
    let falsy = match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    };
    if falsy {
        return Err(Problem::no_input());
    }
    match v {
        Value::Object(o) => Ok(o),
        _ => Err(Problem::validation(
            serde_json::json!({"_schema": [MSG_OBJECT]}),
        )),
    }
}

/// A field-by-field reader of one JSON object that collects marshmallow-style errors.
pub struct Fields<'a> {
    obj: &'a Map<String, Value>,
    seen: BTreeSet<&'a str>,
    errors: BTreeMap<String, Value>,
}

fn blank(s: &str) -> bool {
    s.trim().is_empty()
}

impl<'a> Fields<'a> {
    pub fn new(obj: &'a Map<String, Value>) -> Self {
        Fields {
            obj,
            seen: BTreeSet::new(),
            errors: BTreeMap::new(),
        }
    }

    /// Records an error message for `field`.
    pub fn error(&mut self, field: &str, msg: impl Into<String>) {
        let entry = self
            .errors
            .entry(field.to_string())
            .or_insert_with(|| Value::Array(vec![]));
        if let Value::Array(a) = entry {
            a.push(Value::String(msg.into()));
        }
    }

    /// Records a nested error map (for nested schemas such as `link`).
    pub fn nested_error(&mut self, field: &str, errors: Value) {
        self.errors.insert(field.to_string(), errors);
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// The raw value of `field`, marking it as known. `None` when absent.
    pub fn raw(&mut self, field: &str) -> Option<&'a Value> {
        let (k, v) = self.obj.get_key_value(field)?;
        self.seen.insert(k.as_str());
        Some(v)
    }

    /// Whether the body contains `field` (marks it as known).
    pub fn present(&mut self, field: &str) -> bool {
        self.raw(field).is_some()
    }

    /// A string field. `required` records "Missing data…" when absent; `nonblank` is the message used
    /// when the string is empty or only whitespace. Null is rejected unless `nullable`.
    pub fn string(
        &mut self,
        field: &str,
        required: bool,
        nonblank: Option<&str>,
    ) -> Option<String> {
        match self.raw(field) {
            None => {
                if required {
                    self.error(field, MSG_REQUIRED);
                }
                None
            }
            Some(Value::String(s)) => {
                if let Some(msg) = nonblank
                    && blank(s)
                {
                    self.error(field, msg);
                    return None;
                }
                Some(s.clone())
            }
            Some(Value::Null) => {
                self.error(field, MSG_NULL);
                None
            }
            Some(_) => {
                self.error(field, MSG_STRING);
                None
            }
        }
    }

    /// A string field that must be one of `choices`; `label` starts the message
    /// (`"<label> must be one of: a, b."`).
    pub fn one_of(
        &mut self,
        field: &str,
        required: bool,
        choices: &[&str],
        label: &str,
    ) -> Option<String> {
        let s = self.string(field, required, None)?;
        if choices.contains(&s.as_str()) {
            Some(s)
        } else {
            self.error(
                field,
                format!("{label} must be one of: {}.", choices.join(", ")),
            );
            None
        }
    }

    /// A boolean field (accepts JSON booleans and marshmallow's truthy/falsy strings and 0/1).
    pub fn boolean(&mut self, field: &str) -> Option<bool> {
        let v = self.raw(field)?;
        match parse_bool(v) {
            Some(b) => Some(b),
            None => {
                let msg = if v.is_null() { MSG_NULL } else { MSG_BOOL };
                self.error(field, msg);
                None
            }
        }
    }

    /// An integer field with a minimum; `min_msg` is used below it.
    pub fn integer_min(&mut self, field: &str, min: i64, min_msg: &str) -> Option<i64> {
        let v = self.raw(field)?;
        let n = match v {
            Value::Number(n) => n.as_i64().or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                    .map(|f| f as i64)
            }),
            Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        match n {
            Some(n) if n >= min => Some(n),
            Some(_) => {
                self.error(field, min_msg);
                None
            }
            None => {
                let msg = if v.is_null() { MSG_NULL } else { MSG_INTEGER };
                self.error(field, msg);
                None
            }
        }
    }

    /// A UUID field, returned in lower-case hyphenated form.
    pub fn uuid(&mut self, field: &str, required: bool) -> Option<String> {
        match self.raw(field) {
            None => {
                if required {
                    self.error(field, MSG_REQUIRED);
                }
                None
            }
            Some(Value::String(s)) => match uuid::Uuid::parse_str(s.trim()) {
                Ok(u) => Some(u.hyphenated().to_string()),
                Err(_) => {
                    self.error(field, MSG_UUID);
                    None
                }
            },
            Some(Value::Null) => {
                self.error(field, MSG_NULL);
                None
            }
            Some(_) => {
                self.error(field, MSG_UUID);
                None
            }
        }
    }

    /// Ends validation: unknown keys become errors; any error yields a 422 problem.
    pub fn finish(mut self) -> Result<(), Problem> {
        let unknown: Vec<&String> = self
            .obj
            .keys()
            .filter(|k| !self.seen.contains(k.as_str()))
            .collect();
        for k in unknown {
            self.error(k, MSG_UNKNOWN);
        }
        self.into_result()
    }

    /// Like [`finish`](Self::finish) but returns the error map itself (for nested schemas).
    pub fn finish_nested(mut self) -> Option<Value> {
        let unknown: Vec<&String> = self
            .obj
            .keys()
            .filter(|k| !self.seen.contains(k.as_str()))
            .collect();
        for k in unknown {
            self.error(k, MSG_UNKNOWN);
        }
        if self.errors.is_empty() {
            None
        } else {
            Some(Value::Object(self.errors.into_iter().collect()))
        }
    }

    fn into_result(self) -> Result<(), Problem> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(Problem::validation(Value::Object(
                self.errors.into_iter().collect(),
            )))
        }
    }
}

/// marshmallow's `Boolean` field: JSON booleans, 0/1, and its documented truthy/falsy strings.
pub fn parse_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_f64() {
            Some(1.0) => Some(true),
            Some(0.0) => Some(false),
            _ => None,
        },
        Value::String(s) => match s.as_str() {
            "t" | "T" | "true" | "True" | "TRUE" | "on" | "On" | "ON" | "y" | "Y" | "yes"
            | "Yes" | "YES" | "1" => Some(true),
            "f" | "F" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" | "n" | "N" | "no"
            | "No" | "NO" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn falsy_bodies_are_no_input() {
        for v in [
            json!({}),
            json!([]),
            json!(null),
            json!(""),
            json!(0),
            json!(false),
        ] {
            assert_eq!(body_object(Some(&v)).unwrap_err().status, 400);
        }
        assert_eq!(body_object(None).unwrap_err().status, 400);
        assert_eq!(body_object(Some(&json!([1]))).unwrap_err().status, 422);
    }

    #[test]
    fn collects_missing_blank_typed_and_unknown() {
        let v = json!({"name": " ", "n": "x", "extra": 1, "b": "maybe"});
        let obj = v.as_object().unwrap();
        let mut f = Fields::new(obj);
        f.string("name", true, Some("name field must not be blank"));
        f.string("public_key", true, None);
        f.integer_min("n", 1, "too small");
        f.boolean("b");
        let p = f.finish().unwrap_err();
        assert_eq!(p.status, 422);
        let e = p.errors.unwrap();
        assert_eq!(e["name"][0], "name field must not be blank");
        assert_eq!(e["public_key"][0], MSG_REQUIRED);
        assert_eq!(e["n"][0], MSG_INTEGER);
        assert_eq!(e["b"][0], MSG_BOOL);
        assert_eq!(e["extra"][0], MSG_UNKNOWN);
    }

    #[test]
    fn uuid_is_normalised() {
        let v = json!({"id": "4E78488D-4D92-4675-9D83-97ADFC17CB19"});
        let mut f = Fields::new(v.as_object().unwrap());
        assert_eq!(
            f.uuid("id", true).unwrap(),
            "4e78488d-4d92-4675-9d83-97adfc17cb19"
        );
    }
}
