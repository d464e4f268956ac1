//! Each route is declared once, next to its handler, as an `Endpoint`: method, path, who may call it, and the
//! handler. The router (`configure`), the key check (`find` in `auth::authenticate`) and the OpenAPI security
//! (`openapi::add_security`) all read these declarations, so they cannot disagree.

use actix_web::{web, HttpRequest, HttpResponse};

use crate::error::{Error, Result};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: health, readiness, the spec, the console's page and assets.
    Open,
    /// Keys with the `inference` scope: generate, score, rerank, rate, read images and models.
    Inference,
    /// Keys with the `feedback` scope: list and export ratings.
    Feedback,
    /// Keys with the `fine-tune` scope: run and follow fine-tune jobs.
    FineTune,
    /// `admin` keys only: activation, keys, the audit log.
    Admin,
    /// `/metrics`: open, or admin-only with `--protect-metrics`.
    Metrics,
}

/// The HTTP methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Delete,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }

    fn route(self) -> actix_web::Route {
        match self {
            Method::Get => web::get(),
            Method::Post => web::post(),
            Method::Delete => web::delete(),
        }
    }
}

/// One route: the declaration every other part derives from.
pub struct Endpoint {
    pub method: Method,
    /// The actix pattern, which is also the OpenAPI path (`/fine-tunes/{id}`).
    pub path: &'static str,
    pub access: Access,
    /// Attaches the handler to the method's route: `|route| route.to(handler)`.
    pub handler: fn(actix_web::Route) -> actix_web::Route,
}

impl Endpoint {
    pub const fn new(
        method: Method,
        path: &'static str,
        access: Access,
        handler: fn(actix_web::Route) -> actix_web::Route,
    ) -> Self {
        Endpoint {
            method,
            path,
            access,
            handler,
        }
    }
}

/// Registers a resource's endpoints, one actix resource per path, so that a method a path does not serve gets
/// 405 with an `Allow` header instead of falling through to 404.
pub fn configure(cfg: &mut web::ServiceConfig, endpoints: &'static [Endpoint]) {
    let mut paths: Vec<&'static str> = Vec::new();
    for endpoint in endpoints {
        if !paths.contains(&endpoint.path) {
            paths.push(endpoint.path);
        }
    }
    for path in paths {
        let mut resource = web::resource(path);
        for endpoint in endpoints.iter().filter(|endpoint| endpoint.path == path) {
            resource = resource.route((endpoint.handler)(endpoint.method.route()));
        }
        cfg.service(resource.default_service(web::to(method_not_allowed)));
    }
}

/// The endpoint a request matched, from its method and matched pattern.
pub fn find<'a>(endpoints: &'a [&'static Endpoint], method: &str, pattern: &str) -> Option<&'a Endpoint> {
    endpoints
        .iter()
        .copied()
        .find(|endpoint| endpoint.path == pattern && endpoint.method.name() == method)
}

/// A path we serve, asked with a method it does not take.
async fn method_not_allowed(request: HttpRequest) -> Result<HttpResponse> {
    let pattern = request.match_pattern().unwrap_or_default();
    let allowed: Vec<&str> = crate::http::endpoints()
        .iter()
        .filter(|endpoint| endpoint.path == pattern)
        .map(|endpoint| endpoint.method.name())
        .collect();
    Err(Error::MethodNotAllowed {
        method: request.method().to_string(),
        path: request.path().to_string(),
        allowed: allowed.join(", "),
    })
}
