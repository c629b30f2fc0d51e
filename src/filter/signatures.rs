//! Request signatures: an opt-in check in the filter phase that refuses request targets carrying
//! well-known attack shapes (path traversal, SQL injection, cross-site scripting, NUL bytes)
//! before they reach authentication or an upstream.
//!
//! A route (or the whole listener) enables a list of [`Signature`]s by their config names. The
//! config compiler turns that list into one [`SignatureSet`], shared read-only by every core. On
//! each request the filter phase calls [`SignatureSet::scan`] on the raw request target
//! (`/path?query`, exactly as the client sent it); a [`Match`] means the gateway answers 403
//! `blocked_by_filter` and logs [`Match::rule`], a stable id naming the pattern family that hit.
//!
//! # What is scanned
//!
//! The target is first brought into a canonical form, written into a caller-owned scratch buffer
//! so that a scan does not allocate once the buffer has grown to the largest target seen:
//!
//! 1. **Decoding.** Percent-escapes are decoded, repeatedly, up to three rounds, stopping early
//!    when a round changes nothing, so double- and triple-encoded attacks (`%252e%252e%252f`) are
//!    seen decoded. Invalid escapes (`%`, `%4`, `%zz`) are kept as they are. In the query (after
//!    the first `?` of the target as sent) `+` is a space. Overlong UTF-8 forms used to smuggle
//!    traversal (`%c0%ae` and `%e0%80%ae` → `.`, `%c0%af` and `%e0%80%af` → `/`, `%c1%9c` → `\`)
//!    and IIS `%uXXXX` escapes (`%u002e`, `%u002f`, `%u005c`, any code point below U+0080, and
//!    the full-width forms U+FF01–U+FF5E, which IIS folds to ASCII) are decoded too.
//! 2. **Path view** (nul-byte and path-traversal rules). The decoded target with `\`, `?`, `&`,
//!    `=` and `;` all read as `/`, and with a `/` added before and after. So `..` is a path
//!    segment exactly when `/../` occurs in this view: `/../`, a trailing `/..`, `/..?`, a leading
//!    `../`, `..\`, `/..;/`, and a query value `?file=../x` or `?x=..` all match, while a `..`
//!    inside a name (`/files/a..b`, `/v1..2`) does not.
//! 3. **Text view** (sql-injection and xss rules). The decoded target with every run of ASCII
//!    whitespace (including vertical tab) and every SQL comment `/*...*/` collapsed to one space,
//!    MySQL version comments (`/*!50000union*/`) opened so their content is seen, and the spaces
//!    next to `=`, before `(` and after `;` removed. `union/**/select` and `union   select` both
//!    read `union select`; `onerror = alert (1)` reads `onerror=alert(1)`.
//!
//! Patterns are matched ASCII-case-insensitively by one Aho-Corasick automaton built per set.
//! A pattern that begins with a letter must not follow a letter or `_`, and one that ends with a
//! letter or digit must not be followed by a letter, digit or `_`: `union selection`,
//! `retrieval(` and `darwin.ini` do not match. No regular expressions are involved.
//!
//! # Rules
//!
//! Patterns are written as they appear in the canonical view named in the first column.
//!
//! | rule id | view | patterns |
//! |---|---|---|
//! | `nul-byte/nul` | path | a NUL byte anywhere (`%00`, `%2500`, ...) |
//! | `path-traversal/dot-dot-segment` | path | `/../` (see the path view above) |
//! | `path-traversal/sensitive-file` | path | `/etc/passwd`, `/etc/shadow`, `/proc/self/`, `c:/windows` (so `c:\windows`), `win.ini`, `boot.ini` |
//! | `sql-injection/tautology` | text | `' or '1'='1`, `" or "1"="1`, `'or'1'='1`, `"or"1"="1`, ` or 1=1` (so `' or 1=1`, ` or 1=1--`), `'or 1=1`, `"or 1=1`, `' or ''='`, `' or 'a'='a`, `' or 'x'='x`, `' or true`, `') or ('1'='1`, `' and '1'='1`, ` and 1=1` |
//! | `sql-injection/union-select` | text | `union select`, `union all select`, `union distinct select`, `union(select`, `union all(select` |
//! | `sql-injection/stacked-query` | text | `;drop table` (so `'; drop table`, `; drop table`), `;drop database`, `;truncate table`, `;delete from`, `;shutdown` |
//! | `sql-injection/comment-terminator` | text | `'--`, `' --`, `')--`, `'#`, `'/*` (an unterminated comment) |
//! | `sql-injection/time-delay` | text | `sleep(`, `pg_sleep(`, `benchmark(`, `waitfor delay` |
//! | `sql-injection/schema-probe` | text | `information_schema` |
//! | `sql-injection/command-exec` | text | `xp_cmdshell` |
//! | `sql-injection/file-access` | text | `load_file(`, `into outfile`, `into dumpfile` |
//! | `xss/script-tag` | text | `<script`, `</script` |
//! | `xss/script-url` | text | `javascript:`, `vbscript:`, `data:text/html` |
//! | `xss/event-handler` | text | `onerror=`, `onload=`, `onmouseover=`, `onfocus=`, `onclick=`, `onblur=`, `ontoggle=`, `onanimationstart=` |
//! | `xss/embedded-element` | text | `<iframe`, `<svg`, `<img`, `<body`, `<object`, `<embed` |
//! | `xss/script-call` | text | `document.cookie`, `alert(`, `eval(`, `prompt(`, `fromcharcode(` |
//! | `xss/srcdoc` | text | `srcdoc=` |
//!
//! When several rules match, the path view (nul-byte, path-traversal) is reported before the text
//! view (sql-injection, xss), and within a view the match that ends first in the canonical form.
//!
//! # Limits
//!
//! These are coarse signatures for the request target only, not a web application firewall:
//! headers and bodies are not inspected, HTML entities (`&#60;`) and comment styles other than
//! `/* */` (`--`, `#`) are not decoded, and the repeated decoding means a benign target that
//! carries a literal `%00` or `../` in a value (sent as `%2500`, `..%252f`) is refused. The gateway
//! normalizes dot segments in the path only after the filter phase, so this scan deliberately sees
//! the target as sent.

use std::fmt;
use std::str::FromStr;

use aho_corasick::{AhoCorasick, MatchKind};

/// Rounds of percent-decoding applied at most (enough for double and triple encoding).
const DECODE_ROUNDS: usize = 3;

/// One family of request signatures that a config can enable by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signature {
    /// `..` path segments and well-known sensitive files (`path-traversal`).
    PathTraversal,
    /// SQL injection probes: tautologies, `union select`, stacked queries, time delays
    /// (`sql-injection`).
    SqlInjection,
    /// Cross-site scripting: script tags, `javascript:` URLs, event handlers (`xss`).
    Xss,
    /// A NUL byte anywhere in the decoded target (`nul-byte`).
    NulByte,
}

impl Signature {
    /// Every signature, in the order the config documents them.
    pub const ALL: [Signature; 4] = [
        Signature::PathTraversal,
        Signature::SqlInjection,
        Signature::Xss,
        Signature::NulByte,
    ];

    /// Reads a config name: "path-traversal", "sql-injection", "xss", "nul-byte" (exact,
    /// lower-case). Any other name is `None`.
    pub fn parse(name: &str) -> Option<Signature> {
        match name {
            "path-traversal" => Some(Signature::PathTraversal),
            "sql-injection" => Some(Signature::SqlInjection),
            "xss" => Some(Signature::Xss),
            "nul-byte" => Some(Signature::NulByte),
            _ => None,
        }
    }

    /// The config name of this signature, also the prefix of its rule ids.
    pub fn name(self) -> &'static str {
        match self {
            Signature::PathTraversal => "path-traversal",
            Signature::SqlInjection => "sql-injection",
            Signature::Xss => "xss",
            Signature::NulByte => "nul-byte",
        }
    }

    /// Which canonical view this signature's patterns are matched against.
    fn view(self) -> View {
        match self {
            Signature::PathTraversal | Signature::NulByte => View::Path,
            Signature::SqlInjection | Signature::Xss => View::Text,
        }
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Signature {
    type Err = SignatureError;

    /// Like [`Signature::parse`], with an error that names the unknown signature.
    fn from_str(name: &str) -> Result<Signature, SignatureError> {
        Signature::parse(name).ok_or_else(|| SignatureError::Unknown(name.to_owned()))
    }
}

/// Why a list of signature names could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The name is not one of the known signatures.
    #[error(
        "unknown request signature `{0}` (expected one of: path-traversal, sql-injection, xss, nul-byte)"
    )]
    Unknown(String),
}

/// What matched: the signature and a stable rule id such as "sql-injection/union-select" or
/// "path-traversal/dot-dot-segment" (one id per pattern family; see the table in the module
/// documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    /// The enabled signature whose pattern matched.
    pub signature: Signature,
    /// The rule id, `<signature name>/<pattern family>`, stable across releases for logs.
    pub rule: &'static str,
}

/// The compiled matcher for a set of enabled signatures (shared read-only between threads: it is
/// `Send + Sync`, and cloning it is cheap).
#[derive(Debug, Clone)]
pub struct SignatureSet {
    /// The enabled signatures, deduplicated, in [`Signature::ALL`] order.
    enabled: Vec<Signature>,
    /// One automaton over the patterns of every enabled signature; `None` when none is enabled.
    automaton: Option<AhoCorasick>,
    /// What each automaton pattern id stands for.
    patterns: Vec<PatternInfo>,
    /// Whether any enabled signature reads the path view.
    path_view: bool,
    /// Whether any enabled signature reads the text view.
    text_view: bool,
}

impl SignatureSet {
    /// Compiles the matcher for `enabled` (duplicates are ignored). An empty list gives a set
    /// whose [`scan`](SignatureSet::scan) always returns `None`.
    pub fn new(enabled: &[Signature]) -> SignatureSet {
        let enabled: Vec<Signature> = Signature::ALL
            .into_iter()
            .filter(|signature| enabled.contains(signature))
            .collect();
        let mut needles: Vec<&'static str> = Vec::new();
        let mut patterns = Vec::new();
        for rule in RULES
            .iter()
            .filter(|rule| enabled.contains(&rule.signature))
        {
            for &pattern in rule.patterns {
                needles.push(pattern);
                patterns.push(PatternInfo::new(rule, pattern));
            }
        }
        let automaton = (!needles.is_empty()).then(|| {
            AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::Standard)
                .build(&needles)
                .expect("the built-in signature patterns are few and short, so they always compile")
        });
        SignatureSet {
            path_view: enabled.iter().any(|s| s.view() == View::Path),
            text_view: enabled.iter().any(|s| s.view() == View::Text),
            enabled,
            automaton,
            patterns,
        }
    }

    /// Compiles the matcher from config names ("path-traversal", "sql-injection", "xss",
    /// "nul-byte"); the first unknown name is an error.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Result<SignatureSet, SignatureError> {
        let enabled = names
            .iter()
            .map(|name| name.as_ref().parse())
            .collect::<Result<Vec<Signature>, SignatureError>>()?;
        Ok(SignatureSet::new(&enabled))
    }

    /// True when no signature is enabled, so scanning can be skipped altogether.
    pub fn is_empty(&self) -> bool {
        self.automaton.is_none()
    }

    /// The enabled signatures, deduplicated, in [`Signature::ALL`] order.
    pub fn signatures(&self) -> &[Signature] {
        &self.enabled
    }

    /// Scans a raw request target (`/path?query`, exactly as the client sent it,
    /// percent-encoded) and returns the first rule that matches, if any.
    ///
    /// `scratch` is reused between calls (cleared and grown as needed, to about twice the target
    /// length); its previous contents do not matter. Keeping one buffer per core makes the scan
    /// allocation-free once warmed up. Arbitrary bytes (invalid UTF-8, broken escapes) are
    /// accepted.
    pub fn scan(&self, target: &[u8], scratch: &mut Vec<u8>) -> Option<Match> {
        let automaton = self.automaton.as_ref()?;
        let path_end = canonicalize(target, scratch, self.path_view, self.text_view);
        if self.path_view {
            if let Some(found) = self.find(automaton, &scratch[..path_end], View::Path) {
                return Some(found);
            }
        }
        if self.text_view {
            return self.find(automaton, &scratch[path_end..], View::Text);
        }
        None
    }

    /// The first match, by end position, of a pattern of `view` in `haystack` whose word
    /// boundaries hold.
    fn find(&self, automaton: &AhoCorasick, haystack: &[u8], view: View) -> Option<Match> {
        automaton.find_overlapping_iter(haystack).find_map(|found| {
            let info = &self.patterns[found.pattern().as_usize()];
            (info.view == view && info.bounded(haystack, found.start(), found.end())).then_some(
                Match {
                    signature: info.signature,
                    rule: info.rule,
                },
            )
        })
    }
}

/// The two canonical forms of a target that patterns are matched against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    /// Decoded, separators read as `/`, framed by `/` (nul-byte, path-traversal).
    Path,
    /// Decoded, whitespace and comments collapsed (sql-injection, xss).
    Text,
}

/// One pattern family: the rule id and its patterns, as they appear in the signature's view.
struct Rule {
    signature: Signature,
    id: &'static str,
    patterns: &'static [&'static str],
}

/// Every rule; the module documentation's table lists the same.
const RULES: &[Rule] = &[
    Rule {
        signature: Signature::NulByte,
        id: "nul-byte/nul",
        patterns: &["\0"],
    },
    Rule {
        signature: Signature::PathTraversal,
        id: "path-traversal/dot-dot-segment",
        patterns: &["/../"],
    },
    Rule {
        signature: Signature::PathTraversal,
        id: "path-traversal/sensitive-file",
        patterns: &[
            "/etc/passwd",
            "/etc/shadow",
            "/proc/self/",
            "c:/windows",
            "win.ini",
            "boot.ini",
        ],
    },
    Rule {
        signature: Signature::SqlInjection,
        id: "sql-injection/tautology",
        patterns: &[
            "' or '1'='1",
            "\" or \"1\"=\"1",
            "'or'1'='1",
            "\"or\"1\"=\"1",
            " or 1=1",
            "'or 1=1",
            "\"or 1=1",
            "' or ''='",
            "' or 'a'='a",
            "' or 'x'='x",
            "' or true",
            "') or ('1'='1",
            "' and '1'='1",
            " and 1=1",
        ],
    },
    Rule {
        signature: Signature::SqlInjection,
        id: "sql-injection/union-select",
        patterns: &[
            "union select",
            "union all select",
            "union distinct select",
            "union(select",
            "union all(select",
        ],
    },
    Rule {
        signature: Signature::SqlInjection,
        id: "sql-injection/stacked-query",
        patterns: &[
            ";drop table",
            ";drop database",
            ";truncate table",
            ";delete from",
            ";shutdown",
        ],
    },
    Rule {
        signature: Signature::SqlInjection,
        id: "sql-injection/comment-terminator",
        patterns: &["'--", "' --", "')--", "'#", "'/*"],
    },
    Rule {
        signature: Signature::SqlInjection,
        id: "sql-injection/time-delay",
        patterns: &["sleep(", "pg_sleep(", "benchmark(", "waitfor delay"],
    },
    Rule {
        signature: Signature::SqlInjection,
        id: "sql-injection/schema-probe",
        patterns: &["information_schema"],
    },
    Rule {
        signature: Signature::SqlInjection,
        id: "sql-injection/command-exec",
        patterns: &["xp_cmdshell"],
    },
    Rule {
        signature: Signature::SqlInjection,
        id: "sql-injection/file-access",
        patterns: &["load_file(", "into outfile", "into dumpfile"],
    },
    Rule {
        signature: Signature::Xss,
        id: "xss/script-tag",
        patterns: &["<script", "</script"],
    },
    Rule {
        signature: Signature::Xss,
        id: "xss/script-url",
        patterns: &["javascript:", "vbscript:", "data:text/html"],
    },
    Rule {
        signature: Signature::Xss,
        id: "xss/event-handler",
        patterns: &[
            "onerror=",
            "onload=",
            "onmouseover=",
            "onfocus=",
            "onclick=",
            "onblur=",
            "ontoggle=",
            "onanimationstart=",
        ],
    },
    Rule {
        signature: Signature::Xss,
        id: "xss/embedded-element",
        patterns: &["<iframe", "<svg", "<img", "<body", "<object", "<embed"],
    },
    Rule {
        signature: Signature::Xss,
        id: "xss/script-call",
        patterns: &[
            "document.cookie",
            "alert(",
            "eval(",
            "prompt(",
            "fromcharcode(",
        ],
    },
    Rule {
        signature: Signature::Xss,
        id: "xss/srcdoc",
        patterns: &["srcdoc="],
    },
];

/// What one automaton pattern stands for, with its word-boundary requirements.
#[derive(Debug, Clone, Copy)]
struct PatternInfo {
    signature: Signature,
    rule: &'static str,
    view: View,
    /// The pattern begins with a letter: it must not follow a letter or `_`.
    word_start: bool,
    /// The pattern ends with a letter or digit: it must not be followed by one, nor by `_`.
    word_end: bool,
}

impl PatternInfo {
    fn new(rule: &Rule, pattern: &str) -> PatternInfo {
        let bytes = pattern.as_bytes();
        PatternInfo {
            signature: rule.signature,
            rule: rule.id,
            view: rule.signature.view(),
            word_start: bytes.first().is_some_and(u8::is_ascii_alphabetic),
            word_end: bytes.last().is_some_and(u8::is_ascii_alphanumeric),
        }
    }

    /// Whether a match at `start..end` of `haystack` stands on the word boundaries it needs.
    fn bounded(&self, haystack: &[u8], start: usize, end: usize) -> bool {
        let before_ok = !self.word_start
            || start == 0
            || !matches!(haystack[start - 1], b'a'..=b'z' | b'A'..=b'Z' | b'_');
        let after_ok = !self.word_end
            || haystack
                .get(end)
                .is_none_or(|&b| !(b.is_ascii_alphanumeric() || b == b'_'));
        before_ok && after_ok
    }
}

/// Writes the canonical forms of `target` into `scratch` and returns where the path view ends:
/// `scratch[..path_end]` is the path view (valid when `path_view`), `scratch[path_end..]` the
/// text view (empty unless `text_view`).
fn canonicalize(target: &[u8], scratch: &mut Vec<u8>, path_view: bool, text_view: bool) -> usize {
    scratch.clear();
    scratch.reserve(2 * target.len() + 2);
    scratch.push(b'/');
    scratch.extend_from_slice(target);
    let query = target.iter().position(|&b| b == b'?');
    let decoded = decode(&mut scratch[1..], query);
    scratch.truncate(1 + decoded);
    scratch.push(b'/');
    let path_end = scratch.len();
    if text_view {
        let source = 1..1 + decoded;
        if scratch[source.clone()]
            .iter()
            .any(|&b| is_space(b) || b == b'*')
        {
            scratch.resize(path_end + decoded, 0);
            let (source_view, text) = scratch.split_at_mut(path_end);
            let written = collapse(&source_view[source], text);
            scratch.truncate(path_end + written);
        } else {
            // Nothing to collapse: the text view is the decoded target as it is.
            scratch.extend_from_within(source);
        }
    }
    if path_view {
        for byte in &mut scratch[1..1 + decoded] {
            if matches!(*byte, b'\\' | b'?' | b'&' | b'=' | b';') {
                *byte = b'/';
            }
        }
    }
    path_end
}

/// Percent-decodes `buf` in place, up to [`DECODE_ROUNDS`] rounds, and returns the decoded
/// length. `query` is the index of the `?` that starts the query, if any.
fn decode(buf: &mut [u8], mut query: Option<usize>) -> usize {
    let mut len = buf.len();
    for _ in 0..DECODE_ROUNDS {
        let (decoded, moved_query, changed) = decode_round(&mut buf[..len], query);
        len = decoded;
        query = moved_query;
        if !changed {
            break;
        }
    }
    len
}

/// One decoding round in place (the output never outgrows what has been read). Returns the new
/// length, where the query's `?` moved to, and whether anything changed.
fn decode_round(buf: &mut [u8], query: Option<usize>) -> (usize, Option<usize>, bool) {
    let len = buf.len();
    let (mut read, mut write, mut changed) = (0, 0, false);
    let mut moved_query = None;
    while read < len {
        // Runs of bytes that decode to themselves are moved in bulk (the `?` is one of them).
        let run = buf[read..]
            .iter()
            .position(|&b| matches!(b, b'%' | b'+' | 0x9C | 0xAE | 0xAF))
            .unwrap_or(len - read);
        if let Some(q) = query.filter(|q| (read..read + run).contains(q)) {
            moved_query = Some(write + (q - read));
        }
        if write != read {
            buf.copy_within(read..read + run, write);
        }
        read += run;
        write += run;
        if read == len {
            break;
        }
        let byte = buf[read];
        let (out, used) = match byte {
            b'%' => decode_escape(&buf[read..]).unwrap_or((b'%', 1)),
            b'+' if query.is_some_and(|q| read > q) => (b' ', 1),
            _ => (byte, 1),
        };
        changed |= used > 1 || out != byte;
        buf[write] = out;
        write += 1;
        read += used;
        if matches!(out, 0x9C | 0xAE | 0xAF) {
            if let Some((folded, width)) = overlong(&buf[..write]) {
                write -= width - 1;
                buf[write - 1] = folded;
                changed = true;
            }
        }
    }
    (write, moved_query, changed)
}

/// Decodes the escape at the start of `s` (which begins with `%`): `%XX`, or IIS `%uXXXX` for a
/// code point below U+0080 or a full-width ASCII form. Returns the byte and the escape's length.
fn decode_escape(s: &[u8]) -> Option<(u8, usize)> {
    if let [_, hi, lo, ..] = s {
        if let (Some(hi), Some(lo)) = (hex(*hi), hex(*lo)) {
            return Some((hi << 4 | lo, 3));
        }
    }
    if let [_, b'u' | b'U', digits @ ..] = s {
        let digits = digits.get(..4)?;
        let mut code = 0u32;
        for &digit in digits {
            code = code << 4 | u32::from(hex(digit)?);
        }
        let byte = match code {
            0..=0x7F => code,
            0xFF01..=0xFF5E => code - 0xFEE0,
            _ => return None,
        };
        return Some((u8::try_from(byte).ok()?, 6));
    }
    None
}

/// Folds an overlong UTF-8 encoding of `.`, `/` or `\` at the end of `out`: the ASCII byte and
/// how many bytes it replaces.
fn overlong(out: &[u8]) -> Option<(u8, usize)> {
    match out {
        [.., 0xE0, 0x80, 0xAE] => Some((b'.', 3)),
        [.., 0xE0, 0x80, 0xAF] => Some((b'/', 3)),
        [.., 0xC0, 0xAE] => Some((b'.', 2)),
        [.., 0xC0, 0xAF] => Some((b'/', 2)),
        [.., 0xC1, 0x9C] => Some((b'\\', 2)),
        _ => None,
    }
}

/// The value of one hexadecimal digit.
fn hex(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// ASCII whitespace as SQL engines read it (vertical tab included).
fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r' | 0x0B | 0x0C)
}

/// Writes the text view of `source` into `text` (at least as long as `source`) and returns its
/// length: whitespace runs and `/*...*/` comments become one space, `/*!NNNNN` and `*/` become a
/// space with the content kept, and no space is kept before `=` or `(`, nor after `=` or `;`.
fn collapse(source: &[u8], text: &mut [u8]) -> usize {
    let (mut read, mut write) = (0, 0);
    let mut gap = false;
    // Once a `/*` has no closing `*/` after it, no later one has: skip the search (keeps it linear).
    let mut may_close = true;
    while read < source.len() {
        if !gap {
            // Runs of ordinary bytes are copied in bulk.
            let run = source[read..]
                .iter()
                .position(|&b| is_space(b) || b == b'/' || b == b'*')
                .unwrap_or(source.len() - read);
            text[write..write + run].copy_from_slice(&source[read..read + run]);
            read += run;
            write += run;
            if read == source.len() {
                break;
            }
        }
        let byte = source[read];
        let next = source.get(read + 1).copied();
        if is_space(byte) {
            gap = true;
            read += 1;
            continue;
        }
        if byte == b'/' && next == Some(b'*') {
            if source.get(read + 2) == Some(&b'!') {
                read += 3;
                while source.get(read).is_some_and(u8::is_ascii_digit) {
                    read += 1;
                }
                gap = true;
                continue;
            }
            if may_close {
                match comment_end(source, read + 2) {
                    Some(end) => {
                        read = end;
                        gap = true;
                        continue;
                    }
                    None => may_close = false,
                }
            }
        }
        if byte == b'*' && next == Some(b'/') {
            read += 2;
            gap = true;
            continue;
        }
        let glued =
            matches!(byte, b'=' | b'(') || (write > 0 && matches!(text[write - 1], b'=' | b';'));
        if gap && !glued {
            text[write] = b' ';
            write += 1;
        }
        gap = false;
        text[write] = byte;
        write += 1;
        read += 1;
    }
    write
}

/// The index just past the first `*/` at or after `from`, if any.
fn comment_end(source: &[u8], from: usize) -> Option<usize> {
    source
        .get(from..)?
        .windows(2)
        .position(|pair| pair == b"*/")
        .map(|at| from + at + 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    fn all() -> &'static SignatureSet {
        static SET: OnceLock<SignatureSet> = OnceLock::new();
        SET.get_or_init(|| SignatureSet::new(&Signature::ALL))
    }

    fn scan_with(set: &SignatureSet, target: &[u8]) -> Option<Match> {
        let mut scratch = Vec::new();
        set.scan(target, &mut scratch)
    }

    /// The rule that `only` (a set of just that signature) reports for `target`.
    fn rule_of(only: Signature, target: &str) -> Option<&'static str> {
        let set = SignatureSet::new(&[only]);
        let found = scan_with(&set, target.as_bytes());
        if let Some(found) = found {
            assert_eq!(found.signature, only, "{target}");
            assert!(found.rule.starts_with(only.name()), "{target}");
        }
        found.map(|found| found.rule)
    }

    fn assert_rule(only: Signature, rule: &str, targets: &[&str]) {
        for target in targets {
            assert_eq!(rule_of(only, target), Some(rule), "target {target:?}");
            let found = scan_with(all(), target.as_bytes());
            assert!(found.is_some(), "all signatures miss {target:?}");
        }
    }

    fn views(target: &str) -> (String, String) {
        let mut scratch = b"stale contents".to_vec();
        let end = canonicalize(target.as_bytes(), &mut scratch, true, true);
        (
            String::from_utf8_lossy(&scratch[..end]).into_owned(),
            String::from_utf8_lossy(&scratch[end..]).into_owned(),
        )
    }

    #[test]
    fn names_round_trip() {
        for signature in Signature::ALL {
            assert_eq!(Signature::parse(signature.name()), Some(signature));
            assert_eq!(signature.name().parse::<Signature>(), Ok(signature));
            assert_eq!(signature.to_string(), signature.name());
        }
        assert_eq!(Signature::parse("XSS"), None);
        assert_eq!(Signature::parse("sqli"), None);
        let error = "sqli".parse::<Signature>().unwrap_err();
        assert_eq!(error, SignatureError::Unknown("sqli".into()));
        assert!(error.to_string().contains("`sqli`"));
        assert!(SignatureSet::from_names(&["xss", "nope"]).is_err());
        let set = SignatureSet::from_names(&["xss", "nul-byte", "xss"]).unwrap();
        assert_eq!(set.signatures(), &[Signature::Xss, Signature::NulByte]);
    }

    #[test]
    fn rules_are_well_formed() {
        let mut ids: Vec<&str> = RULES.iter().map(|rule| rule.id).collect();
        for rule in RULES {
            assert!(rule.id.starts_with(&format!("{}/", rule.signature.name())));
            assert!(!rule.patterns.is_empty());
            for pattern in rule.patterns {
                assert!(pattern.is_ascii() && !pattern.is_empty(), "{pattern:?}");
            }
        }
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), RULES.len(), "rule ids are unique");
        for signature in Signature::ALL {
            assert!(RULES.iter().any(|rule| rule.signature == signature));
        }
    }

    #[test]
    fn set_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<SignatureSet>();
        assert_send_sync::<Match>();
    }

    #[test]
    fn canonical_views() {
        assert_eq!(views("/a/b").0, "//a/b/");
        assert_eq!(views("..").0, "/../");
        assert_eq!(views("/x?f=..%5c..%5cwin.ini").0, "//x/f/../../win.ini/");
        assert_eq!(views("/%252e%252e%252f").0, "//..//");
        assert_eq!(views("/%25252e").0, "//./");
        assert_eq!(views("/%2525252e").0, "//%2e/", "three rounds at most");
        assert_eq!(views("/%c0%ae%e0%80%ae%c0%af%c1%9c").0, "//..///");
        assert_eq!(views("/%u002E%uFF0E%u005c").0, "//..//");
        assert_eq!(views("/a+b?c+d=%2b").1, "/a+b?c d=");
        assert_eq!(views("/a%2b?x+y").1, "/a+?x y");
        assert_eq!(views("/a%3f+b?c+d").1, "/a?+b?c d");
        assert_eq!(views("/a%252b%3F?q=%252b").0, "//a+//q/ /");
        assert_eq!(views("/a%252b%3F?q=%252b").1, "/a+??q=");
        assert_eq!(views("/q?x=1+union/**/select").1, "/q?x=1 union select");
        assert_eq!(views("/q?x=union%09%0b%0a%20select").1, "/q?x=union select");
        assert_eq!(views("/q?x=/*!50000union*/+select").1, "/q?x=union select");
        assert_eq!(views("/q?x=onerror+=+alert+(1)").1, "/q?x=onerror=alert(1)");
        assert_eq!(views("/q?x=1'+;+drop+table").1, "/q?x=1' ;drop table");
        assert_eq!(views("/a/*/b").1, "/a/ b");
        assert_eq!(views("/a/*x").1, "/a/*x");
        assert_eq!(views("%zz%4%").1, "%zz%4%");
    }

    #[test]
    fn nul_byte() {
        let rule = "nul-byte/nul";
        assert_rule(
            Signature::NulByte,
            rule,
            &[
                "/a%00.png",
                "/a%2500.png",
                "/a?x=%00",
                "/a?x=%252500",
                "/%u0000",
            ],
        );
        assert_eq!(rule_of(Signature::NulByte, "/a\0b"), Some(rule));
        assert_eq!(rule_of(Signature::NulByte, "/a%01b"), None);
    }

    #[test]
    fn path_traversal_dot_dot() {
        assert_rule(
            Signature::PathTraversal,
            "path-traversal/dot-dot-segment",
            &[
                "/static/../../secret",
                "/static/%2e%2e%2fsecret",
                "/static/%2E%2e%2Fsecret",
                "/static/%252e%252e%252fsecret",
                "/static/%25252E%25252E%25252Fsecret",
                "/static/..%2fsecret",
                "/static/..%2Fsecret",
                "/static/%2e%2e/secret",
                "/static/..%5csecret",
                "..%5c",
                "/static/..%255csecret",
                "/static/%c0%ae%c0%ae/secret",
                "/static/%C0%AE%C0%AE%C0%AFsecret",
                "/static/..%e0%80%afsecret",
                "/static/..%c1%9csecret",
                "/static/%u002e%u002e%u002fsecret",
                "/static/%U002E%U002E%U005Csecret",
                "/a/..",
                "/a/%2e%2e",
                "/a/..?x=1",
                "../a",
                "%2e%2e%2fa",
                "/a\\..\\b",
                "/a/..;/b",
                "/x?path=..%2F..%2Fetc%2Fpasswd",
                "/x?file=../../etc/passwd",
                "/x?a=1&b=..",
            ],
        );
    }

    #[test]
    fn path_traversal_sensitive_files() {
        assert_rule(
            Signature::PathTraversal,
            "path-traversal/sensitive-file",
            &[
                "/download?file=%2Fetc%2Fpasswd",
                "/download?file=/etc/passwd",
                "/x/ETC/SHADOW",
                "/x/%252Fetc%252Fshadow",
                "/proc/self/environ",
                "/f?p=C:%5CWindows%5Csystem32",
                "/f?p=c:\\windows\\win.ini",
                "/f?p=C%3A%2Fwindows",
                "/boot.ini",
                "/x/WIN.INI",
            ],
        );
    }

    #[test]
    fn sql_injection() {
        let cases: &[(&str, &[&str])] = &[
            (
                "sql-injection/tautology",
                &[
                    "/x?id=1%27%20OR%20%271%27%3D%271",
                    "/x?id=1' or '1'='1",
                    "/x?id=1%2527%2520or%2520%25271%2527%253D%25271",
                    "/x?id=%22%20or%20%221%22%3D%221",
                    "/x?id=1'+or+1=1",
                    "/x?id=1+or+1=1--",
                    "/x?id=1+OR+1+=+1",
                    "/x?id='or'1'='1",
                    "/x?id=1'/**/or/**/'1'='1",
                ],
            ),
            (
                "sql-injection/union-select",
                &[
                    "/x?id=1+union/**/select+1,2",
                    "/x?id=1%20UNION%20ALL%20SELECT%20null",
                    "/x?id=1%2520UnIoN%2520SeLeCt%25201",
                    "/x?id=1+union++++select",
                    "/x?id=1+union%0aselect",
                    "/x?id=1+union+(select+1)",
                    "/x?id=1+/*!50000union*/+select+1",
                    "/x?id=1union+select+1",
                ],
            ),
            (
                "sql-injection/stacked-query",
                &[
                    "/x?id=1';+drop+table+users",
                    "/x?id=1%27%3B%20DROP%20TABLE%20users",
                    "/x?id=1;drop+database+app",
                    "/x?id=1;%20shutdown",
                ],
            ),
            (
                "sql-injection/comment-terminator",
                &[
                    "/login?user=admin'--",
                    "/login?user=admin%27%20--",
                    "/login?user=admin'%23",
                ],
            ),
            (
                "sql-injection/time-delay",
                &[
                    "/x?id=1+and+sleep(5)",
                    "/x?id=1+AND+SLEEP%285%29",
                    "/x?id=1+and+sleep+(5)",
                    "/x?id=benchmark(1000000,md5(1))",
                    "/x?id=1;waitfor+delay+'0:0:5'",
                    "/x?id=1;select+pg_sleep(5)",
                ],
            ),
            (
                "sql-injection/schema-probe",
                &["/x?t=information_schema.tables", "/x?t=INFORMATION_SCHEMA"],
            ),
            (
                "sql-injection/command-exec",
                &["/x?c=exec+master..xp_cmdshell+'dir'"],
            ),
            (
                "sql-injection/file-access",
                &[
                    "/x?f=load_file('/etc/passwd')",
                    "/x?f=1+into+outfile+'/tmp/x'",
                    "/x?f=1+INTO+DUMPFILE+'/tmp/x'",
                ],
            ),
        ];
        for (rule, targets) in cases {
            assert_rule(Signature::SqlInjection, rule, targets);
        }
    }

    #[test]
    fn xss() {
        let cases: &[(&str, &[&str])] = &[
            (
                "xss/script-tag",
                &[
                    "/x?q=%3Cscript%3Ealert(1)%3C/script%3E",
                    "/x?q=%253Cscript%253E",
                    "/x?q=%3CScRiPt%3E",
                    "/x?q=<SCRIPT+src=//e.example>",
                    "/x?q=%u003cscript%u003e",
                    "/x?q=%3C/script%3E",
                ],
            ),
            (
                "xss/script-url",
                &[
                    "/go?to=javascript%3Aalert(1)",
                    "/go?to=JavaScript:void(0)",
                    "/go?to=vbscript:msgbox",
                    "/go?to=data:text/html;base64,PHNjcmlwdD4=",
                ],
            ),
            (
                "xss/event-handler",
                &[
                    "/x?q=%22%20onerror=alert(1)",
                    "/x?q=%22+onerror+=+x",
                    "/x?q=x%22OnLoad%3Dx",
                    "/x?q=%22onmouseover=x",
                    "/x?q=%22onfocus%20=%20x",
                ],
            ),
            (
                "xss/embedded-element",
                &[
                    "/x?q=%3Ciframe%20src=x%3E",
                    "/x?q=%3Csvg/onload=alert(1)%3E",
                    "/x?q=%3CIMG%20SRC=x%20onerror=y%3E",
                    "/x?q=%253Cbody%2520onload%253Dx%253E",
                ],
            ),
            (
                "xss/script-call",
                &[
                    "/x?q=document.cookie",
                    "/x?q=alert(1)",
                    "/x?q=ALERT%281%29",
                    "/x?q=eval(atob(x))",
                    "/x?q=alert+(1)",
                ],
            ),
            ("xss/srcdoc", &["/x?q=srcdoc=x", "/x?q=SRCDOC%20=%20x"]),
        ];
        for (rule, targets) in cases {
            assert_rule(Signature::Xss, rule, targets);
        }
    }

    #[test]
    fn path_view_is_reported_first() {
        let found = scan_with(all(), b"/x?path=..%2F..%2Fetc%2Fpasswd%00").unwrap();
        assert_eq!(found.rule, "path-traversal/dot-dot-segment");
        let found = scan_with(all(), b"/x?f=load_file('/etc/passwd')").unwrap();
        assert_eq!(found.rule, "path-traversal/sensitive-file");
    }

    #[test]
    fn benign_targets_pass() {
        let long_path = format!("/api/v1/{}", "segment-name_01/".repeat(2000));
        let long_query = format!("/search?{}", "key=value+with+words&".repeat(1000));
        let long_dots = format!("/files/{}", "a..b/".repeat(1000));
        let benign = [
            "/",
            "",
            "/api/v1/orders?id=42&sort=-created",
            "/files/a..b",
            "/v1..2/x",
            "/a/.../b",
            "/a/./b",
            "/search?q=select+a+union+member",
            "/search?q=trade+union+selection",
            "/search?q=drop+the+order+table+by+union",
            "/users/O%27Brien",
            "/users/O'Brien?team=O%27Neill",
            "/search?q=rock+%27n%27+roll",
            "/search?q=I%27m+asleep",
            "/search?q=c%2B%2B+or+rust",
            "/search?q=100%25+cotton",
            "/docs/script-guide",
            "/docs/javascript/intro",
            "/img/logo.svg",
            "/img/body.png",
            "/onload",
            "/events?type=onload",
            "/files/darwin.ini",
            "/api/retrieval(1)",
            "/report?from=2024-01-01&to=2024-02-01&range=1..5",
            "/api/items?filter=price%3E10&expr=a%3Cb",
            "/cb?callback=jQuery123_456&_=1700000000",
            "/a/*/b",
            long_path.as_str(),
            long_query.as_str(),
            long_dots.as_str(),
        ];
        let mut scratch = Vec::new();
        for target in benign {
            assert_eq!(
                all().scan(target.as_bytes(), &mut scratch),
                None,
                "{target:?}"
            );
        }
        // The same scratch still reports a match afterwards.
        let found = all().scan(b"/search?q=union+select", &mut scratch);
        assert_eq!(found.map(|m| m.rule), Some("sql-injection/union-select"));
    }

    #[test]
    fn only_enabled_signatures_report() {
        let xss = SignatureSet::new(&[Signature::Xss]);
        for target in [
            "/x?id=1+union+select+1",
            "/x?id=1'+or+'1'='1",
            "/static/../secret",
            "/a%00",
            "/etc/passwd",
        ] {
            assert_eq!(scan_with(&xss, target.as_bytes()), None, "{target:?}");
        }
        let sql = SignatureSet::new(&[Signature::SqlInjection]);
        assert_eq!(scan_with(&sql, b"/x?q=%3Cscript%3E"), None);
        assert_eq!(scan_with(&sql, b"/static/..%2fsecret"), None);
        let traversal = SignatureSet::new(&[Signature::PathTraversal]);
        assert_eq!(scan_with(&traversal, b"/a%00"), None);
        assert_eq!(scan_with(&traversal, b"/x?q=%3Cscript%3E"), None);
    }

    #[test]
    fn empty_set_never_matches() {
        let empty = SignatureSet::new(&[]);
        assert!(empty.is_empty());
        assert!(empty.signatures().is_empty());
        assert!(!all().is_empty());
        for target in [
            &b"/static/../../etc/passwd%00"[..],
            b"/x?q=%3Cscript%3E",
            b"/x?id=1+union+select+1",
        ] {
            assert_eq!(scan_with(&empty, target), None);
        }
    }

    #[test]
    fn scratch_is_reused() {
        let target = b"/x?q=%253Cscript%253E&id=1+union/**/select";
        let mut scratch = Vec::new();
        let first = all().scan(target, &mut scratch);
        let capacity = scratch.capacity();
        for _ in 0..10 {
            assert_eq!(all().scan(target, &mut scratch), first);
            assert_eq!(all().scan(b"/ok", &mut scratch), None);
            assert_eq!(scratch.capacity(), capacity);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut scratch = Vec::new();
        let sets = [
            all().clone(),
            SignatureSet::new(&[Signature::Xss]),
            SignatureSet::new(&[Signature::NulByte]),
        ];
        let mut check = |target: &[u8]| {
            for set in &sets {
                let _ = set.scan(target, &mut scratch);
            }
        };
        for byte in 0..=u8::MAX {
            check(&[byte]);
            check(&[b'%', byte]);
            check(&[b'%', byte, byte]);
            check(&[b'/', b'?', byte, b'%', b'u', byte]);
            for other in 0..=u8::MAX {
                check(&[byte, other]);
            }
        }
        for fixed in [
            &b"%"[..],
            b"%4",
            b"%zz",
            b"%u",
            b"%u12",
            b"%u12zz",
            b"%uFFFF",
            b"%c0",
            b"%c0%",
            b"%e0%80",
            b"%e0%80%",
            b"/*",
            b"/*!",
            b"/*!123",
            b"*/",
            b"/**/",
            b"?",
            b"??+",
            b"+?+",
            b"\xff\xfe\xc0\xae",
            b"%%%%",
            b"%25%25%25%25",
            b"/\xc0\xae\xc0\xae/",
        ] {
            check(fixed);
        }
        // A small deterministic generator over the characters the decoder cares about.
        const ALPHABET: &[u8] =
            b"%%%%25cCeE0u8aAfF29/\\.?+=&;*! \t\x0b'\"<>()\0\xc0\xae\xe0\x80\xafzZ";
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut target = Vec::new();
        for _ in 0..5000 {
            target.clear();
            let len = (next() % 48) as usize;
            for _ in 0..len {
                let pick = next();
                let byte = if pick % 8 == 0 {
                    (pick >> 8) as u8
                } else {
                    ALPHABET[(pick >> 8) as usize % ALPHABET.len()]
                };
                target.push(byte);
            }
            check(&target);
        }
    }
}
