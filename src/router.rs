//! Route selection: host (exact, then `*.suffix`, then any) → path (exact, then routes with
//! path parameters such as `/tenants/{tenant}/orders` in file order, then the longest
//! segment-aligned prefix) → method. Built once per snapshot; lookups allocate nothing.
//!
//! Paths are matched segment by segment with hash lookups, most specific first, so a route whose
//! methods do not fit lets a less specific route take the request; only when no route fits the
//! method does the answer become 405 with the union of the allowed methods.

use crate::config::PathMatch;
use rustc_hash::FxHashMap;

/// What a route needs for matching; the rest of the route lives in the snapshot.
#[derive(Debug, Clone)]
pub struct RouteKey {
    pub hosts: Vec<String>,
    pub path: String,
    pub path_match: PathMatch,
    /// Empty means any method.
    pub methods: Vec<String>,
}

/// The outcome of a lookup.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteMatch {
    /// Index of the route in the snapshot's route list.
    Found(usize),
    /// Some route has this path but none allows the method.
    MethodNotAllowed,
    NotFound,
}

/// Most path parameters one route may have.
pub const MAX_PATH_PARAMS: usize = 8;

/// One segment of a path with parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    /// `{name}`: any non-empty segment.
    Param,
}

/// A route path with parameters (`/tenants/{tenant}/orders`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    segments: Box<[Segment]>,
    /// Parameter names, in order.
    pub names: Box<[Box<str>]>,
    /// `prefix`: the pattern and anything below it.
    prefix: bool,
}

/// A parameter's value: byte range in the request path.
pub type ParamRange = (u16, u16);

impl PathPattern {
    /// The pattern of `path` when it has `{…}` segments; `Ok(None)` for a literal path.
    pub fn parse(path: &str, prefix: bool) -> Result<Option<PathPattern>, String> {
        if !path.contains(['{', '}']) {
            return Ok(None);
        }
        let mut segments = Vec::new();
        let mut names: Vec<Box<str>> = Vec::new();
        for segment in normalise_prefix(path).split('/').skip(1) {
            if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                let valid = !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !valid {
                    return Err(format!(
                        "`{{{name}}}`: a parameter name is letters, digits and '_'"
                    ));
                }
                if names.iter().any(|n| &**n == name) {
                    return Err(format!("parameter `{name}` appears twice"));
                }
                names.push(name.into());
                segments.push(Segment::Param);
            } else if segment.contains(['{', '}']) {
                return Err(format!(
                    "`{segment}`: a parameter is a whole segment, `{{name}}`"
                ));
            } else {
                segments.push(Segment::Literal(segment.into()));
            }
        }
        if names.len() > MAX_PATH_PARAMS {
            return Err(format!("at most {MAX_PATH_PARAMS} parameters per path"));
        }
        Ok(Some(PathPattern {
            segments: segments.into(),
            names: names.into(),
            prefix,
        }))
    }

    /// Matches `path`; fills `params` (one range per name) and returns the length of the
    /// matched part of the path.
    pub fn capture(&self, path: &str, params: &mut [ParamRange; MAX_PATH_PARAMS]) -> Option<usize> {
        if path.len() > u16::MAX as usize || !path.starts_with('/') {
            return None;
        }
        let mut at = 1;
        let mut param = 0;
        for (i, segment) in self.segments.iter().enumerate() {
            let rest = &path[at..];
            let len = rest.find('/').unwrap_or(rest.len());
            let value = &rest[..len];
            match segment {
                Segment::Literal(lit) if **lit == *value => {}
                Segment::Param if !value.is_empty() => {
                    params[param] = (at as u16, (at + len) as u16);
                    param += 1;
                }
                _ => return None,
            }
            let end = at + len;
            let last = i + 1 == self.segments.len();
            if last {
                let tail = &path[end..];
                let ok = tail.is_empty() || tail == "/" || (self.prefix && tail.starts_with('/'));
                return ok.then_some(end);
            }
            if end >= path.len() {
                return None;
            }
            at = end + 1;
        }
        Some(1)
    }
}

/// Routes sharing one host pattern, keyed by path.
#[derive(Debug, Default)]
struct PathTable {
    exact: FxHashMap<Box<[u8]>, Vec<usize>>,
    prefix: FxHashMap<Box<[u8]>, Vec<usize>>,
    /// Routes with path parameters, in file order.
    patterns: Vec<(PathPattern, usize)>,
}

/// The routes of one listener.
#[derive(Debug, Default)]
pub struct Router {
    exact_hosts: FxHashMap<Box<[u8]>, PathTable>,
    /// Keyed by the suffix including its leading dot (`.example.com`).
    wildcard_hosts: FxHashMap<Box<[u8]>, PathTable>,
    any_host: PathTable,
    methods: Vec<Vec<String>>,
}

fn normalise_prefix(path: &str) -> &str {
    if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    }
}

impl Router {
    /// Builds a router; `routes` are (route index, key) in priority order (file order).
    pub fn new<'a>(routes: impl IntoIterator<Item = (usize, &'a RouteKey)>) -> Router {
        let mut router = Router::default();
        for (index, key) in routes {
            if router.methods.len() <= index {
                router.methods.resize(index + 1, Vec::new());
            }
            router.methods[index] = key.methods.clone();
            if key.hosts.is_empty() {
                router.any_host.insert(index, key);
            }
            for host in &key.hosts {
                let host = host.to_ascii_lowercase();
                let table = match host.strip_prefix('*') {
                    Some(suffix) => router.wildcard_hosts.entry(suffix.as_bytes().into()),
                    None => router.exact_hosts.entry(host.into_bytes().into()),
                };
                table.or_default().insert(index, key);
            }
        }
        router
    }

    /// Finds the route for a request. `host` may carry a port; case does not matter.
    pub fn lookup(&self, host: &[u8], path: &str, method: &str) -> RouteMatch {
        let mut lowered = [0u8; 256];
        let host = host_without_port(host);
        let host: &[u8] = if host.len() <= lowered.len() {
            let lowered = &mut lowered[..host.len()];
            lowered.copy_from_slice(host);
            lowered.make_ascii_lowercase();
            lowered
        } else {
            b""
        };
        let mut method_mismatch = false;
        if let Some(table) = self.exact_hosts.get(host) {
            match self.lookup_path(table, path, method) {
                RouteMatch::Found(index) => return RouteMatch::Found(index),
                RouteMatch::MethodNotAllowed => method_mismatch = true,
                RouteMatch::NotFound => {}
            }
        }
        if !self.wildcard_hosts.is_empty() {
            let mut rest = host;
            while let Some(dot) = rest.iter().position(|&b| b == b'.') {
                let suffix = &rest[dot..];
                if let Some(table) = self.wildcard_hosts.get(suffix) {
                    match self.lookup_path(table, path, method) {
                        RouteMatch::Found(index) => return RouteMatch::Found(index),
                        RouteMatch::MethodNotAllowed => method_mismatch = true,
                        RouteMatch::NotFound => {}
                    }
                }
                rest = &rest[dot + 1..];
            }
        }
        match self.lookup_path(&self.any_host, path, method) {
            RouteMatch::Found(index) => RouteMatch::Found(index),
            _ if method_mismatch => RouteMatch::MethodNotAllowed,
            other => other,
        }
    }

    /// The methods allowed on `host` + `path` across all routes (for the `Allow` header).
    pub fn allowed_methods(&self, host: &[u8], path: &str) -> Vec<&str> {
        let mut allowed: Vec<&str> = Vec::new();
        for method in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
            .into_iter()
            .chain(self.methods.iter().flatten().map(String::as_str))
        {
            if !allowed.contains(&method) {
                if let RouteMatch::Found(_) = self.lookup(host, path, method) {
                    allowed.push(method);
                }
            }
        }
        allowed
    }

    fn method_fits(&self, index: usize, method: &str) -> bool {
        let methods = &self.methods[index];
        methods.is_empty() || methods.iter().any(|m| m == method)
    }

    fn pick(
        &self,
        candidates: Option<&Vec<usize>>,
        method: &str,
        mismatch: &mut bool,
    ) -> Option<usize> {
        let candidates = candidates?;
        let found = candidates
            .iter()
            .copied()
            .find(|&i| self.method_fits(i, method));
        if found.is_none() {
            *mismatch = true;
        }
        found
    }

    fn lookup_path(&self, table: &PathTable, path: &str, method: &str) -> RouteMatch {
        let mut mismatch = false;
        if let Some(index) = self.pick(table.exact.get(path.as_bytes()), method, &mut mismatch) {
            return RouteMatch::Found(index);
        }
        if !table.patterns.is_empty() {
            let mut params = [(0, 0); MAX_PATH_PARAMS];
            for (pattern, index) in &table.patterns {
                if pattern.capture(path, &mut params).is_some() {
                    if self.method_fits(*index, method) {
                        return RouteMatch::Found(*index);
                    }
                    mismatch = true;
                }
            }
        }
        if !table.prefix.is_empty() {
            // Longest segment-aligned prefix first: "/a/b/c", "/a/b", "/a", "/".
            let mut candidate = normalise_prefix(path);
            loop {
                if let Some(index) = self.pick(
                    table.prefix.get(candidate.as_bytes()),
                    method,
                    &mut mismatch,
                ) {
                    return RouteMatch::Found(index);
                }
                if candidate == "/" {
                    break;
                }
                candidate = match candidate.rfind('/') {
                    Some(0) => "/",
                    Some(slash) => &candidate[..slash],
                    None => break,
                };
            }
        }
        if mismatch {
            RouteMatch::MethodNotAllowed
        } else {
            RouteMatch::NotFound
        }
    }
}

impl PathTable {
    fn insert(&mut self, index: usize, key: &RouteKey) {
        if let Ok(Some(pattern)) =
            PathPattern::parse(&key.path, key.path_match == PathMatch::Prefix)
        {
            self.patterns.push((pattern, index));
            return;
        }
        let map = match key.path_match {
            PathMatch::Exact => &mut self.exact,
            PathMatch::Prefix => &mut self.prefix,
        };
        let path = match key.path_match {
            PathMatch::Exact => key.path.as_str(),
            PathMatch::Prefix => normalise_prefix(&key.path),
        };
        map.entry(path.as_bytes().into()).or_default().push(index);
    }
}

fn host_without_port(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        return match host.iter().position(|&b| b == b']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.iter().rposition(|&b| b == b':') {
        Some(colon) => &host[..colon],
        None => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(hosts: &[&str], path: &str, path_match: PathMatch, methods: &[&str]) -> RouteKey {
        RouteKey {
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            path: path.to_string(),
            path_match,
            methods: methods.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn router(keys: &[RouteKey]) -> Router {
        Router::new(keys.iter().enumerate())
    }

    #[test]
    fn prefix_is_segment_aware_and_longest_wins() {
        let r = router(&[
            key(&[], "/", PathMatch::Prefix, &[]),
            key(&[], "/api", PathMatch::Prefix, &[]),
            key(&[], "/api/v1/", PathMatch::Prefix, &[]),
            key(&[], "/api/health", PathMatch::Exact, &[]),
        ]);
        assert_eq!(r.lookup(b"a", "/api", "GET"), RouteMatch::Found(1));
        assert_eq!(r.lookup(b"a", "/api/", "GET"), RouteMatch::Found(1));
        assert_eq!(r.lookup(b"a", "/api/x/y", "GET"), RouteMatch::Found(1));
        assert_eq!(r.lookup(b"a", "/apix", "GET"), RouteMatch::Found(0));
        assert_eq!(r.lookup(b"a", "/api/v1", "GET"), RouteMatch::Found(2));
        assert_eq!(r.lookup(b"a", "/api/v1/users", "GET"), RouteMatch::Found(2));
        assert_eq!(r.lookup(b"a", "/api/health", "GET"), RouteMatch::Found(3));
        assert_eq!(r.lookup(b"a", "/api/health/x", "GET"), RouteMatch::Found(1));
        assert_eq!(r.lookup(b"a", "/", "GET"), RouteMatch::Found(0));
    }

    #[test]
    fn path_parameters_match_whole_segments() {
        let r = router(&[
            key(&[], "/", PathMatch::Prefix, &[]),
            key(&[], "/tenants/{tenant}/orders", PathMatch::Prefix, &[]),
            key(
                &[],
                "/tenants/{tenant}/users/{id}",
                PathMatch::Exact,
                &["GET"],
            ),
            key(&[], "/tenants/acme/orders", PathMatch::Exact, &[]),
        ]);
        assert_eq!(
            r.lookup(b"a", "/tenants/acme/orders", "GET"),
            RouteMatch::Found(3)
        );
        assert_eq!(
            r.lookup(b"a", "/tenants/globex/orders", "GET"),
            RouteMatch::Found(1)
        );
        assert_eq!(
            r.lookup(b"a", "/tenants/globex/orders/7", "GET"),
            RouteMatch::Found(1)
        );
        assert_eq!(
            r.lookup(b"a", "/tenants/globex/ordersx", "GET"),
            RouteMatch::Found(0)
        );
        assert_eq!(
            r.lookup(b"a", "/tenants//orders", "GET"),
            RouteMatch::Found(0)
        );
        assert_eq!(
            r.lookup(b"a", "/tenants/g/users/9", "GET"),
            RouteMatch::Found(2)
        );
        assert_eq!(
            r.lookup(b"a", "/tenants/g/users/9/x", "GET"),
            RouteMatch::Found(0)
        );
        assert_eq!(
            r.lookup(b"a", "/tenants/g/users/9", "POST"),
            RouteMatch::Found(0)
        );

        let pattern = PathPattern::parse("/tenants/{tenant}/users/{id}", false)
            .unwrap()
            .unwrap();
        let mut params = [(0, 0); MAX_PATH_PARAMS];
        let path = "/tenants/acme/users/42";
        assert_eq!(pattern.capture(path, &mut params), Some(path.len()));
        assert_eq!(&path[params[0].0 as usize..params[0].1 as usize], "acme");
        assert_eq!(&path[params[1].0 as usize..params[1].1 as usize], "42");
        let prefix = PathPattern::parse("/t/{t}", true).unwrap().unwrap();
        assert_eq!(prefix.capture("/t/x/more", &mut params), Some(4));
        for bad in ["/a/{}", "/a/x{y}", "/a/{b}/{b}", "/a/{b-c}"] {
            assert!(PathPattern::parse(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn no_match_is_not_found() {
        let r = router(&[key(&[], "/api", PathMatch::Prefix, &[])]);
        assert_eq!(r.lookup(b"a", "/other", "GET"), RouteMatch::NotFound);
        assert_eq!(r.lookup(b"a", "/apix", "GET"), RouteMatch::NotFound);
    }

    #[test]
    fn methods_fall_back_then_405() {
        let r = router(&[
            key(&[], "/users", PathMatch::Prefix, &["POST"]),
            key(&[], "/users", PathMatch::Prefix, &["DELETE"]),
            key(&[], "/items", PathMatch::Prefix, &["GET"]),
            key(&[], "/", PathMatch::Prefix, &["GET"]),
        ]);
        assert_eq!(r.lookup(b"a", "/users", "POST"), RouteMatch::Found(0));
        assert_eq!(r.lookup(b"a", "/users/1", "DELETE"), RouteMatch::Found(1));
        assert_eq!(r.lookup(b"a", "/users", "GET"), RouteMatch::Found(3));
        assert_eq!(
            r.lookup(b"a", "/items", "PUT"),
            RouteMatch::MethodNotAllowed
        );
        assert_eq!(r.allowed_methods(b"a", "/items"), vec!["GET"]);
        assert_eq!(
            r.allowed_methods(b"a", "/users"),
            vec!["GET", "POST", "DELETE"]
        );
    }

    #[test]
    fn hosts_exact_then_wildcard_then_any() {
        let r = router(&[
            key(&["api.example.com"], "/", PathMatch::Prefix, &[]),
            key(&["*.example.com"], "/", PathMatch::Prefix, &[]),
            key(&[], "/", PathMatch::Prefix, &[]),
            key(
                &["Admin.Example.com", "ops.example.com"],
                "/admin",
                PathMatch::Prefix,
                &[],
            ),
        ]);
        assert_eq!(
            r.lookup(b"api.example.com", "/x", "GET"),
            RouteMatch::Found(0)
        );
        assert_eq!(
            r.lookup(b"API.example.com:8080", "/x", "GET"),
            RouteMatch::Found(0)
        );
        assert_eq!(
            r.lookup(b"www.example.com", "/x", "GET"),
            RouteMatch::Found(1)
        );
        assert_eq!(
            r.lookup(b"a.b.example.com", "/x", "GET"),
            RouteMatch::Found(1)
        );
        assert_eq!(r.lookup(b"example.com", "/x", "GET"), RouteMatch::Found(2));
        assert_eq!(r.lookup(b"other.org", "/x", "GET"), RouteMatch::Found(2));
        assert_eq!(
            r.lookup(b"admin.example.com", "/admin/1", "GET"),
            RouteMatch::Found(3)
        );
        assert_eq!(
            r.lookup(b"ops.example.com", "/admin", "GET"),
            RouteMatch::Found(3)
        );
        assert_eq!(
            r.lookup(b"admin.example.com", "/x", "GET"),
            RouteMatch::Found(1)
        );
        assert_eq!(r.lookup(b"[::1]:80", "/x", "GET"), RouteMatch::Found(2));
    }
}
