//! The image-set file of `airlock export --config FILE`: a YAML document that says, per
//! registry, which repositories to export and which of their tags (explicit tags, a regular
//! expression, a semver range, the newest N, every tag, or every repository of a namespace
//! through the registry's catalog), with excludes, credentials, TLS settings and platforms.
//!
//! [`load`] parses and validates the whole file before anything touches the network; every
//! problem is a usage error that names the file, the line and the key
//! (`arc.yaml:12: registries[0].images[1].semver: invalid version requirement "…"`).
//! [`ImageSet::select`] then lists tags (and the catalog where asked) through connected
//! clients and resolves every entry to concrete `registry/namespace/name:tag` references, in a
//! deterministic order. The tag logic itself ([`TagRule::select`], [`apply_excludes`],
//! [`parse_version_req`], [`parse_semver_tag`]) is pure and works on plain lists of tags.
//!
//! The module is split like `src/bundle/`: `model.rs` (the parsed, validated types), `tags.rs`
//! (the pure tag rules), `yaml.rs` (the file as written and the line-locating reader that puts
//! a line number on every problem), `parse.rs` (loading and validation) and `select.rs`
//! (selection against registries).

pub mod model;
pub mod parse;
pub mod select;
pub mod tags;
mod yaml;

pub use model::{CredentialSource, Exclude, ImageRule, ImageSet, RegistrySet, Selected};
pub use parse::{load, parse};
pub use select::TagLists;
pub use tags::{
    apply_excludes, parse_semver_tag, parse_version_req, select_tags, TagRule, VersionRange,
};
