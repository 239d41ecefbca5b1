//! JSON Schema (draft 2020-12) checks of webhook payloads.
//!
//! The validator is built without remote or file reference resolution: a schema can only refer
//! to itself, so a tenant's schema can never make the server fetch a URL or read a file.

use serde_json::Value;

/// Most errors reported for one payload; enough to fix it, bounded for the response size.
pub const MAX_ERRORS: usize = 20;

/// A compiled schema.
pub struct Validator(jsonschema::Validator);

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Validator")
    }
}

/// One way a payload fails its schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaError {
    /// JSON pointer to the offending part of the payload (empty for the whole payload).
    pub instance_pointer: String,
    /// What is wrong.
    pub message: String,
}

/// Compiles a schema (draft 2020-12), or says why it is not one.
pub fn compile(schema: &Value) -> Result<Validator, String> {
    if !schema.is_object() && !schema.is_boolean() {
        return Err("a JSON Schema is an object (or a boolean)".into());
    }
    jsonschema::draft202012::options()
        .build(schema)
        .map(Validator)
        .map_err(|e| format!("not a valid JSON Schema (draft 2020-12): {e}"))
}

/// Validates `instance`; on failure the first [`MAX_ERRORS`] errors.
pub fn validate(validator: &Validator, instance: &Value) -> Result<(), Vec<SchemaError>> {
    let errors: Vec<SchemaError> = validator
        .0
        .iter_errors(instance)
        .take(MAX_ERRORS)
        .map(|e| SchemaError {
            instance_pointer: e.instance_path().to_string(),
            message: e.to_string(),
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn valid_and_invalid_payloads() {
        let v = compile(&json!({
            "type": "object",
            "required": ["alert"],
            "properties": {"alert": {"type": "object", "properties": {"number": {"type": "integer"}}}}
        }))
        .unwrap();
        validate(&v, &json!({"alert": {"number": 3}})).unwrap();
        let errors = validate(&v, &json!({"alert": {"number": "three"}})).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].instance_pointer, "/alert/number");
        assert!(
            errors[0].message.contains("integer"),
            "{}",
            errors[0].message
        );
        let errors = validate(&v, &json!({})).unwrap_err();
        assert!(errors[0].message.contains("alert"));
    }

    #[test]
    fn errors_are_capped() {
        let v = compile(&json!({"type": "array", "items": {"type": "string"}})).unwrap();
        let errors = validate(&v, &json!((0..50).collect::<Vec<_>>())).unwrap_err();
        assert_eq!(errors.len(), MAX_ERRORS);
    }

    #[test]
    fn bad_schemas_are_refused_and_remote_refs_are_not_fetched() {
        assert!(compile(&json!({"type": "no-such-type"})).is_err());
        assert!(compile(&json!("string")).is_err());
        assert!(compile(&json!({"$ref": "http://127.0.0.1:9/schema.json"})).is_err());
    }
}
