//! The commands: thin compositions of the registry client, the bundle and the copy engine.

pub mod cache;
pub mod copy;
pub mod diff;
pub mod docs;
pub mod export;
pub mod import;
pub mod inspect;
pub mod serve;
pub mod verify;

/// `airlock keygen`: writes a minisign key pair for signing bundles.
pub fn keygen(args: crate::cli::KeygenArgs) -> crate::error::Result<()> {
    let (sk, pk, id) = crate::signing::keygen(&args.output, args.no_password, args.force)?;
    eprintln!(
        "key {id}: secret key {} (keep it safe), public key {} (give it to the importing side)",
        sk.display(),
        pk.display()
    );
    Ok(())
}
