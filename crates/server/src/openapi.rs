//! The OpenAPI 3 document, placeholder until generated.
pub fn document() -> serde_json::Value {
    serde_json::json!({"openapi": "3.1.0"})
}
