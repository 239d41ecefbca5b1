//! `google.api.http` path templates: parsing and matching.
//!
//! Grammar (from `google/api/http.proto`):
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! FieldPath = IDENT { "." IDENT } ;
//! Verb     = ":" LITERAL ;
//! ```
//! `{var}` is `{var=*}`. `**` matches zero or more segments and must be the last segment.

use percent_encoding::percent_decode_str;

/// One segment of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Literal(String),
    /// `*`: exactly one non-empty segment.
    Single,
    /// `**`: zero or more segments (last only).
    Multi,
}

/// A variable: a field path bound to the segments `start..end` of the template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Variable {
    pub field_path: Vec<String>,
    pub start: usize,
    pub end: usize,
}

/// A parsed path template.
#[derive(Debug, Clone)]
pub(crate) struct PathTemplate {
    pub segments: Vec<Segment>,
    pub variables: Vec<Variable>,
    pub verb: Option<String>,
}

/// Values captured by a match: `(field path, decoded value)`.
pub(crate) type Captures = Vec<(Vec<String>, String)>;

impl PathTemplate {
    pub fn parse(source: &str) -> Result<Self, String> {
        let rest = source
            .strip_prefix('/')
            .ok_or_else(|| format!("path template `{source}` must start with `/`"))?;
        let mut parser = Parser {
            chars: rest.chars().collect(),
            pos: 0,
            segments: Vec::new(),
            variables: Vec::new(),
        };
        parser.segments_until(None, false)?;
        let mut verb = None;
        if parser.peek() == Some(':') {
            parser.pos += 1;
            let literal: String = parser.chars[parser.pos..].iter().collect();
            if literal.is_empty() || literal.contains(['/', '{', '}', '*']) {
                return Err(format!("bad verb in path template `{source}`"));
            }
            parser.pos = parser.chars.len();
            verb = Some(literal);
        }
        if parser.pos != parser.chars.len() {
            return Err(format!("unexpected characters in path template `{source}`"));
        }
        if let Some(i) = parser.segments.iter().position(|s| *s == Segment::Multi) {
            if i + 1 != parser.segments.len() {
                return Err(format!(
                    "`**` must be the last segment of path template `{source}`"
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for var in &parser.variables {
            if !seen.insert(var.field_path.join(".")) {
                return Err(format!(
                    "field `{}` bound twice in path template `{source}`",
                    var.field_path.join(".")
                ));
            }
        }
        Ok(Self {
            segments: parser.segments,
            variables: parser.variables,
            verb,
        })
    }

    /// Number of literal segments (plus one for a verb): the more, the more specific.
    pub fn specificity(&self) -> (usize, usize, usize) {
        let literals = self
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        let singles = self
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Single))
            .count();
        (usize::from(self.verb.is_some()), literals, singles)
    }

    /// Matches a request path (still percent-encoded, without the query string).
    pub fn matches(&self, path: &str) -> Option<Captures> {
        let rest = path.strip_prefix('/')?;
        let rest = match &self.verb {
            Some(verb) => {
                let stripped = rest.strip_suffix(verb.as_str())?.strip_suffix(':')?;
                stripped
            }
            None => rest,
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let has_multi = self.segments.last() == Some(&Segment::Multi);
        if has_multi {
            if parts.len() + 1 < self.segments.len() {
                return None;
            }
        } else if parts.len() != self.segments.len() {
            return None;
        }
        // Spans of request parts covered by each template segment.
        let mut spans = Vec::with_capacity(self.segments.len());
        for (i, seg) in self.segments.iter().enumerate() {
            match seg {
                Segment::Literal(lit) => {
                    let part = parts.get(i)?;
                    if decode(part) != *lit {
                        return None;
                    }
                    spans.push((i, i + 1));
                }
                Segment::Single => {
                    let part = parts.get(i)?;
                    if part.is_empty() {
                        return None;
                    }
                    spans.push((i, i + 1));
                }
                Segment::Multi => {
                    // Zero or more trailing segments; an empty path tail (`a/`) counts as none.
                    let end = if parts.len() == i + 1 && parts[i].is_empty() {
                        i
                    } else {
                        parts.len()
                    };
                    spans.push((i.min(end), end));
                }
            }
        }
        let mut captures = Vec::with_capacity(self.variables.len());
        for var in &self.variables {
            let from = spans[var.start].0;
            let to = spans[var.end - 1].1;
            let single = var.end - var.start == 1 && self.segments[var.start] == Segment::Single;
            let value = if single {
                decode(parts[from])
            } else {
                // Multi-segment values keep `/` as separators; `%2F` inside a segment stays
                // encoded (reserved expansion, as grpc-gateway and Envoy do).
                parts[from..to]
                    .iter()
                    .map(|p| decode_keep_slash(p))
                    .collect::<Vec<_>>()
                    .join("/")
            };
            captures.push((var.field_path.clone(), value));
        }
        Some(captures)
    }

    /// The template in OpenAPI path syntax: `{field.path}` for each variable, literals kept,
    /// the verb appended (`/v1/{name}:verb`).
    pub fn openapi_path(&self) -> String {
        let mut out = String::new();
        let mut i = 0;
        while i < self.segments.len() {
            out.push('/');
            if let Some(var) = self.variables.iter().find(|v| v.start == i) {
                out.push('{');
                out.push_str(&var.field_path.join("."));
                out.push('}');
                i = var.end;
                continue;
            }
            match &self.segments[i] {
                Segment::Literal(l) => out.push_str(l),
                Segment::Single => out.push('*'),
                Segment::Multi => out.push_str("**"),
            }
            i += 1;
        }
        if let Some(verb) = &self.verb {
            out.push(':');
            out.push_str(verb);
        }
        out
    }

    /// The segment pattern bound to a variable, as written (`projects/*/things/**`).
    pub fn variable_pattern(&self, var: &Variable) -> String {
        self.segments[var.start..var.end]
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => l.as_str(),
                Segment::Single => "*",
                Segment::Multi => "**",
            })
            .collect::<Vec<_>>()
            .join("/")
    }
}

fn decode(s: &str) -> String {
    percent_decode_str(s).decode_utf8_lossy().into_owned()
}

fn decode_keep_slash(s: &str) -> String {
    s.split("%2F")
        .flat_map(|p| p.split("%2f"))
        .map(decode)
        .collect::<Vec<_>>()
        .join("%2F")
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    /// Parses segments until `end` (`}`) or, at top level, a `:` verb or the end.
    fn segments_until(&mut self, end: Option<char>, in_var: bool) -> Result<(), String> {
        loop {
            self.segment(in_var)?;
            match self.peek() {
                Some('/') => self.pos += 1,
                c if c == end => return Ok(()),
                Some(':') if end.is_none() => return Ok(()),
                None if end.is_none() => return Ok(()),
                Some(c) => return Err(format!("unexpected `{c}` in path template")),
                None => return Err("unterminated variable in path template".into()),
            }
        }
    }

    fn segment(&mut self, in_var: bool) -> Result<(), String> {
        match self.peek() {
            Some('{') => {
                if in_var {
                    return Err("nested variables are not allowed in path templates".into());
                }
                self.pos += 1;
                let mut path = String::new();
                while let Some(c) = self.peek() {
                    if c == '=' || c == '}' {
                        break;
                    }
                    path.push(c);
                    self.pos += 1;
                }
                let field_path: Vec<String> = path.split('.').map(str::to_owned).collect();
                if field_path.iter().any(|p| {
                    p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                }) {
                    return Err(format!("bad field path `{path}` in path template"));
                }
                let start = self.segments.len();
                match self.peek() {
                    Some('=') => {
                        self.pos += 1;
                        self.segments_until(Some('}'), true)?;
                    }
                    Some('}') => self.segments.push(Segment::Single),
                    _ => return Err("unterminated variable in path template".into()),
                }
                self.pos += 1; // `}`
                self.variables.push(Variable {
                    field_path,
                    start,
                    end: self.segments.len(),
                });
                Ok(())
            }
            Some('*') => {
                self.pos += 1;
                if self.peek() == Some('*') {
                    self.pos += 1;
                    self.segments.push(Segment::Multi);
                } else {
                    self.segments.push(Segment::Single);
                }
                Ok(())
            }
            _ => {
                let mut lit = String::new();
                while let Some(c) = self.peek() {
                    if matches!(c, '/' | '{' | '}' | ':' | '*' | '=') {
                        break;
                    }
                    lit.push(c);
                    self.pos += 1;
                }
                if lit.is_empty() {
                    return Err("empty segment in path template".into());
                }
                self.segments.push(Segment::Literal(lit));
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(t: &str, p: &str) -> Option<Vec<(String, String)>> {
        PathTemplate::parse(t)
            .unwrap()
            .matches(p)
            .map(|c| c.into_iter().map(|(k, v)| (k.join("."), v)).collect())
    }

    #[test]
    fn simple_variables() {
        assert_eq!(
            cap(
                "/v1/tenants/{tenant_id}/things/{thing_id}",
                "/v1/tenants/t1/things/a%20b"
            ),
            Some(vec![
                ("tenant_id".into(), "t1".into()),
                ("thing_id".into(), "a b".into())
            ])
        );
        assert_eq!(cap("/v1/tenants/{tenant_id}", "/v1/tenants/"), None);
        assert_eq!(cap("/v1/tenants/{tenant_id}", "/v1/tenants/a/b"), None);
    }

    #[test]
    fn verbs() {
        let t = "/v1/tenants/{tenant_id}:suspend";
        assert_eq!(
            cap(t, "/v1/tenants/abc:suspend"),
            Some(vec![("tenant_id".into(), "abc".into())])
        );
        assert_eq!(cap(t, "/v1/tenants/abc"), None);
        assert_eq!(cap(t, "/v1/tenants/abc:resume"), None);
        assert_eq!(
            cap("/v1/tenants/{tenant_id}", "/v1/tenants/abc:resume"),
            Some(vec![("tenant_id".into(), "abc:resume".into())])
        );
        assert_eq!(
            cap("/v1/things:batchGet", "/v1/things:batchGet"),
            Some(vec![])
        );
    }

    #[test]
    fn multi_segment() {
        let t = "/v1/{name=projects/*/things/**}";
        assert_eq!(
            cap(t, "/v1/projects/p1/things/a/b/c"),
            Some(vec![("name".into(), "projects/p1/things/a/b/c".into())])
        );
        assert_eq!(
            cap(t, "/v1/projects/p1/things"),
            Some(vec![("name".into(), "projects/p1/things".into())])
        );
        assert_eq!(cap(t, "/v1/projects/p1/other/a"), None);
        let parsed = PathTemplate::parse(t).unwrap();
        assert_eq!(parsed.openapi_path(), "/v1/{name}");
        assert_eq!(
            parsed.variable_pattern(&parsed.variables[0]),
            "projects/*/things/**"
        );
    }

    #[test]
    fn nested_fields_and_errors() {
        assert_eq!(
            cap("/v1/{a.b}/x", "/v1/q/x"),
            Some(vec![("a.b".into(), "q".into())])
        );
        assert!(PathTemplate::parse("v1/x").is_err());
        assert!(PathTemplate::parse("/v1/**/x").is_err());
        assert!(PathTemplate::parse("/v1/{a}/{a}").is_err());
        assert!(PathTemplate::parse("/v1/{a=b/{c}}").is_err());
        assert!(PathTemplate::parse("/v1/{a").is_err());
    }
}
