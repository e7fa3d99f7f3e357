//! The route table: the one list the router matches against and the
//! OpenAPI document is checked against (a test fails if they differ).

use hyper::{Method, StatusCode};

use super::ApiError;

/// One route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Stable name (metrics label, handler key, OpenAPI `operationId`).
    pub name: &'static str,
    /// HTTP method.
    pub method: &'static str,
    /// Path pattern; `{name}` is one segment, and `{path}` / `{key}` (last)
    /// take the rest of the path.
    pub pattern: &'static str,
    /// The permission a bearer token needs in the tenant; `None` for the
    /// public routes.
    pub permission: Option<&'static str>,
}

const fn r(
    name: &'static str,
    method: &'static str,
    pattern: &'static str,
    permission: Option<&'static str>,
) -> Route {
    Route {
        name,
        method,
        pattern,
        permission,
    }
}

const READ: Option<&str> = Some("storage.read");
const WRITE: Option<&str> = Some("storage.write");
const SYNC_READ: Option<&str> = Some("sync.read");
const SYNC_MANAGE: Option<&str> = Some("sync.manage");

/// Every route the server answers.
pub const ROUTES: &[Route] = &[
    r("status_page", "GET", "/", None),
    r("healthz", "GET", "/healthz", None),
    r("readyz", "GET", "/readyz", None),
    r("metrics", "GET", "/metrics", None),
    r("openapi", "GET", "/v1/openapi.json", None),
    r("put_file", "PUT", "/v1/files/{path}", WRITE),
    r("get_file", "GET", "/v1/files/{path}", READ),
    r("head_file", "HEAD", "/v1/files/{path}", READ),
    r("delete_file", "DELETE", "/v1/files/{path}", WRITE),
    r("tree", "GET", "/v1/tree", READ),
    r("put_chunk", "POST", "/v1/chunks", WRITE),
    r("get_chunk", "GET", "/v1/chunks/{id}", READ),
    r("add_source", "POST", "/v1/sources", SYNC_MANAGE),
    r("list_sources", "GET", "/v1/sources", SYNC_READ),
    r("delete_source", "DELETE", "/v1/sources/{name}", SYNC_MANAGE),
    r("create_sync", "POST", "/v1/syncs", SYNC_MANAGE),
    r("list_syncs", "GET", "/v1/syncs", SYNC_READ),
    r("get_sync", "GET", "/v1/syncs/{id}", SYNC_READ),
    r("cancel_sync", "POST", "/v1/syncs/{id}/cancel", SYNC_MANAGE),
    r(
        "restart_sync",
        "POST",
        "/v1/syncs/{id}/restart",
        SYNC_MANAGE,
    ),
    r("events", "GET", "/v1/events", SYNC_READ),
    r("usage", "GET", "/v1/usage", Some("usage.read")),
    r(
        "invoice",
        "GET",
        "/v1/invoices/{period}",
        Some("usage.read"),
    ),
    r(
        "create_tenant",
        "POST",
        "/v1/tenants",
        Some("admin.tenants"),
    ),
    r("list_tenants", "GET", "/v1/tenants", Some("admin.tenants")),
    r("create_token", "POST", "/v1/tokens", Some("admin.tokens")),
    r("list_tokens", "GET", "/v1/tokens", Some("admin.tokens")),
    r(
        "revoke_token",
        "DELETE",
        "/v1/tokens/{id}",
        Some("admin.tokens"),
    ),
    r(
        "put_object",
        "PUT",
        "/v1/objects/{key}",
        Some("node.objects"),
    ),
    r(
        "get_object",
        "GET",
        "/v1/objects/{key}",
        Some("node.objects"),
    ),
    r(
        "head_object",
        "HEAD",
        "/v1/objects/{key}",
        Some("node.objects"),
    ),
    r(
        "delete_object",
        "DELETE",
        "/v1/objects/{key}",
        Some("node.objects"),
    ),
    r("list_objects", "GET", "/v1/objects", Some("node.objects")),
];

/// The route's parameters, still percent-encoded.
pub type Params = Vec<(&'static str, String)>;

fn matches(pattern: &'static str, path: &str) -> Option<Params> {
    let mut params = Vec::new();
    let mut rest = path.strip_prefix('/')?;
    let mut pat = pattern.strip_prefix('/')?.split('/').peekable();
    if pattern == "/" {
        return rest.is_empty().then_some(params);
    }
    while let Some(seg) = pat.next() {
        if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            if pat.peek().is_none() && (name == "path" || name == "key") {
                if rest.is_empty() {
                    return None;
                }
                params.push((name, rest.to_owned()));
                return Some(params);
            }
            let (v, after) = rest.split_once('/').unwrap_or((rest, ""));
            if v.is_empty() {
                return None;
            }
            params.push((name, v.to_owned()));
            if pat.peek().is_none() {
                // The last segment: nothing (not even a `/`) may follow.
                return (!rest.contains('/')).then_some(params);
            }
            rest = after;
        } else {
            let (v, after) = rest.split_once('/').unwrap_or((rest, ""));
            if v != seg {
                return None;
            }
            if pat.peek().is_none() {
                return (after.is_empty() && !rest.ends_with('/')).then_some(params);
            }
            rest = after;
        }
    }
    None
}

/// The route for `method` and `path`, with its parameters.
pub fn find(method: &Method, path: &str) -> Option<(&'static Route, Params)> {
    ROUTES
        .iter()
        .filter(|r| r.method == method.as_str())
        .find_map(|r| matches(r.pattern, path).map(|p| (r, p)))
}

/// `405` when the path exists under another method, else `404`.
pub fn no_route(method: &Method, path: &str) -> ApiError {
    let allowed: Vec<&str> = ROUTES
        .iter()
        .filter(|r| matches(r.pattern, path).is_some())
        .map(|r| r.method)
        .collect();
    if allowed.is_empty() {
        ApiError::not_found(format!("no route for {method} {path}"))
    } else {
        let mut e = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!(
                "{method} is not allowed here; allowed: {}",
                allowed.join(", ")
            ),
        );
        e.allow = Some(allowed.join(", "));
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_what_they_should_and_nothing_else() {
        let get = Method::GET;
        let (r, p) = find(&get, "/v1/files/a/b%20c.txt").expect("files");
        assert_eq!(r.name, "get_file");
        assert_eq!(p, vec![("path", "a/b%20c.txt".to_owned())]);
        let (r, p) = find(&Method::POST, "/v1/syncs/42/cancel").expect("cancel");
        assert_eq!((r.name, p[0].1.as_str()), ("cancel_sync", "42"));
        assert_eq!(
            find(&get, "/v1/syncs/42").map(|x| x.0.name),
            Some("get_sync")
        );
        assert!(find(&get, "/v1/syncs/42/").is_none());
        assert!(find(&get, "/v1/files/").is_none());
        assert!(find(&get, "/v1/treex").is_none());
        assert!(find(&get, "/v1/tree/").is_none());
        assert_eq!(find(&get, "/").map(|x| x.0.name), Some("status_page"));
        let e = no_route(&Method::PATCH, "/v1/tree");
        assert_eq!(
            (e.code, e.allow.as_deref()),
            ("method_not_allowed", Some("GET"))
        );
        assert_eq!(no_route(&get, "/nope").code, "not_found");
    }
}
