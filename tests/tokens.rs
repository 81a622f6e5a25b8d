//! Bearer tokens that expire during a job (issue 7): a token-auth registry whose tokens live
//! 2 s, a job that lasts longer (every request delayed by a proxy), and the proxy refusing
//! expired tokens as registries without distribution's 60 s leeway do.
//!
//! Run one: `cargo test --test tokens -- NAME`.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use tempfile::TempDir;

const USER: &str = "robot";
const PASS: &str = "t0ken-Pass";
const LIFETIME: Duration = Duration::from_secs(2);
/// Per-request delay in the proxy: makes the jobs last several token lifetimes (the import
/// into a fresh registry asks nothing of its blobs before sending them, so it needs more).
const DELAY_MS: u64 = 170;
/// The export makes fewer requests: one job at a time and a longer delay.
const EXPORT_DELAY_MS: u64 = 120;

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

fn push_creds() -> [(&'static str, &'static str); 2] {
    [
        ("TARGET_DOCKER_USERNAME", USER),
        ("TARGET_DOCKER_PASSWORD", PASS),
    ]
}

/// The corpus exported from a plain registry (which is then stopped).
fn corpus_bundle() -> (TempDir, PathBuf, Corpus) {
    let src = TestRegistry::start(RegistryOpts::plain());
    let corpus = build_corpus(&src);
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("images.txt");
    std::fs::write(&list, corpus.images_file(&src.host())).expect("write list");
    let bundle = dir.path().join("b.tar.zst");
    let out = run_airlock(
        ["export", "-f", path_str(&list), "-o", path_str(&bundle)],
        &[],
        None,
    );
    assert_success(&out, "export the corpus");
    (dir, bundle, corpus)
}

/// A token-auth registry whose tokens live 2 s (anonymous pull allowed when `anonymous`),
/// and a proxy in front delaying every request by `delay_ms` and refusing expired tokens.
fn expiring_registry(anonymous: bool, delay_ms: u64) -> (TestRegistry, TokenControl, QuirkProxy) {
    let reg = TestRegistry::start(RegistryOpts::plain().with_token_auth(USER, PASS));
    let ctl = reg.token_control();
    ctl.set_expires_in(LIFETIME);
    ctl.set_anonymous_pull(anonymous);
    let proxy = QuirkProxy::start_with(
        &reg,
        vec![Quirk::RejectExpiredTokens, Quirk::Delay(delay_ms)],
    );
    (reg, ctl, proxy)
}

/// Content for the pull tests: imported straight into the registry (no proxy, long tokens).
fn fill(reg: &TestRegistry, ctl: &TokenControl, bundle: &Path) {
    let before = ctl.options();
    ctl.set_expires_in(Duration::from_secs(300));
    let out = run_airlock(
        ["import", path_str(bundle), "--registry", &reg.host()],
        &push_creds(),
        None,
    );
    assert_success(&out, "import the corpus (setup)");
    ctl.set_options(before);
    ctl.clear_log();
}

fn assert_digests_at(reg: &TestRegistry, corpus: &Corpus) {
    for img in &corpus.images {
        assert_eq!(
            skopeo_digest(reg, &img.name()),
            img.digest,
            "{} at the token registry",
            img.name()
        );
    }
}

fn bundle_digests(bundle: &Path) -> Vec<String> {
    let bj = read_bundle_json(bundle);
    let mut v: Vec<String> = bj["images"]
        .as_array()
        .expect("bundle.json has images")
        .iter()
        .map(|i| i["digest"].as_str().expect("image digest").to_string())
        .collect();
    v.sort();
    v
}

fn corpus_digests(corpus: &Corpus) -> Vec<String> {
    let mut v: Vec<String> = corpus.images.iter().map(|i| i.digest.clone()).collect();
    v.sort();
    v
}

/// The token server's log shows, for some scope, a new token issued before the previous one
/// for that scope ran out (refresh before expiry), and more than one token per scope.
fn assert_refreshed_before_expiry(log: &[IssuedToken], proxy: &QuirkProxy) {
    let text = describe_tokens(log);
    // How long requests with bearer tokens went on (the job also does local work).
    let bearer: Vec<QuirkRecord> = proxy
        .records()
        .into_iter()
        .filter(|r| r.auth.as_deref().is_some_and(|a| a.starts_with("Bearer")))
        .collect();
    let job = match (bearer.first(), bearer.last()) {
        (Some(a), Some(b)) => b.at.duration_since(a.at),
        _ => Duration::ZERO,
    };
    let mut by_scope: BTreeMap<String, Vec<&IssuedToken>> = BTreeMap::new();
    for t in log {
        by_scope.entry(t.scope_key()).or_default().push(t);
    }
    assert!(
        job > LIFETIME * 2,
        "requests with tokens went on for {job:?} only: too short to need a new token; make the job longer\n{text}"
    );
    assert!(
        by_scope.values().any(|v| v.len() > 1),
        "no scope got more than one token over a {job:?} job with {LIFETIME:?} tokens:\n{text}"
    );
    let refreshed_early = by_scope.values().any(|v| {
        v.windows(2)
            .any(|w| w[1].at < w[0].expires_at() && w[1].at > w[0].at)
    });
    assert!(
        refreshed_early,
        "no token was refreshed before the previous one for its scope expired:\n{text}"
    );
}

// ---------------------------------------------------------------------------------------------

/// (a) An anonymous export (pull) from a registry whose anonymous tokens live 2 s completes,
/// with tokens refreshed before they run out.
#[test]
fn anonymous_export_with_expiring_tokens_completes() {
    let (dir, bundle, corpus) = corpus_bundle();
    let (reg, ctl, proxy) = expiring_registry(true, EXPORT_DELAY_MS);
    fill(&reg, &ctl, &bundle);
    let list = dir.path().join("pull.txt");
    std::fs::write(&list, corpus.images_file(&proxy.host())).expect("write list");
    let again = dir.path().join("again.tar.zst");
    let t0 = Instant::now();
    let out = run_airlock(
        [
            "export",
            "-j",
            "1",
            "-f",
            path_str(&list),
            "-o",
            path_str(&again),
        ],
        &[],
        None,
    );
    let job = t0.elapsed();
    assert!(
        out.status.success(),
        "anonymous export: {}\ntokens:\n{}\nproxy log:\n{}",
        describe_output(&out),
        ctl.describe_log(),
        proxy.describe()
    );
    assert_eq!(bundle_digests(&again), corpus_digests(&corpus));
    let log = ctl.log();
    assert!(
        !log.is_empty() && log.iter().all(|t| t.is_anonymous()),
        "expected anonymous tokens only:\n{}",
        describe_tokens(&log)
    );
    assert_refreshed_before_expiry(&log, &proxy);
    eprintln!(
        "anonymous export took {job:?}, {} tokens, {} expired tokens refused",
        log.len(),
        proxy.expired_rejections()
    );
}

/// (b) A credentialed import into a registry whose tokens live 2 s completes, with tokens
/// refreshed before they run out.
#[test]
fn credentialed_import_with_expiring_tokens_completes() {
    let (_dir, bundle, corpus) = corpus_bundle();
    let (reg, ctl, proxy) = expiring_registry(false, DELAY_MS);
    ctl.clear_log();
    let t0 = Instant::now();
    let out = run_airlock(
        [
            "import",
            path_str(&bundle),
            "--registry",
            &proxy.host(),
            "-j",
            "2",
        ],
        &push_creds(),
        None,
    );
    let job = t0.elapsed();
    assert!(
        out.status.success(),
        "import: {}\ntokens:\n{}\nproxy log:\n{}",
        describe_output(&out),
        ctl.describe_log(),
        proxy.describe()
    );
    assert!(!stderr_text(&out).contains(PASS));
    // The job's tokens, before skopeo asks for its own.
    let log = ctl.log();
    assert_digests_at(&reg, &corpus);
    assert!(log.iter().all(|t| t.account.as_deref() == Some(USER)));
    assert_refreshed_before_expiry(&log, &proxy);
    eprintln!(
        "import took {job:?}, {} tokens, {} expired tokens refused",
        log.len(),
        proxy.expired_rejections()
    );
}

/// (d) A 401 for an expired token in the middle of a job (the proxy judges one request's
/// token as if the clock were 5 s later) is recovered: a new token, the request again, the
/// job completes. Once on the push side (a request with a body), once on the pull side.
#[test]
fn expired_token_401_mid_job_is_recovered() {
    let (dir, bundle, corpus) = corpus_bundle();
    let (reg, ctl, proxy) = expiring_registry(true, 0);
    // Long tokens here: the only expired one is the forced one.
    ctl.set_expires_in(Duration::from_secs(300));

    // Push side: force the 20th request with a bearer token to be refused.
    proxy.expire_early(20, 1, Duration::from_secs(400));
    let out = run_airlock(
        ["import", path_str(&bundle), "--registry", &proxy.host()],
        &push_creds(),
        None,
    );
    assert!(
        out.status.success(),
        "import with a forced 401: {}\nproxy log:\n{}",
        describe_output(&out),
        proxy.describe()
    );
    let refused = proxy.records();
    let forced = refused
        .iter()
        .find(|r| r.action == "expired-token")
        .unwrap_or_else(|| {
            panic!(
                "the proxy never refused a token (fewer than 21 bearer requests?):\n{}",
                proxy.describe()
            )
        });
    let same_later = refused.iter().any(|r| {
        r.seq > forced.seq
            && r.method == forced.method
            && r.path == forced.path
            && r.status.is_some_and(|s| s != 401)
    });
    // An upload may also start over in a new session; a completed job is what counts then.
    assert!(
        same_later || forced.path.contains("/blobs/uploads/"),
        "the refused request ({forced}) was never made again successfully:\n{}",
        proxy.describe()
    );
    assert_digests_at(&reg, &corpus);

    // Pull side, anonymous.
    let seen = proxy.expired_rejections();
    proxy.expire_early(10, 1, Duration::from_secs(400));
    let list = dir.path().join("pull.txt");
    std::fs::write(&list, corpus.images_file(&proxy.host())).expect("write list");
    let again = dir.path().join("again.tar.zst");
    let out = run_airlock(
        ["export", "-f", path_str(&list), "-o", path_str(&again)],
        &[],
        None,
    );
    assert!(
        out.status.success(),
        "export with a forced 401: {}\nproxy log:\n{}",
        describe_output(&out),
        proxy.describe()
    );
    assert!(
        proxy.expired_rejections() > seen,
        "the proxy never refused a token on the pull side:\n{}",
        proxy.describe()
    );
    assert_eq!(bundle_digests(&again), corpus_digests(&corpus));
}

/// `az acr login` and other OAuth logins leave an *identity token* (an OAuth2 refresh token)
/// in docker's config.json instead of a password. Import and export exchange it at the token
/// endpoint (the refresh-token grant, a `POST`) for their access tokens, push and pull with
/// them; a token the server no longer takes fails saying so, and is never printed.
#[test]
fn identity_tokens_from_the_docker_config_are_exchanged_for_access_tokens() {
    let src = TestRegistry::start(RegistryOpts::plain());
    let pushed = src.client().push_image(
        "acr/app",
        Some("1"),
        ImageFormat::Oci,
        &Platform::linux_amd64(),
        &[small_layer(0x1d7, "identity", true)],
        &[],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let first = dir.path().join("first.tar.zst");
    let out = run_airlock(
        [
            "export",
            &format!("{}/acr/app:1", src.host()),
            "-o",
            path_str(&first),
        ],
        &[],
        None,
    );
    assert_success(&out, "export from the plain registry");

    let reg = TestRegistry::start(RegistryOpts::plain().with_token_auth(USER, PASS));
    let tokens = reg.token_control();
    let docker = dir.path().join("docker");
    std::fs::create_dir_all(&docker).expect("mkdir");
    let write_config = |token: &str| {
        let conf = serde_json::json!({"auths": {reg.host(): {"identitytoken": token}}});
        std::fs::write(docker.join("config.json"), conf.to_string()).expect("config.json");
    };
    let env = [("DOCKER_CONFIG", path_str(&docker))];
    write_config(&tokens.identity_token());
    tokens.clear_log();
    let out = run_airlock(
        ["import", path_str(&first), "--registry", &reg.host()],
        &env,
        None,
    );
    assert_success(&out, "import with an identity token");
    let mut log = tokens.log();
    // skopeo, the witness, logs in with the password.
    assert_eq!(skopeo_digest(&reg, "acr/app:1"), pushed.digest);
    tokens.clear_log();
    let bundle = dir.path().join("b.tar.zst");
    let image = format!("{}/acr/app:1", reg.host());
    let export = || run_airlock(["export", &image, "-o", path_str(&bundle)], &env, None);
    let out = export();
    assert_success(&out, "export with an identity token");
    log.extend(tokens.log());
    assert!(
        log.iter()
            .any(|t| t.scopes.iter().any(|s| s.contains("push")))
            && log
                .iter()
                .any(|t| t.scopes.iter().any(|s| s.ends_with(":pull"))),
        "{}",
        describe_tokens(&log)
    );
    assert!(
        log.iter()
            .all(|t| t.by_refresh_token && t.account.as_deref() == Some(USER)),
        "every token by the refresh-token grant:\n{}",
        describe_tokens(&log)
    );

    // Revoked (or expired) at the server: exit 1, said plainly, never printed.
    write_config("revoked-1d3nt1ty-token");
    std::fs::remove_file(&bundle).expect("rm bundle");
    let out = export();
    let err = stderr_text(&out);
    println!("{}", err.trim());
    assert_eq!(out.status.code(), Some(1), "{}", describe_output(&out));
    assert!(err.contains("identity token"), "{err}");
    assert!(!err.contains("revoked-1d3nt1ty-token"), "{err}");
    assert!(!bundle.exists());
}
