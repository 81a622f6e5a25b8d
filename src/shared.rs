//! One shared copy of the strings that repeat by the thousand in a large bundle: media types
//! and registry names. 100,000 objects name a handful of media types; a copy each would be
//! 5 MiB.

use std::sync::{Arc, Mutex};

/// The shared copy of `s` (past 256 distinct strings, each further one is its own copy).
pub fn shared(s: &str) -> Arc<str> {
    static SEEN: Mutex<Vec<Arc<str>>> = Mutex::new(Vec::new());
    let Ok(mut seen) = SEEN.lock() else {
        return s.into();
    };
    if let Some(m) = seen.iter().find(|m| &***m == s) {
        return m.clone();
    }
    let m: Arc<str> = s.into();
    if seen.len() < 256 {
        seen.push(m.clone());
    }
    m
}

/// Deserializes a string as its shared copy (`#[serde(deserialize_with = ...)]`).
pub fn deserialize<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Arc<str>, D::Error> {
    struct Text;
    impl serde::de::Visitor<'_> for Text {
        type Value = Arc<str>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> std::result::Result<Arc<str>, E> {
            Ok(shared(s))
        }
    }
    d.deserialize_str(Text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_one_copy() {
        let a = shared("application/vnd.oci.image.layer.v1.tar+gzip");
        let b = shared(&String::from("application/vnd.oci.image.layer.v1.tar+gzip"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*shared("other/type"), "other/type");
        let v: Vec<Arc<str>> = serde_json::from_str::<Vec<Shared>>(r#"["x/y","x/y"]"#)
            .unwrap()
            .into_iter()
            .map(|s| s.0)
            .collect();
        assert!(Arc::ptr_eq(&v[0], &v[1]));
    }

    #[derive(serde::Deserialize)]
    struct Shared(#[serde(deserialize_with = "deserialize")] Arc<str>);
}
