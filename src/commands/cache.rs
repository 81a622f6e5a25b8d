//! `airlock cache ls` and `airlock cache prune`: what export's cache holds, and trimming it.

use crate::cache;
use crate::cli::{CacheAction, CacheArgs};
use crate::error::Result;
use crate::progress::human;

pub fn run(args: CacheArgs) -> Result<()> {
    match args.action {
        CacheAction::Ls(a) => {
            let dir = cache::dir(a.cache_dir.as_deref())?;
            let s = cache::summary(&dir)?;
            if a.json {
                return crate::progress::print_json(&s);
            }
            println!(
                "{}: {} entries, {}{}{}",
                dir.display(),
                s.entries,
                human(s.bytes),
                s.oldest_age_secs
                    .map(|a| format!(", oldest unused for {} days", a / 86_400))
                    .unwrap_or_default(),
                if s.temporary_files > 0 {
                    format!(", {} temporary files", s.temporary_files)
                } else {
                    String::new()
                }
            );
            Ok(())
        }
        CacheAction::Prune(a) => {
            if a.older_than.is_none() && a.max_size.is_none() {
                return Err(crate::error::Error::Usage(
                    "cache prune: give --older-than AGE and/or --max-size SIZE".into(),
                ));
            }
            let dir = cache::dir(a.cache_dir.as_deref())?;
            let age = a
                .older_than
                .as_deref()
                .map(crate::units::parse_age)
                .transpose()?;
            let max = a
                .max_size
                .as_deref()
                .map(crate::units::parse_size)
                .transpose()?;
            let p = cache::prune(&dir, age, max)?;
            if a.json {
                return crate::progress::print_json(&p);
            }
            println!(
                "{}: removed {} entries ({}), kept {} ({})",
                dir.display(),
                p.removed,
                human(p.bytes_freed),
                p.kept,
                human(p.bytes_kept)
            );
            Ok(())
        }
    }
}
