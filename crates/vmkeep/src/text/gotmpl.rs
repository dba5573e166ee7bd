//! The part of Go's `text/template` language that Lima templates use:
//! `{{.Field}}`, `{{.A.B}}`, `{{if ...}}...{{else if ...}}...{{else}}...{{end}}`,
//! the functions `eq`, `ne`, `not`, `and`, `or` and `json`, string, number and
//! boolean literals, parentheses, `{{- ` / ` -}}` trimming and `{{/* comments */}}`.
//!
//! Lima expands these in provision scripts, probes, mounts, `message` and
//! `limactl list --format`; vmkeep does the same with this module. Anything
//! else (`range`, `with`, pipelines, `printf`, ...) is an error naming the
//! action, never silently printed. A field that does not exist is an error too
//! (Go would print `<no value>`): a misspelt `{{.Param.Key}}` must not turn into
//! an empty string in a root shell script.
//!
//! Written here rather than taken from a crate: the crates implementing Go
//! templates pull in more than this (about 400 lines) and none is widely used.

use std::collections::BTreeMap;
use std::fmt;

/// A value templates can refer to.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
    Map(BTreeMap<String, Value>),
    Null,
}

impl Value {
    fn truthy(&self) -> bool {
        match self {
            Value::Str(s) => !s.is_empty(),
            Value::Int(n) => *n != 0,
            Value::Bool(b) => *b,
            Value::Map(m) => !m.is_empty(),
            Value::Null => false,
        }
    }

    fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Str(s) => serde_json::Value::String(s.clone()),
            Value::Int(n) => serde_json::Value::from(*n),
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Map(m) => {
                serde_json::Value::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
            Value::Null => serde_json::Value::Null,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => f.write_str(s),
            Value::Int(n) => write!(f, "{n}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Map(_) => write!(f, "{}", self.to_json()),
            Value::Null => f.write_str("<no value>"),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(s)
    }
}

/// Why a template could not be expanded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TemplateError {
    #[error("template syntax: {message} (at {{{{{action}}}}})")]
    Syntax { action: String, message: String },
    #[error("{{{{{action}}}}} names nothing: {missing}")]
    Missing { action: String, missing: String },
    #[error("template syntax: {0}")]
    Structure(String),
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    /// `.A.B` (empty: `.` itself)
    Field(Vec<String>),
    Literal(Value),
    Call(String, Vec<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    Print {
        action: String,
        expr: Expr,
    },
    If {
        branches: Vec<(String, Expr, Vec<Node>)>,
        otherwise: Vec<Node>,
    },
}

/// Expand `text` with `data` (the value `.` stands for).
pub fn render(text: &str, data: &Value) -> Result<String, TemplateError> {
    let nodes = parse(text)?;
    let mut out = String::new();
    run(&nodes, data, &mut out)?;
    Ok(out)
}

/// Whether `text` contains template actions at all.
pub fn has_actions(text: &str) -> bool {
    text.contains("{{")
}

/// Check a template for syntax errors without data.
pub fn check(text: &str) -> Result<(), TemplateError> {
    parse(text).map(|_| ())
}

enum Token {
    Text(String),
    Action(String),
}

fn tokenize(text: &str) -> Result<Vec<Token>, TemplateError> {
    let mut tokens = Vec::new();
    let mut rest = text;
    let mut trim_next = false;
    while let Some(open) = rest.find("{{") {
        let mut before = &rest[..open];
        if trim_next {
            before = before.trim_start();
        }
        let after_open = &rest[open + 2..];
        let trim_left = after_open.starts_with("- ") || after_open.starts_with("-\t");
        if trim_left {
            before = before.trim_end();
        }
        if !before.is_empty() {
            tokens.push(Token::Text(before.to_string()));
        }
        let Some(close) = after_open.find("}}") else {
            return Err(TemplateError::Structure(format!(
                "unclosed action {:?}",
                truncate(&rest[open..])
            )));
        };
        let mut inner = &after_open[..close];
        if trim_left {
            inner = &inner[1..];
        }
        trim_next = inner.ends_with(" -") || inner.ends_with("\t-");
        if trim_next {
            inner = &inner[..inner.len() - 1];
        }
        let inner = inner.trim();
        if !(inner.starts_with("/*") && inner.ends_with("*/")) {
            tokens.push(Token::Action(inner.to_string()));
        }
        rest = &after_open[close + 2..];
    }
    let last = if trim_next { rest.trim_start() } else { rest };
    if !last.is_empty() {
        tokens.push(Token::Text(last.to_string()));
    }
    Ok(tokens)
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

fn parse(text: &str) -> Result<Vec<Node>, TemplateError> {
    let tokens = tokenize(text)?;
    let mut at = 0;
    let (nodes, end) = parse_block(&tokens, &mut at)?;
    match end {
        None => Ok(nodes),
        Some(word) => Err(TemplateError::Structure(format!(
            "{{{{{word}}}}} without a matching {{{{if}}}}"
        ))),
    }
}

/// Parse until `{{end}}`/`{{else...}}` (returned) or the end of input (None).
fn parse_block(
    tokens: &[Token],
    at: &mut usize,
) -> Result<(Vec<Node>, Option<String>), TemplateError> {
    let mut nodes = Vec::new();
    while *at < tokens.len() {
        let token = &tokens[*at];
        *at += 1;
        match token {
            Token::Text(text) => nodes.push(Node::Text(text.clone())),
            Token::Action(action) => {
                let word = action.split_whitespace().next().unwrap_or("");
                match word {
                    "end" | "else" => return Ok((nodes, Some(action.clone()))),
                    "if" => nodes.push(parse_if(action, tokens, at)?),
                    "range" | "with" | "define" | "template" | "block" | "break" | "continue" => {
                        return Err(TemplateError::Syntax {
                            action: action.clone(),
                            message: format!(
                                "`{word}` is not supported by vmkeep (only fields, if/else and eq, ne, not, and, or, json)"
                            ),
                        });
                    }
                    _ => nodes.push(Node::Print {
                        action: action.clone(),
                        expr: parse_expr(action)?,
                    }),
                }
            }
        }
    }
    Ok((nodes, None))
}

fn parse_if(first: &str, tokens: &[Token], at: &mut usize) -> Result<Node, TemplateError> {
    let mut branches = Vec::new();
    let mut condition = first.strip_prefix("if").unwrap_or(first).trim().to_string();
    let mut action = first.to_string();
    loop {
        let expr = parse_expr_of(&action, &condition)?;
        let (body, end) = parse_block(tokens, at)?;
        branches.push((action.clone(), expr, body));
        let Some(end) = end else {
            return Err(TemplateError::Structure(format!(
                "{{{{{first}}}}} has no {{{{end}}}}"
            )));
        };
        if end == "end" {
            return Ok(Node::If {
                branches,
                otherwise: Vec::new(),
            });
        }
        let rest = end.trim_start_matches("else").trim();
        if let Some(cond) = rest.strip_prefix("if ") {
            condition = cond.trim().to_string();
            action = end.clone();
            continue;
        }
        if !rest.is_empty() {
            return Err(TemplateError::Syntax {
                action: end.clone(),
                message: "expected {{else}} or {{else if ...}}".into(),
            });
        }
        let (otherwise, close) = parse_block(tokens, at)?;
        if close.as_deref() != Some("end") {
            return Err(TemplateError::Structure(format!(
                "{{{{{first}}}}} has no {{{{end}}}} after its {{{{else}}}}"
            )));
        }
        return Ok(Node::If {
            branches,
            otherwise,
        });
    }
}

fn parse_expr(action: &str) -> Result<Expr, TemplateError> {
    parse_expr_of(action, action)
}

fn parse_expr_of(action: &str, text: &str) -> Result<Expr, TemplateError> {
    let syntax = |message: String| TemplateError::Syntax {
        action: action.to_string(),
        message,
    };
    let words = split_words(text).map_err(&syntax)?;
    let mut at = 0;
    let expr = parse_call(&words, &mut at).map_err(&syntax)?;
    if at != words.len() {
        if words[at] == "|" {
            return Err(syntax("pipelines (`|`) are not supported by vmkeep".into()));
        }
        return Err(syntax(format!("unexpected {:?}", words[at])));
    }
    Ok(expr)
}

/// Words of an action: literals, fields, identifiers, parentheses.
fn split_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '(' || c == ')' {
            words.push(c.to_string());
            chars.next();
        } else if c == '"' || c == '`' {
            let quote = c;
            let mut word = String::from(c);
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                word.push(c);
                if c == '\\' && quote == '"' {
                    if let Some(next) = chars.next() {
                        word.push(next);
                    }
                } else if c == quote {
                    closed = true;
                    break;
                }
            }
            if !closed {
                return Err(format!("unterminated string {word}"));
            }
            words.push(word);
        } else {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == '(' || c == ')' {
                    break;
                }
                word.push(c);
                chars.next();
            }
            words.push(word);
        }
    }
    Ok(words)
}

const FUNCTIONS: [&str; 6] = ["eq", "ne", "not", "and", "or", "json"];

fn parse_call(words: &[String], at: &mut usize) -> Result<Expr, String> {
    let Some(first) = words.get(*at) else {
        return Err("empty action".into());
    };
    if FUNCTIONS.contains(&first.as_str()) {
        *at += 1;
        let mut args = Vec::new();
        while *at < words.len() && words[*at] != ")" {
            args.push(parse_operand(words, at)?);
        }
        return Ok(Expr::Call(first.clone(), args));
    }
    parse_operand(words, at)
}

fn parse_operand(words: &[String], at: &mut usize) -> Result<Expr, String> {
    let word = words.get(*at).ok_or("missing operand")?.clone();
    *at += 1;
    if word == "(" {
        let inner = parse_call(words, at)?;
        if words.get(*at).map(String::as_str) != Some(")") {
            return Err("missing )".into());
        }
        *at += 1;
        return Ok(inner);
    }
    if word == "|" || word.contains('|') && !word.starts_with(['"', '`']) {
        return Err("pipelines (`|`) are not supported by vmkeep".into());
    }
    if let Some(path) = word.strip_prefix('.') {
        if path.is_empty() {
            return Ok(Expr::Field(Vec::new()));
        }
        let parts: Vec<String> = path.split('.').map(str::to_string).collect();
        if parts
            .iter()
            .any(|p| p.is_empty() || !p.chars().all(|c| c.is_alphanumeric() || c == '_'))
        {
            return Err(format!("{word} is not a field name"));
        }
        return Ok(Expr::Field(parts));
    }
    if word.starts_with('"') {
        return serde_json::from_str::<String>(&word)
            .map(|s| Expr::Literal(Value::Str(s)))
            .map_err(|_| format!("bad string {word}"));
    }
    if let Some(raw) = word.strip_prefix('`') {
        return Ok(Expr::Literal(Value::Str(
            raw.strip_suffix('`').unwrap_or(raw).to_string(),
        )));
    }
    match word.as_str() {
        "true" => return Ok(Expr::Literal(Value::Bool(true))),
        "false" => return Ok(Expr::Literal(Value::Bool(false))),
        "nil" => return Ok(Expr::Literal(Value::Null)),
        _ => {}
    }
    if let Ok(n) = word.parse::<i64>() {
        return Ok(Expr::Literal(Value::Int(n)));
    }
    if FUNCTIONS.contains(&word.as_str()) {
        return Err(format!("{word} needs parentheses here: ({word} ...)"));
    }
    Err(format!(
        "unknown function or word {word:?} (vmkeep knows eq, ne, not, and, or, json)"
    ))
}

fn run(nodes: &[Node], data: &Value, out: &mut String) -> Result<(), TemplateError> {
    for node in nodes {
        match node {
            Node::Text(text) => out.push_str(text),
            Node::Print { action, expr } => {
                out.push_str(&eval(action, expr, data)?.to_string());
            }
            Node::If {
                branches,
                otherwise,
            } => {
                let mut taken = false;
                for (action, cond, body) in branches {
                    if eval(action, cond, data)?.truthy() {
                        run(body, data, out)?;
                        taken = true;
                        break;
                    }
                }
                if !taken {
                    run(otherwise, data, out)?;
                }
            }
        }
    }
    Ok(())
}

fn eval(action: &str, expr: &Expr, data: &Value) -> Result<Value, TemplateError> {
    match expr {
        Expr::Literal(v) => Ok(v.clone()),
        Expr::Field(path) => {
            let mut current = data;
            for (i, part) in path.iter().enumerate() {
                let found = match current {
                    Value::Map(map) => map.get(part),
                    _ => None,
                };
                current = found.ok_or_else(|| TemplateError::Missing {
                    action: action.to_string(),
                    missing: missing_message(&path[..=i], current),
                })?;
            }
            Ok(current.clone())
        }
        Expr::Call(name, args) => {
            let values = args
                .iter()
                .map(|a| eval(action, a, data))
                .collect::<Result<Vec<_>, _>>()?;
            let arity = |n: usize| {
                if values.len() < n {
                    Err(TemplateError::Syntax {
                        action: action.to_string(),
                        message: format!("{name} needs {n} argument(s)"),
                    })
                } else {
                    Ok(())
                }
            };
            match name.as_str() {
                "eq" => {
                    arity(2)?;
                    Ok(Value::Bool(values[1..].iter().any(|v| same(&values[0], v))))
                }
                "ne" => {
                    arity(2)?;
                    Ok(Value::Bool(!same(&values[0], &values[1])))
                }
                "not" => {
                    arity(1)?;
                    Ok(Value::Bool(!values[0].truthy()))
                }
                "and" => {
                    arity(1)?;
                    Ok(values
                        .iter()
                        .find(|v| !v.truthy())
                        .unwrap_or(&values[values.len() - 1])
                        .clone())
                }
                "or" => {
                    arity(1)?;
                    Ok(values
                        .iter()
                        .find(|v| v.truthy())
                        .unwrap_or(&values[values.len() - 1])
                        .clone())
                }
                "json" => {
                    arity(1)?;
                    Ok(Value::Str(values[0].to_json().to_string()))
                }
                other => Err(TemplateError::Syntax {
                    action: action.to_string(),
                    message: format!("unknown function {other}"),
                }),
            }
        }
    }
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Str(x), Value::Int(n)) | (Value::Int(n), Value::Str(x)) => x == &n.to_string(),
        _ => a == b,
    }
}

fn missing_message(path: &[String], parent: &Value) -> String {
    let name = format!(".{}", path.join("."));
    match parent {
        Value::Map(map) if !map.is_empty() => {
            let known: Vec<&str> = map.keys().map(String::as_str).collect();
            let last = path.last().map(String::as_str).unwrap_or("");
            match crate::text::suggest::closest(last, known.iter().copied()) {
                Some(near) => format!("{name} does not exist; did you mean {near}?"),
                None => format!("{name} does not exist; known here: {}", known.join(", ")),
            }
        }
        Value::Map(_) => format!("{name} does not exist (nothing is defined there)"),
        _ => format!("{name} does not exist"),
    }
}

/// Build a map value from pairs.
pub fn map<K: Into<String>>(pairs: impl IntoIterator<Item = (K, Value)>) -> Value {
    Value::Map(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> Value {
        map([
            ("Name", Value::from("docker")),
            ("Dir", Value::from("/h/.vmkeep/docker")),
            ("UID", Value::Int(1000)),
            ("HostOS", Value::from("linux")),
            (
                "Param",
                map([
                    ("containerdSnapshotter", Value::from("false")),
                    ("Empty", Value::from("")),
                ]),
            ),
        ])
    }

    #[test]
    fn fields_and_nested_fields_expand() {
        let out = render(
            "unix://{{.Dir}}/sock/{{ .Name }}.sock uid={{.UID}} {{.Param.containerdSnapshotter}}",
            &data(),
        )
        .unwrap();
        assert_eq!(
            out,
            "unix:///h/.vmkeep/docker/sock/docker.sock uid=1000 false"
        );
        assert_eq!(render("no actions {x}", &data()).unwrap(), "no actions {x}");
    }

    #[test]
    fn if_else_and_comparisons_work_as_in_go() {
        let t = r#"podman{{if eq .HostOS "linux"}} --remote{{end}} run"#;
        assert_eq!(render(t, &data()).unwrap(), "podman --remote run");
        let t = r#"{{if eq .HostOS "darwin"}}mac{{else if ne .UID 0}}user{{else}}root{{end}}"#;
        assert_eq!(render(t, &data()).unwrap(), "user");
        let t = r#"{{if not .Param.Empty}}empty{{else}}set{{end}}"#;
        assert_eq!(render(t, &data()).unwrap(), "empty");
        let t = r#"{{if and (eq .Name "docker") (eq .UID 1000)}}yes{{end}}"#;
        assert_eq!(render(t, &data()).unwrap(), "yes");
        let t = r#"{{if or .Param.Empty .Name}}{{.Name}}{{end}}"#;
        assert_eq!(render(t, &data()).unwrap(), "docker");
    }

    #[test]
    fn trimming_markers_and_comments() {
        let t = "a  {{- .Name -}}  b {{/* a comment */}}c";
        assert_eq!(render(t, &data()).unwrap(), "adockerb c");
    }

    #[test]
    fn json_prints_a_value_as_json() {
        assert_eq!(
            render("{{json .Param}}", &data()).unwrap(),
            r#"{"Empty":"","containerdSnapshotter":"false"}"#
        );
    }

    #[test]
    fn a_missing_field_is_an_error_with_a_suggestion() {
        let err = render("x {{.Param.containerdSnapshoter}}", &data()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(".Param.containerdSnapshoter") && text.contains("containerdSnapshotter"),
            "{text}"
        );
        let err = render("{{.Nope}}", &data()).unwrap_err();
        assert!(matches!(err, TemplateError::Missing { .. }), "{err}");
    }

    #[test]
    fn unsupported_and_malformed_actions_are_errors() {
        for (t, says) in [
            ("{{range .Param}}x{{end}}", "range"),
            ("{{.Name | printf \"%s\"}}", "pipelines"),
            ("{{if .Name}}x", "no {{end}}"),
            ("x{{end}}", "without a matching"),
            ("{{.Name", "unclosed"),
            ("{{printf \"%d\" 1}}", "unknown function"),
        ] {
            let err = render(t, &data()).unwrap_err().to_string();
            assert!(err.contains(says), "{t}: {err}");
        }
    }
}
