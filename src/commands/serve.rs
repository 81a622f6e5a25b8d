//! `airlock serve`: open the bundles, name their images as import would, and answer the
//! distribution API's read side from them until stopped.

use crate::bundle::Bundle;
use crate::cli::ServeArgs;
use crate::error::{Error, Result};
use crate::serve::namespace::Namespace;
use crate::serve::{frames::FrameCache, Htpasswd, Server};
use std::sync::Arc;

const MIB: usize = 1024 * 1024;

pub async fn run(args: ServeArgs) -> Result<()> {
    let addr: std::net::SocketAddr = args
        .listen
        .parse()
        .map_err(|e| Error::Usage(format!("--listen {:?}: {e} (use ADDR:PORT)", args.listen)))?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(crate::serve::tls_acceptor(c, k)?),
        (None, None) => None,
        _ => return Err(Error::Usage("--tls-cert and --tls-key go together".into())),
    };
    let users = match &args.htpasswd {
        Some(p) => Some(Arc::new(Htpasswd::load(p)?)),
        None => None,
    };
    let paths = args.bundles.clone();
    let bundles = tokio::task::spawn_blocking(move || -> Result<Vec<Arc<Bundle>>> {
        paths
            .iter()
            .map(|p| Bundle::open(p).map(Arc::new))
            .collect()
    })
    .await
    .map_err(|e| Error::Failed(format!("opening the bundles: {e}")))??;
    let ns = Namespace::new(
        bundles,
        args.repository.as_deref(),
        args.tag.as_deref(),
        &args.image,
    )?;
    if ns.tags.is_empty() {
        return Err(Error::Usage(format!(
            "no image of the bundles matches --image {}",
            args.image.join(", ")
        )));
    }
    let server = Arc::new(Server {
        ns,
        cache: Arc::new(FrameCache::new(args.frame_cache as usize * MIB)),
        users,
        quiet: args.quiet,
    });
    crate::serve::listen(server, addr, tls).await
}
