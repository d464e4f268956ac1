//! The web console (#8): a small TypeScript app (web/, built by Vite) embedded in the binary by build.rs and
//! served at `/`, its hashed assets under `/assets/`. Nothing is fetched from elsewhere at run time, so it
//! works offline; the Content-Security-Policy says so to the browser too.

use actix_web::http::header;
use actix_web::{web, HttpResponse, HttpResponseBuilder};

use crate::http::endpoint::{self, Access, Endpoint, Method};

/// (path under web/dist, bytes), from build.rs; empty when the console was not built.
static ASSETS: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/console_assets.rs"));

/// Scripts, styles, images and API calls from this origin only; images also as `data:` URLs (the API returns
/// PNGs in base64). No inline scripts.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; \
     script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The page and its assets are open: the page itself asks for a key when the API answers 401. They are not
/// part of the API, so the OpenAPI document leaves them out.
pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint::new(Method::Get, "/", Access::Open, |route| route.to(index)),
    Endpoint::new(Method::Get, "/assets/{file}", Access::Open, |route| route.to(assets)),
    Endpoint::new(Method::Get, "/favicon.svg", Access::Open, |route| route.to(favicon)),
];

pub fn configure(cfg: &mut web::ServiceConfig) {
    endpoint::configure(cfg, ENDPOINTS);
}

fn asset(path: &str) -> Option<&'static [u8]> {
    ASSETS.iter().find(|(name, _)| *name == path).map(|(_, bytes)| *bytes)
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, extension)| extension) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// A 200 for the asset at `path`, typed by its extension and cached as `cache_control` says.
fn found(path: &str, cache_control: &'static str) -> HttpResponseBuilder {
    let mut response = HttpResponse::Ok();
    response
        .content_type(content_type(path))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CACHE_CONTROL, cache_control));
    response
}

/// The console's page. Its routes are `#/playground`, `#/rate`, `#/jobs` and `#/models`.
pub async fn index() -> HttpResponse {
    match asset("index.html") {
        // The page names the current hashed assets, so it is never cached.
        Some(page) => found("index.html", "no-cache")
            .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
            .body(page),
        None => HttpResponse::ServiceUnavailable()
            .content_type("text/plain; charset=utf-8")
            .body(
                "The web console is not in this binary: it was built without web/dist.\n\
                 Run `make web` (node and npm build it with Vite), then rebuild, or use `make run`.\n\
                 The API itself is served: see /docs/.\n",
            ),
    }
}

/// A built asset. Vite puts a content hash in each name, so they are cached for a year.
pub async fn assets(file: web::Path<String>) -> HttpResponse {
    let path = format!("assets/{file}");
    match asset(&path) {
        Some(bytes) => found(&path, "public, max-age=31536000, immutable").body(bytes),
        None => HttpResponse::NotFound()
            .content_type("text/plain; charset=utf-8")
            .body(format!("no console asset `{path}`\n")),
    }
}

/// The console's icon, so that browsers asking for it get one instead of a JSON 404.
pub async fn favicon() -> HttpResponse {
    match asset("favicon.svg") {
        Some(bytes) => found("favicon.svg", "public, max-age=86400").body(bytes),
        None => HttpResponse::NotFound().finish(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_by_extension() {
        assert_eq!(content_type("assets/index-1a2b.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("assets/index-1a2b.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("assets/unknown"), "application/octet-stream");
    }

    #[test]
    fn asset_lookup_is_exact() {
        assert!(asset("../Cargo.toml").is_none());
        assert!(asset("assets/../index.html").is_none());
    }
}
