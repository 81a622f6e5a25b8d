//! Reading bundles without airlock: bundle.json with zstd and tar, the published schema.

use serde_json::Value;
use std::fs;
use std::path::Path;
use std::process::Command;

use super::airlock::describe_output;

// ---------------------------------------------------------------------------------------------
// Reading bundles without airlock
// ---------------------------------------------------------------------------------------------

/// bundle.json as stored in a bundle, read with plain `zstd -dc | tar -xO` (not airlock).
pub fn read_bundle_json(bundle: &Path) -> Value {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zstd -dc '{}' | tar -xO bundle.json",
            bundle.display()
        ))
        .output()
        .expect("run zstd | tar");
    assert!(
        out.status.success(),
        "zstd | tar failed: {}",
        describe_output(&out)
    );
    serde_json::from_slice(&out.stdout).expect("bundle.json is JSON")
}

/// The published JSON Schema of bundle.json (`bundle-schema/bundle.schema.json`), compiled.
pub fn bundle_schema() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(
        &fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/bundle-schema/bundle.schema.json"
        ))
        .expect("read schema"),
    )
    .expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

/// Asserts that a bundle.json matches the published schema, listing every violation.
pub fn assert_bundle_schema(bj: &Value) {
    let errors: Vec<String> = bundle_schema()
        .iter_errors(bj)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "bundle.json violates the schema: {errors:#?}"
    );
}
