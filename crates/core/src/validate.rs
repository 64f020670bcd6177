//! Request validation with marshmallow-compatible error maps, declared once per request type.
//!
//! The original validates every request body with marshmallow schemas (`unknown=RAISE`) and answers
//! 422 with `errors: {field: [message, ...]}` (nested maps for nested schemas). A request type here
//! is a [`Shape`]: a list of [`Field`]s, each with its [`Kind`] and rules. The same declaration
//! reads a body ([`Shape::parse`]: the original's messages, unknown keys refused) and describes it in
//! the OpenAPI document ([`Shape::schema`]), so the two cannot disagree.

use crate::problem::Problem;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    AdditionalProperties, AllOfBuilder, AnyOfBuilder, ArrayBuilder, Object, ObjectBuilder, Schema,
    SchemaFormat, Type,
};

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

/// The characters Rust's `str::trim` removes (Unicode `White_Space`), as a regular-expression
/// character class (the same in Rust's `regex`, Python's `re` and ECMAScript). A blank value is one
/// made only of these; the documents' `pattern`s are built from this class.
pub const WHITESPACE_CLASS: &str =
    r"\t-\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";

fn blank(s: &str) -> bool {
    s.trim().is_empty()
}

/// The error map of one object being read: field → list of messages, or a nested map.
#[derive(Debug, Default)]
pub struct Errors(BTreeMap<String, Value>);

impl Errors {
    /// Records a message for `field` (after any it already has).
    pub fn add(&mut self, field: &str, msg: impl Into<String>) {
        let entry = self
            .0
            .entry(field.to_string())
            .or_insert_with(|| Value::Array(vec![]));
        if let Value::Array(a) = entry {
            a.push(Value::String(msg.into()));
        }
    }

    /// Records a field's whole error entry (a message list or a nested map).
    fn set(&mut self, field: &str, entry: Value) {
        self.0.insert(field.to_string(), entry);
    }

    fn into_value(self) -> Option<Value> {
        (!self.0.is_empty()).then(|| Value::Object(self.0.into_iter().collect()))
    }
}

fn messages(msg: impl Into<String>) -> Value {
    Value::Array(vec![Value::String(msg.into())])
}

fn invalid_type() -> Value {
    json!({"_schema": [MSG_OBJECT]})
}

/// What a field holds, with its rules. Each kind reads a JSON value (answering the original's
/// messages) and describes itself as a JSON Schema.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A string; `nonblank`: not empty nor only whitespace ("<field> field must not be blank").
    Text { nonblank: bool },
    /// A string from a fixed list ("<label> must be one of: a, b.").
    Choice {
        values: &'static [&'static str],
        label: &'static str,
    },
    /// A UUID in any form the `uuid` crate reads (surrounding whitespace allowed), kept lower-case
    /// and hyphenated.
    Uuid,
    /// marshmallow's `Boolean`: JSON booleans, 0/1 and its truthy/falsy strings.
    Bool,
    /// marshmallow's `Integer` with a minimum of 1: a whole JSON number or a numeric string
    /// ("<field> must be greater than or equal to 1").
    Count,
    /// A nested object.
    Object(&'static Shape),
    /// A list of objects. `max_items` is documented here and enforced by the service (400, in the
    /// original's order of checks), not by this reader.
    List {
        item: &'static Shape,
        max_items: Option<usize>,
    },
    /// A field with a reader and a schema of its own.
    Custom(&'static Custom),
}

/// A field kind the other kinds do not cover: its reader (the normalised value, or the field's
/// error entry: a message list or a nested map) and its schema.
#[derive(Debug)]
pub struct Custom {
    pub read: fn(&Value) -> Result<Value, Value>,
    pub schema: fn() -> Schema,
}

/// The value a field takes when the body leaves it out.
#[derive(Debug, Clone, Copy)]
pub enum Absent {
    Text(&'static str),
    Bool(bool),
    EmptyList,
    EmptyMap,
}

impl Absent {
    fn value(self) -> Value {
        match self {
            Absent::Text(s) => Value::String(s.into()),
            Absent::Bool(b) => Value::Bool(b),
            Absent::EmptyList => Value::Array(vec![]),
            Absent::EmptyMap => Value::Object(Map::new()),
        }
    }
}

/// One field of a request object: everything the reader checks and the document says about it.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    /// Absent → "Missing data for required field."
    pub required: bool,
    /// `null` is kept (it means something to the service); otherwise "Field may not be null."
    pub nullable: bool,
    /// The value the reader fills in when the field is absent (none: it stays absent).
    pub absent: Option<Absent>,
    /// A rule the shape's `check` enforces, stated for the document as a regular expression.
    pub pattern: Option<&'static str>,
    pub description: Option<&'static str>,
}

impl Field {
    pub const fn new(name: &'static str, kind: Kind) -> Field {
        Field {
            name,
            kind,
            required: false,
            nullable: false,
            absent: None,
            pattern: None,
            description: None,
        }
    }
    pub const fn text(name: &'static str) -> Field {
        Field::new(name, Kind::Text { nonblank: false })
    }
    pub const fn nonblank(name: &'static str) -> Field {
        Field::new(name, Kind::Text { nonblank: true })
    }
    pub const fn choice(
        name: &'static str,
        values: &'static [&'static str],
        label: &'static str,
    ) -> Field {
        Field::new(name, Kind::Choice { values, label })
    }
    pub const fn required(mut self) -> Field {
        self.required = true;
        self
    }
    pub const fn nullable(mut self) -> Field {
        self.nullable = true;
        self
    }
    pub const fn absent(mut self, value: Absent) -> Field {
        self.absent = Some(value);
        self
    }
    pub const fn pattern(mut self, pattern: &'static str) -> Field {
        self.pattern = Some(pattern);
        self
    }
    pub const fn describe(mut self, text: &'static str) -> Field {
        self.description = Some(text);
        self
    }
}

/// A check across a shape's fields: the values that passed their own reading, and the error map
/// to add to.
pub type Check = fn(&Map<String, Value>, &mut Errors);

/// A request object: its fields (no other key is accepted: "Unknown field.") and the checks the
/// fields cannot state alone, run on the values that passed their own reading.
#[derive(Debug)]
pub struct Shape {
    /// The schema's name in the document (`components/schemas`).
    pub name: &'static str,
    pub fields: &'static [Field],
    pub check: Option<Check>,
}

impl Kind {
    /// Reads a present, non-null value: the normalised value, or the field's error entry.
    fn read(&self, field: &str, v: &Value) -> Result<Value, Value> {
        match (self, v) {
            (Kind::Text { nonblank }, Value::String(s)) => {
                if *nonblank && blank(s) {
                    Err(messages(format!("{field} field must not be blank")))
                } else {
                    Ok(v.clone())
                }
            }
            (Kind::Choice { values, label }, Value::String(s)) => {
                if values.contains(&s.as_str()) {
                    Ok(v.clone())
                } else {
                    Err(messages(format!(
                        "{label} must be one of: {}.",
                        values.join(", ")
                    )))
                }
            }
            (Kind::Text { .. } | Kind::Choice { .. }, _) => Err(messages(MSG_STRING)),
            (Kind::Uuid, Value::String(s)) => uuid::Uuid::parse_str(s.trim())
                .map(|u| Value::String(u.hyphenated().to_string()))
                .map_err(|_| messages(MSG_UUID)),
            (Kind::Uuid, _) => Err(messages(MSG_UUID)),
            (Kind::Bool, _) => parse_bool(v)
                .map(Value::Bool)
                .ok_or_else(|| messages(MSG_BOOL)),
            (Kind::Count, _) => {
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
                    Some(n) if n >= 1 => Ok(Value::from(n)),
                    Some(_) => Err(messages(format!(
                        "{field} must be greater than or equal to 1"
                    ))),
                    None => Err(messages(MSG_INTEGER)),
                }
            }
            (Kind::Object(shape), Value::Object(o)) => shape.read(o).map(Value::Object),
            (Kind::Object(_), _) => Err(invalid_type()),
            (Kind::List { item, .. }, Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                let mut errors = Map::new();
                for (i, it) in items.iter().enumerate() {
                    match it {
                        Value::Object(o) => match item.read(o) {
                            Ok(m) => out.push(Value::Object(m)),
                            Err(e) => {
                                errors.insert(i.to_string(), e);
                            }
                        },
                        _ => {
                            errors.insert(i.to_string(), invalid_type());
                        }
                    }
                }
                if errors.is_empty() {
                    Ok(Value::Array(out))
                } else {
                    Err(Value::Object(errors))
                }
            }
            (Kind::List { .. }, _) => Err(messages(MSG_LIST)),
            (Kind::Custom(c), _) => (c.read)(v),
        }
    }
}

impl Shape {
    /// Reads one object: the declared fields that passed (normalised, absent ones filled in where
    /// declared), or the error map.
    pub fn read(&self, o: &Map<String, Value>) -> Result<Map<String, Value>, Value> {
        let mut out = Map::new();
        let mut errors = Errors::default();
        for f in self.fields {
            match o.get(f.name) {
                None if f.required => errors.add(f.name, MSG_REQUIRED),
                None => {
                    if let Some(a) = f.absent {
                        out.insert(f.name.into(), a.value());
                    }
                }
                Some(Value::Null) if f.nullable => {
                    out.insert(f.name.into(), Value::Null);
                }
                Some(Value::Null) => errors.add(f.name, MSG_NULL),
                Some(v) => match f.kind.read(f.name, v) {
                    Ok(v) => {
                        out.insert(f.name.into(), v);
                    }
                    Err(e) => errors.set(f.name, e),
                },
            }
        }
        if let Some(check) = self.check {
            check(&out, &mut errors);
        }
        for k in o.keys() {
            if !self.fields.iter().any(|f| f.name == k) {
                errors.add(k, MSG_UNKNOWN);
            }
        }
        match errors.into_value() {
            None => Ok(out),
            Some(e) => Err(e),
        }
    }

    /// Reads a request body (400 when there is none, 422 with the `errors` map when it breaks a
    /// rule) into the request type.
    pub fn parse<T: DeserializeOwned>(&self, body: Option<&Value>) -> Result<T, Problem> {
        let read = self.read(body_object(body)?).map_err(Problem::validation)?;
        serde_json::from_value(Value::Object(read)).map_err(|e| {
            Problem::internal(format!(
                "The {} declaration does not match its request type: {e}",
                self.name
            ))
        })
    }

    /// The object's JSON Schema. A request body (`top`) has at least one property: an empty one is
    /// "No input provided".
    pub fn schema(&self, top: bool) -> Schema {
        let mut b = ObjectBuilder::new()
            .schema_type(Type::Object)
            .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)));
        if top {
            b = b.min_properties(Some(1));
        }
        for f in self.fields {
            b = b.property(f.name, f.schema());
            if f.required {
                b = b.required(f.name);
            }
        }
        b.build().into()
    }
}

/// The JSON Schema of a UUID string.
pub fn uuid_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::Custom("uuid".into())))
}

/// The JSON Schema of a string holding something other than whitespace.
pub fn nonblank_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .pattern(Some(format!("[^{WHITESPACE_CLASS}]")))
}

fn null_schema() -> Schema {
    Object::with_type(Type::Null).into()
}

impl Field {
    /// The field's JSON Schema.
    pub fn schema(&self) -> Schema {
        let base: Schema = match self.kind {
            Kind::Text { nonblank } => {
                let pattern = self.pattern.map(|p| {
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .pattern(Some(p))
                        .build()
                });
                match (nonblank, pattern) {
                    (true, Some(p)) => AllOfBuilder::new()
                        .item(nonblank_schema())
                        .item(p)
                        .build()
                        .into(),
                    (true, None) => nonblank_schema().build().into(),
                    (false, Some(p)) => p.into(),
                    (false, None) => Object::with_type(Type::String).into(),
                }
            }
            Kind::Choice { values, .. } => ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(values.iter().copied()))
                .build()
                .into(),
            Kind::Uuid => uuid_schema().build().into(),
            Kind::Bool => AnyOfBuilder::new()
                .item(Object::with_type(Type::Boolean))
                .item(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .enum_values(Some([0, 1])),
                )
                .item(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .enum_values(Some(TRUTHY.iter().chain(FALSY).copied())),
                )
                .build()
                .into(),
            Kind::Count => AnyOfBuilder::new()
                .item(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(1))
                        .maximum(Some(i64::MAX)),
                )
                .item(
                    // What `str::parse::<i64>` reads (after trimming) and is at least 1 (up to 18
                    // digits, all of which fit).
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .pattern(Some(format!(
                            "^[{WHITESPACE_CLASS}]*\\+?0*[1-9][0-9]{{0,17}}[{WHITESPACE_CLASS}]*$"
                        ))),
                )
                .build()
                .into(),
            Kind::Object(shape) => shape.schema(false),
            Kind::List { item, max_items } => ArrayBuilder::new()
                .items(RefOr::T(item.schema(false)))
                .max_items(max_items)
                .build()
                .into(),
            Kind::Custom(c) => (c.schema)(),
        };
        let mut s = if self.nullable {
            AnyOfBuilder::new()
                .item(base)
                .item(null_schema())
                .build()
                .into()
        } else {
            base
        };
        let default = self.absent.filter(|_| !self.required).map(Absent::value);
        match &mut s {
            Schema::Object(o) => {
                o.description = self.description.map(Into::into);
                o.default = default;
            }
            Schema::Array(a) => {
                a.description = self.description.map(Into::into);
                a.default = default;
            }
            Schema::AnyOf(a) => {
                a.description = self.description.map(Into::into);
                a.default = default;
            }
            Schema::AllOf(a) => {
                a.description = self.description.map(Into::into);
                a.default = default;
            }
            _ => {}
        }
        s
    }
}

/// marshmallow's `Boolean` truthy strings.
pub const TRUTHY: &[&str] = &[
    "t", "T", "true", "True", "TRUE", "on", "On", "ON", "y", "Y", "yes", "Yes", "YES", "1",
];
/// marshmallow's `Boolean` falsy strings.
pub const FALSY: &[&str] = &[
    "f", "F", "false", "False", "FALSE", "off", "Off", "OFF", "n", "N", "no", "No", "NO", "0",
];

/// marshmallow's `Boolean` field: JSON booleans, 0/1, and its documented truthy/falsy strings.
pub fn parse_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_f64() {
            Some(1.0) => Some(true),
            Some(0.0) => Some(false),
            _ => None,
        },
        Value::String(s) if TRUTHY.contains(&s.as_str()) => Some(true),
        Value::String(s) if FALSY.contains(&s.as_str()) => Some(false),
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

    static SAMPLE: Shape = Shape {
        name: "Sample",
        fields: &[
            Field::nonblank("name").required(),
            Field::text("public_key").required(),
            Field::new("n", Kind::Count),
            Field::new("b", Kind::Bool),
            Field::new("id", Kind::Uuid),
            Field::new("flag", Kind::Bool).absent(Absent::Bool(true)),
        ],
        check: None,
    };

    #[test]
    fn collects_missing_blank_typed_and_unknown() {
        let v = json!({"name": " ", "n": "x", "extra": 1, "b": "maybe"});
        let p = SAMPLE.parse::<Value>(Some(&v)).unwrap_err();
        assert_eq!(p.status, 422);
        let e = p.errors.unwrap();
        assert_eq!(e["name"][0], "name field must not be blank");
        assert_eq!(e["public_key"][0], MSG_REQUIRED);
        assert_eq!(e["n"][0], MSG_INTEGER);
        assert_eq!(e["b"][0], MSG_BOOL);
        assert_eq!(e["extra"][0], MSG_UNKNOWN);
        let v = json!({"name": "a", "public_key": "k", "n": 0});
        let e = SAMPLE.parse::<Value>(Some(&v)).unwrap_err().errors.unwrap();
        assert_eq!(e["n"][0], "n must be greater than or equal to 1");
    }

    #[test]
    fn values_are_normalised_and_filled_in() {
        let v = json!({"name": "a", "public_key": "k", "n": " 7", "b": "yes",
            "id": "4E78488D-4D92-4675-9D83-97ADFC17CB19"});
        assert_eq!(
            SAMPLE.parse::<Value>(Some(&v)).unwrap(),
            json!({"name": "a", "public_key": "k", "n": 7, "b": true, "flag": true,
                "id": "4e78488d-4d92-4675-9d83-97adfc17cb19"})
        );
    }

    #[test]
    fn whitespace_class_is_what_trim_removes() {
        let class = regex::Regex::new(&format!("^[{WHITESPACE_CLASS}]$")).unwrap();
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            assert_eq!(
                class.is_match(c.encode_utf8(&mut [0; 4])),
                c.is_whitespace(),
                "{:#x}",
                c as u32
            );
        }
    }
}
