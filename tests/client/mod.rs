//! SPEC §1 and issue 14: the client library on the HTTP port, `GET
//! /livecast.js` and `GET /livecast.d.ts` (types, CORS `*`, ETag
//! revalidation). Its behaviour in a browser is tested by
//! `scripts/browser-test.sh` (tests/browser).

use crate::support::{Server, http_request};

#[test]
fn the_library_is_served_with_cors_and_an_etag() {
    let srv = Server::start();
    for (path, content_type, needle) in [
        ("/livecast.js", "text/javascript; charset=utf-8", "export function connect("),
        (
            "/livecast.d.ts",
            "application/typescript; charset=utf-8",
            "export declare function connect(",
        ),
    ] {
        let r = srv.get(path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.header("content-type"), Some(content_type), "{path}");
        assert_eq!(r.header("access-control-allow-origin"), Some("*"), "{path}");
        assert_eq!(r.header("cache-control"), Some("no-cache"), "{path}");
        assert!(r.text().contains(needle), "{path}");
        let etag = r.header("etag").unwrap_or_else(|| panic!("{path}: no ETag")).to_owned();
        assert!(etag.len() > 2 && etag.starts_with('"') && etag.ends_with('"'), "{etag}");

        // The same file: 304, no body, the same validator and CORS.
        for inm in [etag.clone(), format!("W/{etag}"), format!("\"nope\", {etag}"), "*".into()] {
            let r = http_request(srv.http, "GET", path, &[("If-None-Match", &inm)], b"");
            assert_eq!(r.status, 304, "{path} If-None-Match: {inm}");
            assert!(r.body.is_empty(), "{path}: 304 with a body");
            assert_eq!(r.header("etag"), Some(etag.as_str()));
            assert_eq!(r.header("access-control-allow-origin"), Some("*"));
            assert_eq!(r.header("cache-control"), Some("no-cache"));
        }
        // Another version: the file again.
        let r = http_request(srv.http, "GET", path, &[("If-None-Match", "\"0000\"")], b"");
        assert_eq!(r.status, 200, "{path}");
        assert!(r.text().contains(needle));

        let r = http_request(srv.http, "POST", path, &[], b"");
        assert_eq!(r.status, 405);
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
    }
}

#[test]
fn the_served_library_defaults_to_this_servers_websocket_port() {
    let srv = Server::start();
    let js = srv.get("/livecast.js").text();
    assert!(!js.contains("{{WS_PORT}}"), "placeholder left in the served library");
    assert!(
        js.contains(&format!("const SERVED_WS_PORT = \"{}\";", srv.ws.port())),
        "the WebSocket port {} is not filled in",
        srv.ws.port()
    );
}

#[test]
fn the_dashboard_imports_the_library_and_may_load_it() {
    let srv = Server::start();
    let r = srv.get("/");
    assert!(r.text().contains("from \"/livecast.js\""), "the dashboard imports /livecast.js");
    let csp = r.header("content-security-policy").unwrap_or_default();
    let scripts = csp.split(';').map(str::trim).find(|d| d.starts_with("script-src")).unwrap_or("");
    assert!(
        scripts.split(' ').any(|s| s == "'self'"),
        "CSP lets the page load /livecast.js: {csp}"
    );
}
