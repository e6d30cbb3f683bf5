//! The web pages, served by the server itself: the fan's waiting room, seat
//! map, checkout and account (`/`) and the operator dashboard (`/admin`).
//!
//! The files in `web/` are plain HTML, CSS and JavaScript (no build step)
//! compiled into the binary with `include_str!`/`include_bytes!`, so the
//! pages work offline on the machine that serves them.
//!
//! Caching: every asset is served under a name carrying a hash of its bytes
//! (`/assets/app.3f2a9c01d4.js`) with `Cache-Control: public, max-age=31536000,
//! immutable`; the HTML pages, which name those URLs, are `no-cache` with an
//! `ETag` (a revalidation is a 304). A new binary thus never serves a stale
//! script. The plain name (`/assets/app.js`) also answers, `no-cache`.
//!
//! The pages get the limits they show (seats per hold, charge ceiling, the
//! concert time zone) from a JSON block the server writes into the HTML.

use std::sync::OnceLock;

use actix_web::body::MessageBody;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use crate::auth::sha256;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

/// An embedded file.
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

/// The files under `/assets/`.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "style.css",
        content_type: CSS,
        body: include_bytes!("../../web/style.css"),
    },
    Asset {
        name: "i18n.js",
        content_type: JS,
        body: include_bytes!("../../web/i18n.js"),
    },
    Asset {
        name: "i18n-admin.js",
        content_type: JS,
        body: include_bytes!("../../web/i18n-admin.js"),
    },
    Asset {
        name: "common.js",
        content_type: JS,
        body: include_bytes!("../../web/common.js"),
    },
    Asset {
        name: "app.js",
        content_type: JS,
        body: include_bytes!("../../web/app.js"),
    },
    Asset {
        name: "admin.js",
        content_type: JS,
        body: include_bytes!("../../web/admin.js"),
    },
];

const INDEX_HTML: &str = include_str!("../../web/index.html");
const ADMIN_HTML: &str = include_str!("../../web/admin.html");

/// Scripts and styles only from this server; no inline script runs (the
/// settings block is `application/json` data), no framing.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const REVALIDATE: &str = "no-cache";

/// The fan pages and the dashboard; `HEAD` answers like `GET`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    for (path, page) in [("/", Page::Fan), ("/admin", Page::Admin)] {
        cfg.service(
            web::resource(path)
                .app_data(web::Data::new(page))
                .route(web::get().to(serve_page))
                .route(web::head().to(serve_page))
                .default_service(method_not_allowed()),
        );
    }
    cfg.service(
        web::resource("/assets/{file}")
            .route(web::get().to(serve_asset))
            .route(web::head().to(serve_asset))
            .default_service(method_not_allowed()),
    );
}

fn method_not_allowed() -> actix_web::Route {
    web::to(|| async { Err::<HttpResponse, _>(ApiError::MethodNotAllowed("GET, HEAD")) })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    Fan,
    Admin,
}

/// Ten hex digits of the SHA-256 of `bytes`.
fn short_hash(bytes: &[u8]) -> String {
    hex::encode(&sha256(bytes)[..5])
}

/// `app.js` -> `app.<hash>.js`, computed once.
fn hashed_names() -> &'static [String] {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(|| {
        ASSETS
            .iter()
            .map(|asset| {
                let (stem, ext) = asset.name.rsplit_once('.').unwrap_or((asset.name, ""));
                format!("{stem}.{}.{ext}", short_hash(asset.body))
            })
            .collect()
    })
}

/// The URL a page uses for the asset `name`.
pub fn asset_url(name: &str) -> Option<String> {
    let index = ASSETS.iter().position(|asset| asset.name == name)?;
    Some(format!("/assets/{}", hashed_names()[index]))
}

/// What the pages need to know about the server's settings.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PageConfig {
    max_seats_per_reservation: u32,
    max_seats_per_member: u32,
    max_charge: i64,
    max_balance: i64,
    hold_timeout_seconds: u64,
    token_ttl_seconds: u64,
    queue_tick_ms: u128,
    timezone: String,
}

/// The page with its asset URLs and settings filled in.
pub fn render(page: Page, state: &AppState) -> String {
    let settings = &state.settings;
    let config = PageConfig {
        max_seats_per_reservation: settings.max_seats_per_reservation,
        max_seats_per_member: settings.max_seats_per_member,
        max_charge: settings.max_charge,
        max_balance: settings.max_balance,
        hold_timeout_seconds: settings.hold_timeout.as_secs(),
        token_ttl_seconds: settings.token_ttl.as_secs(),
        queue_tick_ms: settings.queue_tick.as_millis(),
        timezone: settings.timezone.name().to_owned(),
    };
    // `<` never appears raw inside the <script> data block.
    let config = serde_json::to_string(&config)
        .unwrap_or_else(|_| "{}".into())
        .replace('<', "\\u003c");
    let template = match page {
        Page::Fan => INDEX_HTML,
        Page::Admin => ADMIN_HTML,
    };
    let mut html = template.replace("{{config}}", &config);
    for asset in ASSETS {
        if let Some(url) = asset_url(asset.name) {
            html = html.replace(&format!("{{{{asset:{}}}}}", asset.name), &url);
        }
    }
    html
}

fn etag_of(bytes: &[u8]) -> String {
    format!("\"{}\"", hex::encode(&sha256(bytes)[..8]))
}

/// Whether the request's `If-None-Match` names `etag`.
fn not_modified(req: &HttpRequest, etag: &str) -> bool {
    req.headers()
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.trim_start_matches("W/") == etag
        })
}

fn respond<B: MessageBody + 'static>(
    req: &HttpRequest,
    content_type: &'static str,
    cache: &'static str,
    body: B,
    etag: String,
) -> HttpResponse {
    let status = if not_modified(req, &etag) {
        StatusCode::NOT_MODIFIED
    } else {
        StatusCode::OK
    };
    let mut response = HttpResponse::build(status);
    response
        .insert_header((header::CACHE_CONTROL, cache))
        .insert_header((header::ETAG, etag))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")));
    if status == StatusCode::NOT_MODIFIED {
        return response.finish();
    }
    response.insert_header((header::CONTENT_TYPE, content_type));
    response.body(body)
}

async fn serve_page(req: HttpRequest, state: web::Data<AppState>, page: web::Data<Page>) -> HttpResponse {
    let html = render(**page, &state);
    let etag = etag_of(html.as_bytes());
    let mut response = respond(&req, HTML, REVALIDATE, html, etag);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

async fn serve_asset(req: HttpRequest, path: web::Path<String>) -> ApiResult<HttpResponse> {
    let file = path.into_inner();
    let names = hashed_names();
    for (index, asset) in ASSETS.iter().enumerate() {
        let cache = if file == names[index] {
            IMMUTABLE
        } else if file == asset.name {
            REVALIDATE
        } else {
            continue;
        };
        return Ok(respond(
            &req,
            asset.content_type,
            cache,
            asset.body,
            etag_of(asset.body),
        ));
    }
    Err(ApiError::NotFound("asset"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_of_the_templates_is_an_embedded_asset() {
        for template in [INDEX_HTML, ADMIN_HTML] {
            for piece in template.split("{{asset:").skip(1) {
                let name = piece.split("}}").next().unwrap_or_default();
                assert!(asset_url(name).is_some(), "{name} is not embedded");
            }
            assert!(template.contains("{{config}}"));
        }
    }

    #[test]
    fn hashed_names_keep_the_extension_and_change_with_the_bytes() {
        let url = asset_url("app.js").expect("app.js is embedded");
        assert!(url.starts_with("/assets/app.") && url.ends_with(".js"), "{url}");
        assert_eq!(url.len(), "/assets/app..js".len() + 10);
        assert_ne!(short_hash(b"a"), short_hash(b"b"));
    }
}
