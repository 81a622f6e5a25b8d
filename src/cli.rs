//! Command-line flags (clap). What they resolve to, with environment fallbacks and prompts,
//! lives in `options`.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

const AFTER_HELP: &str = "\
Exit codes: 0 done, 1 failure (nothing half-done is left looking complete), 2 usage error,
3 partial (export --keep-going left out images that failed; the bundle names them),
130 stopped by SIGINT (Ctrl-C), 143 stopped by SIGTERM (unfinished files removed; the previous
bundle of the same name and its .sha256/.minisig are kept; a re-run finishes the work).

Environment (the offline-deployment procedure's variables; flags win):
  export: SOURCE_DOCKER_REGISTRY, SOURCE_DOCKER_REPOSITORY, SOURCE_DOCKER_TAG,
          SOURCE_DOCKER_USERNAME, SOURCE_DOCKER_PASSWORD
  import: TARGET_DOCKER_REGISTRY, TARGET_DOCKER_REPOSITORY, TARGET_DOCKER_TAG,
          TARGET_DOCKER_USERNAME, TARGET_DOCKER_PASSWORD
  through a forward proxy: HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY (or lower case)";

#[derive(Parser, Debug)]
#[command(name = "airlock", version, about = "Move container images across an air gap: export to one verified bundle, import into a private registry", after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Resolve images in a source registry and write them, deduplicated, into one bundle.
    #[command(after_help = AFTER_HELP)]
    Export(ExportArgs),
    /// Push every image of a bundle into a registry, byte for byte.
    #[command(after_help = AFTER_HELP)]
    Import(ImportArgs),
    /// Show a bundle's images, digests, platforms and sizes (reads only bundle.json, from the
    /// first volume, and the seek table, from the last; `verify` reads everything).
    #[command(after_help = AFTER_HELP)]
    Inspect(InspectArgs),
    /// Check a bundle offline: every blob's digest and size, the layout, the seek table.
    #[command(after_help = AFTER_HELP)]
    Verify(VerifyArgs),
    /// Make a key pair for signing bundles (PREFIX.key and PREFIX.pub, minisign format).
    #[command(after_help = AFTER_HELP)]
    Keygen(KeygenArgs),
    /// Answer registry pulls straight from one or more bundles (read-only, no unpacking).
    #[command(after_help = AFTER_HELP)]
    Serve(ServeArgs),
    /// Copy images registry to registry in one step (export's source options, import's
    /// target options as --to-…); nothing is written to local disk.
    #[command(after_help = AFTER_HELP)]
    Copy(CopyArgs),
    /// Show what changed between two bundles (or their bundle.json files).
    #[command(after_help = AFTER_HELP)]
    Diff(DiffArgs),
    /// Show or prune export's blob cache.
    #[command(after_help = AFTER_HELP)]
    Cache(CacheArgs),
    /// Print the shell completion script for bash, zsh or fish.
    #[command(after_help = COMPLETIONS_HELP)]
    Completions(CompletionsArgs),
    /// Print the man page, or write one page per subcommand into a directory.
    Man(ManArgs),
}

const COMPLETIONS_HELP: &str = "\
Install (or let the Debian package do it):
  bash: airlock completions bash > /usr/share/bash-completion/completions/airlock
  zsh:  airlock completions zsh > /usr/share/zsh/vendor-completions/_airlock
  fish: airlock completions fish > /usr/share/fish/vendor_completions.d/airlock.fish";

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to print the script for
    #[arg(value_enum)]
    pub shell: CompletionShell,
}

/// The shells `airlock completions` writes scripts for.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write airlock.1 and one page per subcommand (airlock-export.1, ...) into DIR
    /// instead of printing airlock.1
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Prefix of the files to write: PREFIX.key and PREFIX.pub
    #[arg(short, long, value_name = "PREFIX")]
    pub output: PathBuf,
    /// Do not encrypt the secret key (for unattended signing; protect the file instead)
    #[arg(long)]
    pub no_password: bool,
    /// Overwrite existing key files
    #[arg(long)]
    pub force: bool,
}

/// Flags shared by the commands that talk to a registry.
#[derive(Args, Debug, Clone, Default)]
pub struct RegistryArgs {
    /// Registry host[:port]. export: else SOURCE_DOCKER_REGISTRY; short names expand only
    /// when a registry is given, and the offline procedure's mcr.microsoft.com is the default
    /// only when a SOURCE_DOCKER_* variable is set (or a terminal prompt offers it).
    /// import: else TARGET_DOCKER_REGISTRY (required)
    #[arg(long, value_name = "HOST")]
    pub registry: Option<String>,
    /// Repository (namespace). export: else SOURCE_DOCKER_REPOSITORY, for short names (the
    /// procedure's arcdata only when a SOURCE_DOCKER_* variable is set; none otherwise).
    /// import: else TARGET_DOCKER_REPOSITORY, replacing the namespace the bundle recorded
    #[arg(long, value_name = "NAMESPACE")]
    pub repository: Option<String>,
    /// Tag. export: else SOURCE_DOCKER_TAG, for short names without one. import: else
    /// TARGET_DOCKER_TAG, replacing every image's tag (signatures keep theirs)
    #[arg(long)]
    pub tag: Option<String>,
    /// Username (else SOURCE_/TARGET_DOCKER_USERNAME, docker's or podman's saved credentials,
    /// or anonymous); the password comes from --password-stdin, SOURCE_/TARGET_DOCKER_PASSWORD
    /// or a hidden prompt, never from the command line
    #[arg(long, short = 'u')]
    pub username: Option<String>,
    /// Read the password from standard input
    #[arg(long)]
    pub password_stdin: bool,
    /// Trust this CA certificate (PEM) for the registry's TLS (besides those in certs.d/HOST[:PORT]/)
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Do not verify the registry's TLS certificate
    #[arg(long)]
    pub insecure: bool,
    /// Talk plain HTTP to the registry
    #[arg(long)]
    pub plain_http: bool,
}

/// Output and concurrency flags.
#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// Concurrent transfers
    #[arg(short = 'j', long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub jobs: u32,
    /// Print a machine-readable JSON summary on stdout
    #[arg(long)]
    pub json: bool,
    /// Print nothing but errors
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print more detail (every blob)
    #[arg(short, long)]
    pub verbose: bool,
    /// How often a failed request or transfer is retried (with back-off) before giving up; a
    /// transfer that moved forward since its last failure starts its count again
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=20))]
    pub retries: u32,
    /// Give up on a request when no byte has moved, in either direction, for this long
    /// (a stall, not a size limit: a long upload over a slow link is fine): 90, 90s, 2m, 500ms
    #[arg(long, value_name = "DURATION", env = "AIRLOCK_TIMEOUT", default_value = "60s",
          value_parser = parse_timeout)]
    pub timeout: std::time::Duration,
}

fn parse_timeout(s: &str) -> Result<std::time::Duration, String> {
    crate::units::parse_duration(s)
}

impl OutputArgs {
    pub fn retry_policy(&self) -> crate::registry::RetryPolicy {
        crate::registry::RetryPolicy {
            attempts: self.retries + 1,
            idle_timeout: self.timeout,
            ..Default::default()
        }
    }
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Images: full references (docker.io/library/nginx:1.27) or short names expanded with
    /// --registry/--repository/--tag
    pub images: Vec<String>,
    /// Take the registries, images and tag rules from this image-set file (YAML; see README)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Read images from a file, one per line (# comments and blank lines are ignored);
    /// `-` reads them from standard input
    #[arg(short = 'f', long, value_name = "FILE")]
    pub images_file: Option<PathBuf>,
    /// The bundle to write (.tar.zst); {date} (YYYY-MM-DD), {month} (YYYY-MM) and {tag}
    /// are filled in
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Keep only this platform of multi-arch images (os/arch[/variant]); repeatable
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Vec<String>,
    /// Split the bundle into volumes of at most this size (K, M, G, T suffixes; FAT32 holds
    /// files under 4 GiB: 4095M)
    #[arg(long, value_name = "SIZE")]
    pub split_size: Option<String>,
    /// Where downloaded blobs are kept so a re-run fetches only what is missing
    /// [default: $XDG_CACHE_HOME/airlock or ~/.cache/airlock]
    #[arg(long, value_name = "DIR", env = "AIRLOCK_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Keep every blob in the cache, large ones too: a re-run after a failure then fetches
    /// nothing twice, at the cost of writing each large blob to disk twice. By default blobs
    /// over 256 MiB stream straight from the registry into the bundle.
    #[arg(long)]
    pub cache_all: bool,
    /// Leave out the blobs that this earlier bundle (or its bundle.json, or the bundles it was
    /// based on) already carried: an incremental bundle. Manifests always travel.
    #[arg(long, value_name = "BUNDLE")]
    pub since: Option<PathBuf>,
    /// Show what would be exported, with sizes, and write nothing
    #[arg(long)]
    pub plan: bool,
    /// Export the images that can be resolved, name the others in the bundle, exit 3
    #[arg(long)]
    pub keep_going: bool,
    /// Do not carry cosign-style signatures, attestations and SBOMs (sha256-<digest>.sig,
    /// .att, .sbom tags and referrers tags) along with the images
    #[arg(long)]
    pub no_referrers: bool,
    /// Sign bundle.json with this minisign secret key (writes NAME.minisig beside the bundle;
    /// an encrypted key's password comes from AIRLOCK_KEY_PASSWORD or a prompt)
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The bundle (its base name, or any of its volumes)
    pub bundle: PathBuf,
    /// Refuse the bundle unless it is signed by this minisign public key; every blob is
    /// checked against the signed digests as it streams, and an image holding one that does
    /// not match is neither pushed whole nor tagged
    #[arg(long, value_name = "PUB")]
    pub trusted_key: Option<PathBuf>,
    /// Only the images whose name (REPOSITORY:TAG as in the bundle, or the full source
    /// reference) matches this glob (`*`, `?`); repeatable. Signatures follow their images
    #[arg(long, value_name = "PATTERN")]
    pub image: Vec<String>,
    /// Show where each image would go and what would be uploaded, mounted or skipped (HEAD
    /// requests only), and write nothing
    #[arg(long)]
    pub plan: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub out: OutputArgs,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The bundle (its base name, or any of its volumes)
    pub bundle: PathBuf,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
    /// Print nothing but errors: exit 0 when the bundle opens and its bundle.json reads,
    /// 1 when not; a quick check for scripts (`verify` checks every byte)
    #[arg(short, long, conflicts_with_all = ["verbose", "json"])]
    pub quiet: bool,
    /// Also list every blob: digest, size and media type
    #[arg(short, long)]
    pub verbose: bool,
    /// Only the images whose name (REPOSITORY:TAG as in the bundle, or the full source
    /// reference) matches this glob; repeatable
    #[arg(long, value_name = "PATTERN")]
    pub image: Vec<String>,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The bundle (its base name, or any of its volumes)
    pub bundle: PathBuf,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
    /// Refuse the bundle unless it is signed by this minisign public key
    #[arg(long, value_name = "PUB")]
    pub trusted_key: Option<PathBuf>,
    /// Print nothing but errors
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,
    /// List each blob as it is checked (digest, size, result)
    #[arg(short, long)]
    pub verbose: bool,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The bundles (base names or any volume); an incremental bundle with its bases serves
    /// the whole set, and a name two bundles carry is taken from the newest
    #[arg(required = true)]
    pub bundles: Vec<PathBuf>,
    /// Address and port to listen on
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:5000")]
    pub listen: String,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Require basic auth from the users of this htpasswd file (bcrypt entries: htpasswd -B)
    #[arg(long, value_name = "FILE")]
    pub htpasswd: Option<PathBuf>,
    /// Serve the images under this namespace, as `import --repository` would push them
    #[arg(long, value_name = "NAMESPACE")]
    pub repository: Option<String>,
    /// Serve every image under this tag, as `import --tag` would
    #[arg(long)]
    pub tag: Option<String>,
    /// Only the images whose name (REPOSITORY:TAG as in the bundle, or the full source
    /// reference) matches this glob; repeatable
    #[arg(long, value_name = "PATTERN")]
    pub image: Vec<String>,
    /// Decoded frames kept for the next request, in MiB (0: none; a request decodes what it
    /// sends unless a response under way holds that frame). More spares decodes when many
    /// clients pull large layers or different images at once; the responses under way hold at
    /// most eight frames more, whatever this is
    #[arg(long, value_name = "MIB", default_value_t = crate::serve::FRAME_CACHE_MIB,
          value_parser = clap::value_parser!(u32).range(0..=65536))]
    pub frame_cache: u32,
    /// No request log
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The earlier bundle (base name, any volume, or an extracted bundle.json)
    pub old: PathBuf,
    /// The later bundle
    pub new: PathBuf,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub action: CacheAction,
}

#[derive(Subcommand, Debug)]
pub enum CacheAction {
    /// Entries, size, and how long the oldest has been unused
    Ls(CacheLsArgs),
    /// Remove entries unused for longer than --older-than, then the least recently used
    /// until the rest fit in --max-size
    Prune(CachePruneArgs),
}

#[derive(Args, Debug)]
pub struct CacheLsArgs {
    /// The cache [default: $XDG_CACHE_HOME/airlock or ~/.cache/airlock]
    #[arg(long, value_name = "DIR", env = "AIRLOCK_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CachePruneArgs {
    /// The cache [default: $XDG_CACHE_HOME/airlock or ~/.cache/airlock]
    #[arg(long, value_name = "DIR", env = "AIRLOCK_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Remove entries not used for this long (30d, 12h)
    #[arg(long, value_name = "AGE")]
    pub older_than: Option<String>,
    /// Then remove the least recently used until the cache fits in this size (20G)
    #[arg(long, value_name = "SIZE")]
    pub max_size: Option<String>,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CopyArgs {
    /// Images: full references or short names expanded with --registry/--repository/--tag
    pub images: Vec<String>,
    /// Take the registries, images and tag rules from this image-set file (YAML)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Read images from a file, one per line; `-` reads them from standard input
    #[arg(short = 'f', long, value_name = "FILE")]
    pub images_file: Option<PathBuf>,
    /// Keep only this platform of multi-arch images (os/arch[/variant]); repeatable
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Vec<String>,
    /// Show what would be copied, and where to, and copy nothing
    #[arg(long)]
    pub plan: bool,
    /// Copy the images that can be resolved, name the others, exit 3
    #[arg(long)]
    pub keep_going: bool,
    /// Do not carry signatures, attestations and SBOMs along with the images
    #[arg(long)]
    pub no_referrers: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
    #[command(flatten)]
    pub to: ToRegistryArgs,
    #[command(flatten)]
    pub out: OutputArgs,
}

/// The target side of `copy`: import's registry flags, prefixed `--to-`.
#[derive(Args, Debug, Clone, Default)]
pub struct ToRegistryArgs {
    /// Target registry host[:port] [env: TARGET_DOCKER_REGISTRY]
    #[arg(long, value_name = "HOST")]
    pub to_registry: Option<String>,
    /// Target namespace [env: TARGET_DOCKER_REPOSITORY]
    #[arg(long, value_name = "NAMESPACE")]
    pub to_repository: Option<String>,
    /// Target tag for every image [env: TARGET_DOCKER_TAG]
    #[arg(long)]
    pub to_tag: Option<String>,
    /// Target username [env: TARGET_DOCKER_USERNAME]
    #[arg(long)]
    pub to_username: Option<String>,
    /// Read the target password from standard input [env: TARGET_DOCKER_PASSWORD]
    #[arg(long)]
    pub to_password_stdin: bool,
    /// Trust this CA certificate (PEM) for the target's TLS (besides those in certs.d/HOST[:PORT]/)
    #[arg(long, value_name = "FILE")]
    pub to_ca_cert: Option<PathBuf>,
    /// Do not verify the target's TLS certificate
    #[arg(long)]
    pub to_insecure: bool,
    /// Talk plain HTTP to the target
    #[arg(long)]
    pub to_plain_http: bool,
}

impl ToRegistryArgs {
    /// The same settings in import's form.
    pub fn registry_args(&self) -> RegistryArgs {
        RegistryArgs {
            registry: self.to_registry.clone(),
            repository: self.to_repository.clone(),
            tag: self.to_tag.clone(),
            username: self.to_username.clone(),
            password_stdin: self.to_password_stdin,
            ca_cert: self.to_ca_cert.clone(),
            insecure: self.to_insecure,
            plain_http: self.to_plain_http,
        }
    }
}
