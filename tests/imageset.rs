//! Image-set files against a real registry: every tag rule lists the tags the registry has and
//! selects exactly the expected references, the catalog brings in the rest of a namespace
//! minus the excludes, and a rule that matches nothing is an error naming the image.

mod common;

use airlock::error::Error;
use airlock::imageset::{self, ImageSet, Selected};
use airlock::registry::{Registry, RetryPolicy, TlsOptions};
use common::*;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

const APP_TAGS: &[&str] = &[
    "v1.13.0",
    "v1.14.0",
    "v1.14.1",
    "v1.15.0-rc1",
    "v2.0.0",
    "latest",
];

/// Pushes one small image per tag into `repo`.
fn push_tags(reg: &TestRegistry, repo: &str, tags: &[&str]) {
    let layer = small_layer(7, repo, true);
    for t in tags {
        reg.client().push_image(
            repo,
            Some(t),
            ImageFormat::Oci,
            &Platform::linux_amd64(),
            std::slice::from_ref(&layer),
            &[("tag", *t)],
        );
    }
}

/// A registry holding `ns/app` (APP_TAGS), `ns/tools`, `ns/legacy`, `ns/deep/nested` and, outside
/// the namespace, `other/x`.
fn filled_registry() -> TestRegistry {
    let reg = TestRegistry::start(RegistryOpts::plain());
    push_tags(&reg, "ns/app", APP_TAGS);
    push_tags(&reg, "ns/tools", &["v1.0.0", "v1.1.0"]);
    push_tags(&reg, "ns/legacy", &["v0.1.0"]);
    push_tags(&reg, "ns/deep/nested", &["3.0.0", "2.9.0"]);
    push_tags(&reg, "other/x", &["v1.0.0"]);
    reg
}

async fn clients_for(reg: &TestRegistry) -> HashMap<String, Arc<Registry>> {
    let tls = TlsOptions {
        plain_http: true,
        ..Default::default()
    };
    let client = Registry::connect(&reg.host(), &tls, None, RetryPolicy::default())
        .await
        .expect("connect to the test registry");
    HashMap::from([(reg.host(), Arc::new(client))])
}

/// Writes `body` (whose `HOST` is replaced by the registry) as `set.yaml` and loads it.
fn load_yaml(dir: &Path, reg: &TestRegistry, body: &str) -> ImageSet {
    let path = dir.join("set.yaml");
    std::fs::write(&path, body.replace("HOST", &reg.host())).expect("write set.yaml");
    imageset::load(&path).unwrap_or_else(|e| panic!("load:\n{body}\n{e}"))
}

fn refs(selected: &[Selected]) -> Vec<String> {
    selected.iter().map(|s| s.reference.to_string()).collect()
}

/// `HOST/ns/NAME:TAG` for each tag.
fn expected(reg: &TestRegistry, name: &str, tags: &[&str]) -> Vec<String> {
    tags.iter()
        .map(|t| format!("{}/ns/{name}:{t}", reg.host()))
        .collect()
}

#[tokio::test]
async fn each_tag_rule_selects_exactly_its_tags() {
    let reg = filled_registry();
    let clients = clients_for(&reg).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: &[(&str, &[&str])] = &[
        ("tags: [v1.14.1, v1.14.0]", &["v1.14.0", "v1.14.1"]),
        (r"tagRegex: '^v1\.14\.\d+$'", &["v1.14.0", "v1.14.1"]),
        ("semver: '>=1.14.0, <2'", &["v1.14.1", "v1.14.0"]),
        ("semver: '>=1.14.0 <2'", &["v1.14.1", "v1.14.0"]),
        ("newest: 3", &["v2.0.0", "v1.15.0-rc1", "v1.14.1"]),
        ("{ semver: '<2', newest: 2 }", &["v1.14.1", "v1.14.0"]),
        (
            "allTags: true",
            &[
                "latest",
                "v1.13.0",
                "v1.14.0",
                "v1.14.1",
                "v1.15.0-rc1",
                "v2.0.0",
            ],
        ),
    ];
    for (rule, want) in cases {
        let rule_yaml = if rule.starts_with('{') {
            rule.trim_matches(|c| c == '{' || c == '}').to_string()
        } else {
            rule.to_string()
        };
        let set = load_yaml(
            dir.path(),
            &reg,
            &format!(
                "registries:\n  - registry: HOST\n    namespace: ns\n    images:\n      - {{ name: app, {rule_yaml} }}\n"
            ),
        );
        let got = set
            .select(&clients)
            .await
            .unwrap_or_else(|e| panic!("{rule}: {e}"));
        assert_eq!(refs(&got), expected(&reg, "app", want), "rule {rule}");
        for s in &got {
            assert_eq!(s.namespace, "ns");
            assert_eq!(s.path, "app");
            assert!(s.platforms.is_empty());
        }
    }
}

#[tokio::test]
async fn images_in_file_order_with_platforms_and_no_duplicates() {
    let reg = filled_registry();
    let clients = clients_for(&reg).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let set = load_yaml(
        dir.path(),
        &reg,
        r#"platforms: [linux/amd64]
registries:
  - registry: HOST
    namespace: ns
    images:
      - name: tools
        newest: 1
        platforms: [linux/arm64, linux/amd64]
      - name: app
        semver: '^1.14'
      - name: deep/nested
        tags: ['3.0.0']
        platforms: []
      - name: app
        tags: [v1.14.0]
  - registry: HOST
    images:
      - name: other/x
        allTags: true
"#,
    );
    let got = set.select(&clients).await.expect("select");
    let h = reg.host();
    assert_eq!(
        refs(&got),
        vec![
            format!("{h}/ns/tools:v1.1.0"),
            format!("{h}/ns/app:v1.14.1"),
            format!("{h}/ns/app:v1.14.0"),
            format!("{h}/ns/deep/nested:3.0.0"),
            format!("{h}/other/x:v1.0.0"),
        ]
    );
    assert_eq!(got[0].platforms, vec!["linux/arm64", "linux/amd64"]);
    assert_eq!(got[1].platforms, vec!["linux/amd64"]);
    assert!(got[3].platforms.is_empty());
    assert_eq!(
        (got[3].namespace.as_str(), got[3].path.as_str()),
        ("ns", "deep/nested")
    );
    assert_eq!(
        (got[4].namespace.as_str(), got[4].path.as_str()),
        ("", "other/x")
    );
    assert_eq!(got[4].reference.repository, "other/x");
}

#[tokio::test]
async fn catalog_takes_the_rest_of_the_namespace_minus_excludes() {
    let reg = filled_registry();
    let clients = clients_for(&reg).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let h = reg.host();

    // Default rule newest: 1 (pre-releases count); `app:v2.0.0` is excluded before the rule.
    let set = load_yaml(
        dir.path(),
        &reg,
        r#"registries:
  - registry: HOST
    namespace: ns
    catalog: true
    exclude: [legacy, "app:v2.0.0"]
    images:
      - name: tools
        tags: [v1.0.0]
"#,
    );
    let got = set.select(&clients).await.expect("select");
    assert_eq!(
        refs(&got),
        vec![
            format!("{h}/ns/tools:v1.0.0"),
            format!("{h}/ns/app:v1.15.0-rc1"),
            format!("{h}/ns/deep/nested:3.0.0"),
        ]
    );
    assert_eq!(got[2].path, "deep/nested");

    // A catalog rule that skips pre-releases; a repository with no matching tag is skipped.
    let set = load_yaml(
        dir.path(),
        &reg,
        r#"registries:
  - registry: HOST
    namespace: ns
    catalog: true
    catalogTags: { semver: '>=1.0.0', newest: 1 }
    exclude: ["app:v2.0.0", "tools:v1.1.0"]
"#,
    );
    let got = set.select(&clients).await.expect("select");
    assert_eq!(
        refs(&got),
        vec![
            format!("{h}/ns/app:v1.14.1"),
            format!("{h}/ns/deep/nested:3.0.0"),
            format!("{h}/ns/tools:v1.0.0"),
        ]
    );

    // Without a namespace the catalog is the whole registry.
    let set = load_yaml(
        dir.path(),
        &reg,
        "registries:\n  - registry: HOST\n    catalog: true\n    exclude: [ns/app, ns/deep/nested, ns/tools]\n",
    );
    let got = set.select(&clients).await.expect("select");
    assert_eq!(
        refs(&got),
        vec![
            format!("{h}/ns/legacy:v0.1.0"),
            format!("{h}/other/x:v1.0.0")
        ]
    );
    assert_eq!(
        (got[1].namespace.as_str(), got[1].path.as_str()),
        ("", "other/x")
    );
}

#[tokio::test]
async fn a_rule_that_matches_nothing_is_an_error_naming_the_image() {
    let reg = filled_registry();
    let clients = clients_for(&reg).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let set = load_yaml(
        dir.path(),
        &reg,
        r#"registries:
  - registry: HOST
    namespace: ns
    exclude: ["tools:v1.0.0", "tools:v1.1.0"]
    images:
      - name: app
        tags: [v1.14.0]
      - name: app
        tagRegex: '^v9\.'
      - name: tools
        allTags: true
"#,
    );
    let err = set.select(&clients).await.expect_err("nothing matched");
    let Error::Usage(msg) = &err else {
        panic!("not a usage error: {err}");
    };
    let file = dir.path().join("set.yaml");
    let lines: Vec<&str> = msg.lines().collect();
    assert_eq!(lines.len(), 2, "{msg}");
    assert_eq!(
        lines[0],
        format!(
            r"{}:8: registries[0].images[1]: app (tagRegex '^v9\.'): matched none of the 6 tags of {}/ns/app",
            file.display(),
            reg.host()
        )
    );
    assert!(
        lines[1].starts_with(&format!(
            "{}:10: registries[0].images[2]: tools (allTags): every tag it selected (v1.0.0, v1.1.0) is excluded",
            file.display()
        )),
        "{msg}"
    );

    // A listed repository that does not exist fails and names it.
    let set = load_yaml(
        dir.path(),
        &reg,
        "registries:\n  - registry: HOST\n    namespace: ns\n    images: [{ name: nope, newest: 1 }]\n",
    );
    let err = set.select(&clients).await.expect_err("missing repository");
    assert!(
        matches!(&err, Error::NotFound { .. }) && err.to_string().contains("ns/nope"),
        "{err}"
    );

    // An unconnected registry is reported, not a panic.
    let err = set.select(&HashMap::new()).await.expect_err("no client");
    assert!(err.to_string().contains("not connected"), "{err}");
}
