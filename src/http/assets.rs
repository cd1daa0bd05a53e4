//! The client library on the ops port (SPEC §1, issue 14): `GET
//! /livecast.js` and `GET /livecast.d.ts`, embedded in the binary from
//! `src/client/`, so that a page on any origin can
//! `import { connect } from "http://<livecast>:9090/livecast.js"`.
//!
//! Both are answered with `Access-Control-Allow-Origin: *` (a module script
//! from another origin is fetched in CORS mode), an `ETag` computed once
//! when the server starts, and `Cache-Control: no-cache`: browsers keep a
//! copy but revalidate it (`If-None-Match` → `304`), so that pages see an
//! upgraded livecast at once.

use crate::http_codec::{Request, Response};

/// The library. Its default WebSocket port is a placeholder that the serving
/// server fills in (the bound port, known only at start).
const LIBRARY_JS: &str = include_str!("../client/livecast.js");

/// Its TypeScript declarations.
const LIBRARY_DTS: &str = include_str!("../client/livecast.d.ts");

/// What `LIBRARY_JS` holds in place of the WebSocket port.
const WS_PORT_PLACEHOLDER: &str = "{{WS_PORT}}";
/// ... and of the HTTP port it is served on (loaded from another port, it
/// came through a reverse proxy, and connects through it).
const HTTP_PORT_PLACEHOLDER: &str = "{{HTTP_PORT}}";

/// One served file: its bytes, type and validator, fixed at start.
#[derive(Debug)]
struct Asset {
    body: Vec<u8>,
    content_type: &'static str,
    /// A strong validator: the quoted hex FNV-1a hash of `body`.
    etag: String,
}

impl Asset {
    fn new(body: String, content_type: &'static str) -> Asset {
        let body = body.into_bytes();
        let etag = format!("\"{:016x}\"", fnv1a(&body));
        Asset { body, content_type, etag }
    }

    /// `200` with the file, or `304` when `If-None-Match` names our ETag.
    fn response(&self, req: &Request) -> Response {
        let fresh = req.header("if-none-match").is_some_and(|v| etag_matches(v, &self.etag));
        let resp = if fresh {
            Response::new(304)
        } else {
            Response::new(200).with_body(self.content_type, self.body.clone())
        };
        resp.with_header("ETag", &self.etag)
            // Keep a copy, but ask every time: an upgrade is seen at once,
            // and an unchanged file costs a 304.
            .with_header("Cache-Control", "no-cache")
            // Any page may import the library (it carries no user data).
            .with_header("Access-Control-Allow-Origin", "*")
            .with_header("Cross-Origin-Resource-Policy", "cross-origin")
            .with_header("X-Content-Type-Options", "nosniff")
    }
}

/// The client library's files, as this server serves them.
#[derive(Debug)]
pub(crate) struct ClientLibrary {
    js: Asset,
    dts: Asset,
}

impl ClientLibrary {
    /// The files, with the library's default WebSocket port set to
    /// `ws_port` and its own port to `http_port` (the bound ones).
    pub(crate) fn new(ws_port: u16, http_port: u16) -> ClientLibrary {
        let js = LIBRARY_JS
            .replace(WS_PORT_PLACEHOLDER, &ws_port.to_string())
            .replace(HTTP_PORT_PLACEHOLDER, &http_port.to_string());
        ClientLibrary {
            js: Asset::new(js, "text/javascript; charset=utf-8"),
            dts: Asset::new(LIBRARY_DTS.to_owned(), "application/typescript; charset=utf-8"),
        }
    }

    /// `GET /livecast.js` (or `HEAD`).
    pub(crate) fn js(&self, req: &Request) -> Response {
        self.js.response(req)
    }

    /// `GET /livecast.d.ts` (or `HEAD`).
    pub(crate) fn dts(&self, req: &Request) -> Response {
        self.dts.response(req)
    }
}

/// Whether an `If-None-Match` value (`*`, or a list of entity tags, weak
/// ones included: RFC 9110 §13.1.2 compares them weakly) names `etag`.
fn etag_matches(header: &str, etag: &str) -> bool {
    header.split(',').map(str::trim).any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

/// FNV-1a, 64 bits: a stable, dependency-free content hash (a validator,
/// not a security measure).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_lists_and_weak_tags_match() {
        let tag = "\"00ab\"";
        assert!(etag_matches("\"00ab\"", tag));
        assert!(etag_matches("W/\"00ab\"", tag));
        assert!(etag_matches("\"x\", \"00ab\"", tag));
        assert!(etag_matches("*", tag));
        assert!(!etag_matches("\"00ac\"", tag));
        assert!(!etag_matches("00ab", tag));
        assert!(!etag_matches("", tag));
    }

    #[test]
    fn the_served_library_has_its_port_filled_in_and_a_stable_etag() {
        let a = ClientLibrary::new(8123, 9123);
        let js = String::from_utf8(a.js.body.clone()).unwrap();
        assert!(!js.contains(WS_PORT_PLACEHOLDER));
        assert!(!js.contains(HTTP_PORT_PLACEHOLDER));
        assert!(js.contains("\"8123\"") && js.contains("\"9123\""));
        assert_eq!(a.js.etag, ClientLibrary::new(8123, 9123).js.etag);
        assert_ne!(a.js.etag, ClientLibrary::new(8124, 9123).js.etag);
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
