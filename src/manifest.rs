//! Understanding manifests just enough to walk the graph: media types, children of an index
//! or image manifest (parsed with `oci-spec`), and platform filtering of an index.

use crate::digest::Digest;
use crate::error::{Error, Result};
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use std::collections::HashSet;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Whether a media type names an index (a list of manifests) or an image/artifact manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Index,
    Image,
}

pub fn kind(media_type: &str) -> Option<Kind> {
    match media_type {
        OCI_INDEX | DOCKER_LIST => Some(Kind::Index),
        OCI_MANIFEST | DOCKER_MANIFEST => Some(Kind::Image),
        _ => None,
    }
}

pub fn is_manifest(media_type: &str) -> bool {
    kind(media_type).is_some()
}

/// The media type of a manifest: its own `mediaType` field, else the served Content-Type,
/// else inferred from its shape (an OCI manifest may omit `mediaType`).
pub fn media_type(bytes: &[u8], content_type: Option<&str>) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(bytes).ok()?;
    if let Some(mt) = probe.media_type.filter(|m| !m.is_empty()) {
        return Some(mt);
    }
    if let Some(ct) = content_type.filter(|c| is_manifest(c)) {
        return Some(ct.to_string());
    }
    if probe.manifests.is_some() {
        Some(OCI_INDEX.to_string())
    } else if probe.config.is_some() {
        Some(OCI_MANIFEST.to_string())
    } else {
        content_type.map(str::to_string)
    }
}

/// A child of a manifest.
#[derive(Clone, Debug)]
pub struct Child {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    /// `os/arch[/variant]` for index entries that declare a platform.
    pub platform: Option<String>,
}

fn child(d: &Descriptor, what: &str) -> Result<Child> {
    let digest = Digest::parse(d.digest().as_ref()).map_err(|e| Error::Integrity {
        what: what.to_string(),
        detail: format!("bad child digest: {e}"),
    })?;
    let platform = d.platform().as_ref().map(|p| {
        let mut s = format!("{}/{}", p.os(), p.architecture());
        if let Some(v) = p.variant() {
            s.push('/');
            s.push_str(v);
        }
        s
    });
    Ok(Child {
        digest,
        size: d.size(),
        media_type: d.media_type().to_string(),
        platform,
    })
}

/// The direct children of a manifest: for an index its manifests, for an image its config
/// and layers (the `subject` of a referrer is not a child).
pub fn children(bytes: &[u8], media_type: &str, what: &str) -> Result<Vec<Child>> {
    let bad = |e: serde_json::Error| Error::Integrity {
        what: what.to_string(),
        detail: format!("not a valid {media_type}: {e}"),
    };
    match kind(media_type) {
        Some(Kind::Index) => {
            let idx: ImageIndex = serde_json::from_slice(bytes).map_err(bad)?;
            idx.manifests().iter().map(|d| child(d, what)).collect()
        }
        Some(Kind::Image) => {
            let m: ImageManifest = serde_json::from_slice(bytes).map_err(bad)?;
            std::iter::once(m.config())
                .chain(m.layers().iter())
                .map(|d| child(d, what))
                .collect()
        }
        None => Err(Error::Integrity {
            what: what.to_string(),
            detail: format!("unsupported manifest media type {media_type:?}"),
        }),
    }
}

/// Whether an index entry's platform matches a requested `os/arch[/variant]` (a request
/// without variant matches every variant). An entry without variant has its architecture's
/// default, as containerd reads it: `linux/arm64` is `linux/arm64/v8`, `linux/arm` is
/// `linux/arm/v7`.
pub fn platform_matches(entry: &str, wanted: &str) -> bool {
    let e: Vec<&str> = entry.split('/').collect();
    let w: Vec<&str> = wanted.split('/').collect();
    let variant = |p: &[&str]| -> Option<String> {
        match (p.get(1).copied(), p.get(2).copied()) {
            (_, Some(v)) => Some(v.to_string()),
            (Some("arm64"), None) => Some("v8".into()),
            (Some("arm"), None) => Some("v7".into()),
            _ => None,
        }
    };
    e.len() >= 2
        && w.len() >= 2
        && e[0] == w[0]
        && e[1] == w[1]
        && (w.len() < 3 || variant(&e) == variant(&w))
}

/// Rewrites an index keeping only the entries whose platform matches one of `wanted`.
/// Returns the new bytes, or `None` when every entry is kept (the original bytes stay).
pub fn filter_index(bytes: &[u8], wanted: &[String], what: &str) -> Result<Option<Vec<u8>>> {
    let bad = |detail: String| Error::Integrity {
        what: what.to_string(),
        detail,
    };
    let mut value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    let entries = value
        .get_mut("manifests")
        .and_then(|m| m.as_array_mut())
        .ok_or_else(|| bad("index without manifests".into()))?;
    let before = entries.len();
    let platform_of = |v: &serde_json::Value| -> Option<String> {
        let p = v.get("platform")?;
        let mut s = format!(
            "{}/{}",
            p.get("os")?.as_str()?,
            p.get("architecture")?.as_str()?
        );
        if let Some(var) = p.get("variant").and_then(|v| v.as_str()) {
            s.push('/');
            s.push_str(var);
        }
        Some(s)
    };
    let available: Vec<String> = entries.iter().filter_map(platform_of).collect();
    let kept_platform = |e: &serde_json::Value| {
        platform_of(e).is_some_and(|p| wanted.iter().any(|w| platform_matches(&p, w)))
    };
    // BuildKit's attestations (provenance, SBOM) are entries of their own, `unknown/unknown`,
    // naming the image they are about: those about a kept image stay with it.
    let kept: HashSet<String> = entries
        .iter()
        .filter(|e| kept_platform(e))
        .filter_map(|e| e.get("digest")?.as_str().map(str::to_string))
        .collect();
    let attests_kept = |e: &serde_json::Value| {
        let a = e.get("annotations");
        let note = |k: &str| a.and_then(|a| a.get(k)).and_then(|v| v.as_str());
        note("vnd.docker.reference.type") == Some("attestation-manifest")
            && note("vnd.docker.reference.digest").is_some_and(|d| kept.contains(d))
    };
    entries.retain(|e| kept_platform(e) || attests_kept(e));
    if kept.is_empty() {
        return Err(Error::Failed(format!(
            "{what}: none of the platforms {} is in this image (it has {})",
            wanted.join(", "),
            available.join(", ")
        )));
    }
    if entries.len() == before {
        return Ok(None);
    }
    serde_json::to_vec_pretty(&value)
        .map(Some)
        .map_err(|e| bad(format!("serialising the filtered index: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_matching() {
        assert!(platform_matches("linux/amd64", "linux/amd64"));
        assert!(platform_matches("linux/arm64/v8", "linux/arm64"));
        assert!(!platform_matches("linux/arm/v6", "linux/arm/v7"));
        assert!(!platform_matches("windows/amd64", "linux/amd64"));
        // An entry without variant has its architecture's default one.
        assert!(platform_matches("linux/arm64", "linux/arm64/v8"));
        assert!(platform_matches("linux/arm", "linux/arm/v7"));
        assert!(!platform_matches("linux/arm", "linux/arm/v6"));
        assert!(!platform_matches("linux/arm64", "linux/arm64/v9"));
    }

    #[test]
    fn a_platform_filter_keeps_the_attestations_of_the_images_it_keeps() {
        let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aa","size":1,"platform":{"os":"linux","architecture":"amd64"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bb","size":1,"platform":{"os":"linux","architecture":"arm64"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:cc","size":1,"platform":{"os":"unknown","architecture":"unknown"},
             "annotations":{"vnd.docker.reference.type":"attestation-manifest","vnd.docker.reference.digest":"sha256:aa"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:dd","size":1,"platform":{"os":"unknown","architecture":"unknown"},
             "annotations":{"vnd.docker.reference.type":"attestation-manifest","vnd.docker.reference.digest":"sha256:bb"}}]}"#;
        let kept = filter_index(index, &["linux/amd64".into()], "x")
            .expect("filter")
            .expect("rewritten");
        let v: serde_json::Value = serde_json::from_slice(&kept).expect("json");
        let digests: Vec<&str> = v["manifests"]
            .as_array()
            .expect("manifests")
            .iter()
            .filter_map(|m| m["digest"].as_str())
            .collect();
        assert_eq!(digests, ["sha256:aa", "sha256:cc"]);
        let e = filter_index(index, &["linux/s390x".into()], "x").expect_err("no such platform");
        assert!(matches!(e, Error::Failed(_)), "{e:?}");
    }

    #[test]
    fn media_type_inference() {
        assert_eq!(
            media_type(br#"{"schemaVersion":2,"config":{}}"#, None).as_deref(),
            Some(OCI_MANIFEST)
        );
        assert_eq!(
            media_type(
                br#"{"schemaVersion":2,"mediaType":"x/y","manifests":[]}"#,
                None
            )
            .as_deref(),
            Some("x/y")
        );
    }
}
