//! The registry as clients meet it: Docker's token protocol by hand with curl, then `docker
//! login`, the Docker Engine's pulls and pushes, and skopeo, all as a user who is not admin.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;
use slipway_tests::{Server, run, text};

/// `curl -sS ARGS...`.
fn curl(args: &[&str]) -> Output {
    run(Command::new("curl").arg("-sS").args(args))
}

/// The status and `WWW-Authenticate` parameters of a request with curl `args`.
fn challenge_of(args: &[&str]) -> (u16, Vec<(String, String)>) {
    let mut all = vec!["-o", "/dev/null", "-D", "-"];
    all.extend_from_slice(args);
    let out = curl(&all);
    let headers = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let params = headers
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("www-authenticate")
                .then(|| value.trim().to_owned())
        })
        .and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned))
        .map(|v| {
            v.split("\",")
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
                .collect()
        })
        .unwrap_or_default();
    (status, params)
}

fn param<'a>(params: &'a [(String, String)], key: &str) -> &'a str {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map_or("", |(_, v)| v.as_str())
}

/// The status of a request with curl `args`.
fn status_of(args: &[&str]) -> String {
    let mut all = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    all.extend_from_slice(args);
    String::from_utf8_lossy(&curl(&all).stdout).into_owned()
}

/// `docker ARGS...` with its own client configuration (logins) in `config`.
fn docker(config: &Path, args: &[&str]) -> Output {
    run(Command::new("docker")
        .env("DOCKER_CONFIG", config)
        .args(args))
}

#[test]
fn clients_follow_the_bearer_challenge() {
    let server = Server::start();
    // Admin's skopeo pushes through the token protocol too.
    server.push_stacks();
    server.cli_ok(&["apps:create", "shared"]);
    server.cli_ok(&["apps:create", "private"]);
    let bob_token = server.add_user("bob");
    server.cli_ok(&["access:add", "-a", "shared", "bob"]);
    let host = format!("127.0.0.1:{}", server.registry);
    let bob = format!("bob:{bob_token}");

    // The token dance by hand: the challenge names realm, service and scope ...
    let manifest = format!("http://{host}/v2/stacks/run/manifests/bookworm");
    let (status, params) = challenge_of(&[&manifest]);
    assert_eq!(status, 401, "{params:?}");
    let realm = param(&params, "realm").to_owned();
    assert_eq!(realm, format!("http://{host}/v2/token"));
    assert_eq!(param(&params, "service"), "slipway-registry");
    assert_eq!(param(&params, "scope"), "repository:stacks/run:pull");
    // ... the realm trades bob's name and API token for a token of that scope ...
    let answer = curl(&[
        "-f",
        "-u",
        &bob,
        "-G",
        &realm,
        "--data-urlencode",
        &format!("service={}", param(&params, "service")),
        "--data-urlencode",
        &format!(
            "scope={} repository:apps/shared:pull",
            param(&params, "scope")
        ),
    ]);
    assert!(answer.status.success(), "{}", text(&answer));
    let answer: Value = serde_json::from_slice(&answer.stdout).expect("token json");
    let token = answer["token"].as_str().expect("token").to_owned();
    assert_eq!(answer["expires_in"], 300);
    let bearer = format!("Authorization: Bearer {token}");
    // ... which pulls, and nothing more.
    let accept = "Accept: application/vnd.oci.image.manifest.v1+json";
    assert_eq!(status_of(&["-H", &bearer, "-H", accept, &manifest]), "200");
    let upload = format!("http://{host}/v2/apps/shared/blobs/uploads/");
    let (status, params) = challenge_of(&["-X", "POST", "-H", &bearer, &upload]);
    assert_eq!(status, 401);
    assert_eq!(param(&params, "error"), "insufficient_scope");
    assert_eq!(param(&params, "scope"), "repository:apps/shared:pull,push");
    let stacks_upload = format!("http://{host}/v2/stacks/run/blobs/uploads/");
    assert_eq!(
        status_of(&["-X", "POST", "-H", &bearer, &stacks_upload]),
        "403"
    );
    // No credentials, no token.
    assert_eq!(status_of(&[&realm]), "401");
    // HTTP Basic keeps working without the dance.
    assert_eq!(status_of(&["-u", &bob, "-H", accept, &manifest]), "200");

    // docker login, and the Engine's pulls and pushes, follow the same challenge.
    let config = server.dir.path().join("docker-config");
    std::fs::create_dir_all(&config).unwrap();
    let login = |password: &str| {
        run(Command::new("sh")
            .env("DOCKER_CONFIG", &config)
            .env("PASSWORD", password)
            .args([
                "-c",
                &format!("printf %s \"$PASSWORD\" | docker login -u bob --password-stdin {host}"),
            ]))
    };
    let wrong = login("not-a-token");
    assert!(!wrong.status.success(), "{}", text(&wrong));
    let ok = login(&bob_token);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains("Login Succeeded"), "{}", text(&ok));
    let run_image = format!("{host}/stacks/run:bookworm");
    let theirs = format!("{host}/apps/shared:from-docker");
    let forbidden = format!("{host}/stacks/run:bob");
    let pull = docker(&config, &["pull", "-q", &run_image]);
    let tagged = [
        docker(&config, &["tag", &run_image, &theirs]),
        docker(&config, &["tag", &run_image, &forbidden]),
    ];
    let push = docker(&config, &["push", &theirs]);
    let denied = docker(&config, &["push", &forbidden]);
    for image in [&run_image, &theirs, &forbidden] {
        docker(&config, &["rmi", image]);
    }
    assert!(pull.status.success(), "{}", text(&pull));
    for out in &tagged {
        assert!(out.status.success(), "{}", text(out));
    }
    assert!(push.status.success(), "{}", text(&push));
    assert!(!denied.status.success(), "{}", text(&denied));
    assert!(text(&denied).contains("denied"), "{}", text(&denied));

    // skopeo with bob's credentials: copies into his app, reads no other app.
    let skopeo = |args: &[&str]| {
        run(Command::new("skopeo")
            .env("XDG_DATA_HOME", server.dir.path().join("skopeo"))
            .env("_CONTAINERS_ROOTLESS_UID", "0")
            .args(args))
    };
    let copy = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--src-creds",
        &bob,
        "--dest-creds",
        &bob,
        &format!("docker://{run_image}"),
        &format!("docker://{host}/apps/shared:from-skopeo"),
    ]);
    assert!(copy.status.success(), "{}", text(&copy));
    let private = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        &bob,
        &format!("docker://{host}/apps/private:latest"),
    ]);
    assert!(!private.status.success());
    assert!(text(&private).contains("denied"), "{}", text(&private));
    let tags = skopeo(&[
        "list-tags",
        "--tls-verify=false",
        "--creds",
        &bob,
        &format!("docker://{host}/apps/shared"),
    ]);
    assert!(text(&tags).contains("from-docker"), "{}", text(&tags));
    assert!(text(&tags).contains("from-skopeo"), "{}", text(&tags));
}
