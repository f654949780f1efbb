//! Scripts drive the API through `slipway --json`, which prints the API's answer as one JSON
//! document; the OpenAPI document describing that API is served without a token.

use std::io::{Read, Write};
use std::net::TcpStream;

use serde_json::{Value, json};
use slipway_tests::{Server, text};

/// `slipway --json ARGS`, asserting success and that stdout is exactly one JSON document.
fn json(server: &Server, args: &[&str]) -> Value {
    let args: Vec<&str> = std::iter::once("--json")
        .chain(args.iter().copied())
        .collect();
    let out = server.cli_ok(&args);
    serde_json::from_str(&out).unwrap_or_else(|e| {
        panic!("slipway {args:?} printed no single JSON document ({e}):\n{out}")
    })
}

#[test]
fn json_output_for_scripts() {
    let server = Server::start();
    let app = json(&server, &["apps:create", "scripted"]);
    assert_eq!(app["name"], "scripted");
    assert_eq!(app["owner"], "admin");
    assert_eq!(app["url"], "http://scripted.slipway.localhost");
    let apps = json(&server, &["apps"]);
    assert_eq!(apps.as_array().map(Vec::len), Some(1), "{apps}");
    assert_eq!(apps[0]["name"], "scripted");

    // Config changes make releases without an image; no push is needed.
    let v1 = json(
        &server,
        &["config:set", "-a", "scripted", "GREETING=hi", "DEBUG=1"],
    );
    assert_eq!(v1["version"], 1, "{v1}");
    assert_eq!(v1["status"], "pending");
    assert_eq!(v1["image"], Value::Null);
    let v2 = json(&server, &["config:unset", "-a", "scripted", "DEBUG"]);
    assert_eq!(v2["version"], 2, "{v2}");
    assert_eq!(v2["description"], "unset DEBUG");
    assert_eq!(
        json(&server, &["config", "-a", "scripted"]),
        json!({ "GREETING": "hi" })
    );
    let releases = json(&server, &["releases", "-a", "scripted"]);
    let versions: Vec<&Value> = releases
        .as_array()
        .expect("releases is a list")
        .iter()
        .map(|r| &r["version"])
        .collect();
    assert_eq!(versions, [2, 1], "{releases}");
    // The flag works after the subcommand too: it is global.
    let info = json(&server, &["apps:info", "-a", "scripted"]);
    assert_eq!(info["release"]["version"], 2, "{info}");
    assert_eq!(
        server.cli_ok(&["apps:info", "-a", "scripted", "--json"]),
        server.cli_ok(&["--json", "apps:info", "-a", "scripted"])
    );

    // Commands that only act print an empty object.
    assert_eq!(
        json(
            &server,
            &["domains:add", "-a", "scripted", "www.scripted.test"]
        ),
        json!({})
    );
    assert_eq!(
        json(&server, &["domains", "-a", "scripted"]),
        json!(["scripted.slipway.localhost", "www.scripted.test"])
    );
    assert_eq!(
        json(
            &server,
            &["domains:remove", "-a", "scripted", "www.scripted.test"]
        ),
        json!({})
    );
    assert_eq!(json(&server, &["ps", "-a", "scripted"]), json!([]));
    assert_eq!(
        json(&server, &["maintenance:on", "-a", "scripted"]),
        json!({ "maintenance": true })
    );

    // Users, tokens, access and keys.
    let bob = json(&server, &["users:add", "bob"]);
    assert_eq!(bob["user"], "bob");
    assert!(
        bob["token"].as_str().is_some_and(|t| !t.is_empty()),
        "{bob}"
    );
    let token = json(&server, &["tokens:create"]);
    assert_eq!(token["user"], "admin");
    assert_eq!(
        json(&server, &["access:add", "-a", "scripted", "bob"]),
        json!({})
    );
    assert_eq!(
        json(&server, &["access", "-a", "scripted"]),
        json!({ "owner": "admin", "collaborators": ["bob"] })
    );
    let key = server.keygen("json-key");
    let added = json(
        &server,
        &["keys:add", key.with_extension("pub").to_str().unwrap()],
    );
    let fingerprint = added["fingerprint"].as_str().expect("a fingerprint");
    assert!(fingerprint.starts_with("SHA256:"), "{added}");
    let keys = json(&server, &["keys"]);
    assert_eq!(keys[0]["fingerprint"], fingerprint, "{keys}");
    assert_eq!(keys[0]["comment"], "json-key");

    let events = json(&server, &["events", "-a", "scripted"]);
    let kinds: Vec<&str> = events
        .as_array()
        .expect("events is a list")
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    for kind in ["app", "release", "domain", "maintenance", "access"] {
        assert!(kinds.contains(&kind), "no {kind} event in {events}");
    }

    // Errors stay one line on stderr with nothing on stdout, also under --json.
    let missing = server.cli(&["--json", "apps:info", "-a", "nope"]);
    assert!(!missing.status.success());
    assert!(missing.stdout.is_empty(), "{}", text(&missing));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("app nope does not exist"), "{stderr}");

    assert_eq!(
        json(
            &server,
            &["apps:destroy", "scripted", "--confirm", "scripted"]
        ),
        json!({})
    );
    assert_eq!(json(&server, &["apps"]), json!([]));
}

/// A plain HTTP/1.1 GET on the API without a token; returns (status, body).
fn get_without_token(server: &Server, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", server.api)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_owned())
}

#[test]
fn openapi_document_needs_no_token() {
    let server = Server::start();
    let (status, body) = get_without_token(&server, "/v1/openapi.json");
    assert_eq!(status, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).expect("the OpenAPI document is JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/apps/{app}/releases"]["get"].is_object());

    // Every other route still wants a token, and answers in the one error shape.
    let (status, body) = get_without_token(&server, "/v1/apps");
    assert_eq!(status, 401, "{body}");
    let error: Value = serde_json::from_str(&body).expect("the error is JSON");
    assert_eq!(error["error"]["code"], "unauthorized", "{body}");
}

/// Requests the framework would reject on its own (wrong method, a body that is not JSON of the
/// right shape, a bad query value) get the API's one error shape too.
#[test]
fn malformed_requests_get_the_one_error_shape() {
    let server = Server::start();
    server.cli_ok(&["apps:create", "shapes"]);
    let url = format!("http://127.0.0.1:{}", server.api);
    let auth = format!("Authorization: Bearer {}", server.token);
    let call = |args: &[&str]| -> (u16, Value) {
        let out = slipway_tests::run(
            std::process::Command::new("curl")
                .args(["-s", "-m", "10", "-w", "\n%{http_code}", "-H", &auth])
                .args(args),
        );
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = out.rsplit_once('\n').unwrap();
        let error =
            serde_json::from_str(body).unwrap_or_else(|_| panic!("{args:?}: not JSON: {body:?}"));
        (code.parse().unwrap(), error)
    };
    let json = "Content-Type: application/json";
    let cases: &[(&[&str], u16, &str)] = &[
        (
            &["-X", "DELETE", &format!("{url}/v1/apps")],
            405,
            "method_not_allowed",
        ),
        (
            &[
                "-X",
                "POST",
                "-H",
                json,
                "-d",
                "{",
                &format!("{url}/v1/apps"),
            ],
            400,
            "bad_request",
        ),
        (
            &["-X", "POST", "-d", "name=x", &format!("{url}/v1/apps")],
            400,
            "bad_request",
        ),
        (
            &[
                "-X",
                "PATCH",
                "-H",
                json,
                "-d",
                r#"{"web":"two"}"#,
                &format!("{url}/v1/apps/shapes/formation"),
            ],
            400,
            "bad_request",
        ),
        (
            &[&format!("{url}/v1/apps/shapes/logs?lines=many")],
            400,
            "bad_request",
        ),
        (&[&format!("{url}/v1/no/such/path")], 404, "not_found"),
    ];
    for (args, status, code) in cases {
        let (got, error) = call(args);
        assert_eq!(got, *status, "{args:?}: {error}");
        assert_eq!(error["error"]["code"], *code, "{args:?}: {error}");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
}
