//! The commands: thin compositions of the registry client, the bundle and the copy engine.

pub mod export;
pub mod import;
pub mod inspect;
pub mod verify;
