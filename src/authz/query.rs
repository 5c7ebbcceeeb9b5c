//! Azure Event Grid client-group queries: the parser and the evaluator. Pure: a query is
//! parsed once at load and evaluated once per client at CONNECT, never per packet.
//!
//! The language, as Azure documents it ("Client groups"): operands `authenticationName` and
//! `attributes.<key>`; string literals in single or double quotes; integers; `=`, `<>`,
//! `!=`, `<`, `>`, `<=`, `>=` (the orderings "for long integer values"), `IN [..]`; `and`,
//! `or` (case-insensitive, `and` binding tighter) and parentheses. Azure has no `not` and
//! no `NOT IN`, so neither is accepted: a query that loads here loads in Azure.
//!
//! Where Azure's documentation is silent, these are the choices (each fails closed: a
//! client is in fewer groups, never more):
//! - A missing attribute makes every comparison on it false, `<>` included.
//! - Types never convert: the string `"3"` is not the integer `3`; a comparison between a
//!   string and an integer is false, `<>` included. A boolean attribute (the registry
//!   accepts them; Azure's attributes are strings, integers and string arrays) compares
//!   false with everything, as the language has no boolean literal.
//! - An array attribute (`"sensors": ["motion", "noise"]`) holds `=` and `IN` when any
//!   element does (Azure's own example queries `attributes.sensors = "motion"` against such
//!   a client). `<>` / `!=` are the negation of `=`: they hold when no element is equal,
//!   so `attributes.sensors <> 'motion'` means "has no motion sensor"; an empty array holds
//!   `<>` for every string. Orderings never hold on arrays (they hold strings).
//! - Comparisons are case-sensitive, `authenticationName` included (Azure uses the name's
//!   original case for topic-space matching and does not say otherwise for queries).
//! - Literals have no escapes: a string cannot hold its own quote, so `"it's"` is
//!   written with the other quote.
//! - Statically impossible comparisons are load errors rather than "never true": an
//!   ordering against a string literal, and `authenticationName` against an integer or with
//!   an ordering.

use thiserror::Error;

use super::Facts;
use crate::trust::registry::AttributeValue;

/// Longest query accepted, in bytes. Azure's own limit is not documented; real queries are
/// a line, and the bound keeps a hostile file's parse and tree small.
pub const MAX_QUERY_BYTES: usize = 2048;

/// Deepest parenthesis nesting accepted; the parser recurses once per level.
pub const MAX_DEPTH: usize = 32;

/// A parsed client-group query.
#[derive(Clone, Debug, PartialEq)]
pub struct Query(Expr);

#[derive(Clone, Debug, PartialEq)]
enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Compare {
        operand: Operand,
        op: Op,
        value: Literal,
    },
    In {
        operand: Operand,
        values: Vec<Literal>,
    },
}

#[derive(Clone, Debug, PartialEq)]
enum Operand {
    AuthenticationName,
    Attribute(String),
}

#[derive(Clone, Debug, PartialEq)]
enum Literal {
    Str(String),
    Int(i64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
}

impl Op {
    fn is_ordering(self) -> bool {
        !matches!(self, Op::Eq | Op::Ne)
    }
}

/// Why a query does not parse. `column` counts characters from 1, so an operator can put
/// a caret under it.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum QueryError {
    #[error("query is {len} bytes, over the limit of {MAX_QUERY_BYTES}")]
    TooLong { len: usize },
    #[error("column {column}: parentheses nested deeper than {MAX_DEPTH}")]
    TooDeep { column: usize },
    #[error("column {column}: expected {expected}, found {found}")]
    Unexpected {
        column: usize,
        expected: &'static str,
        found: String,
    },
}

impl QueryError {
    /// The 1-based character column the error is at, when it is at one.
    pub fn column(&self) -> Option<usize> {
        match self {
            QueryError::TooLong { .. } => None,
            QueryError::TooDeep { column } | QueryError::Unexpected { column, .. } => Some(*column),
        }
    }
}

impl Query {
    pub fn parse(text: &str) -> Result<Query, QueryError> {
        if text.len() > MAX_QUERY_BYTES {
            return Err(QueryError::TooLong { len: text.len() });
        }
        let tokens = lex(text)?;
        let mut parser = Parser {
            text,
            tokens: &tokens,
            at: 0,
            depth: 0,
        };
        let expr = parser.or()?;
        match parser.peek() {
            Tok::End => Ok(Query(expr)),
            _ => Err(parser.unexpected("'and', 'or' or the end of the query")),
        }
    }

    /// Whether a client with these facts is in the group.
    pub fn matches(&self, facts: &Facts<'_>) -> bool {
        eval(&self.0, facts)
    }
}

fn eval(expr: &Expr, facts: &Facts<'_>) -> bool {
    match expr {
        Expr::Or(terms) => terms.iter().any(|e| eval(e, facts)),
        Expr::And(terms) => terms.iter().all(|e| eval(e, facts)),
        Expr::Compare { operand, op, value } => compare(operand, *op, value, facts),
        Expr::In { operand, values } => values.iter().any(|v| compare(operand, Op::Eq, v, facts)),
    }
}

/// One comparison under the rules in the module header.
fn compare(operand: &Operand, op: Op, literal: &Literal, facts: &Facts<'_>) -> bool {
    let value = match operand {
        Operand::AuthenticationName => {
            return match literal {
                Literal::Str(l) => string_holds(facts.authentication_name, op, l),
                Literal::Int(_) => false,
            };
        }
        Operand::Attribute(key) => match facts.attribute(key) {
            Some(value) => value,
            None => return false,
        },
    };
    match (value, literal) {
        (AttributeValue::String(s), Literal::Str(l)) => string_holds(s, op, l),
        (AttributeValue::Int(i), Literal::Int(l)) => match op {
            Op::Eq => i == l,
            Op::Ne => i != l,
            Op::Lt => i < l,
            Op::Gt => i > l,
            Op::Le => i <= l,
            Op::Ge => i >= l,
        },
        (AttributeValue::Strings(items), Literal::Str(l)) => match op {
            Op::Eq => items.iter().any(|s| s == l),
            Op::Ne => !items.iter().any(|s| s == l),
            _ => false,
        },
        _ => false,
    }
}

fn string_holds(s: &str, op: Op, literal: &str) -> bool {
    match op {
        Op::Eq => s == literal,
        Op::Ne => s != literal,
        // Rejected at parse; strings have no order in Azure's language.
        _ => false,
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok<'q> {
    /// A run of letters, digits, `_`, `.` and `$`: a keyword or an operand.
    Word(&'q str),
    Str(&'q str),
    Int(i64),
    Op(Op),
    Open,
    Close,
    OpenBracket,
    CloseBracket,
    Comma,
    End,
}

impl Tok<'_> {
    fn describe(&self) -> String {
        match self {
            Tok::Word(w) => format!("'{w}'"),
            Tok::Str(_) => "a string".into(),
            Tok::Int(_) => "a number".into(),
            Tok::Op(op) => format!(
                "'{}'",
                match op {
                    Op::Eq => "=",
                    Op::Ne => "<>",
                    Op::Lt => "<",
                    Op::Gt => ">",
                    Op::Le => "<=",
                    Op::Ge => ">=",
                }
            ),
            Tok::Open => "'('".into(),
            Tok::Close => "')'".into(),
            Tok::OpenBracket => "'['".into(),
            Tok::CloseBracket => "']'".into(),
            Tok::Comma => "','".into(),
            Tok::End => "the end of the query".into(),
        }
    }

    fn is_keyword(&self, keyword: &str) -> bool {
        matches!(self, Tok::Word(w) if w.eq_ignore_ascii_case(keyword))
    }
}

fn column(text: &str, offset: usize) -> usize {
    text[..offset].chars().count() + 1
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '$')
}

/// The whole query as tokens with their byte offsets; the query is bounded, so holding
/// them all is cheap and lets the parser look one token ahead without a lexer state.
fn lex(text: &str) -> Result<Vec<(usize, Tok<'_>)>, QueryError> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(at, c)) = chars.peek() {
        let unexpected = |expected, found: String| QueryError::Unexpected {
            column: column(text, at),
            expected,
            found,
        };
        chars.next();
        let next_is = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>, want| {
            chars.next_if(|&(_, n)| n == want).is_some()
        };
        let tok = match c {
            c if c.is_whitespace() => continue,
            '(' => Tok::Open,
            ')' => Tok::Close,
            '[' => Tok::OpenBracket,
            ']' => Tok::CloseBracket,
            ',' => Tok::Comma,
            '=' => Tok::Op(Op::Eq),
            '!' if next_is(&mut chars, '=') => Tok::Op(Op::Ne),
            '<' if next_is(&mut chars, '>') => Tok::Op(Op::Ne),
            '<' if next_is(&mut chars, '=') => Tok::Op(Op::Le),
            '<' => Tok::Op(Op::Lt),
            '>' if next_is(&mut chars, '=') => Tok::Op(Op::Ge),
            '>' => Tok::Op(Op::Gt),
            '\'' | '"' => {
                let start = at + 1;
                match chars.find(|&(_, n)| n == c) {
                    Some((end, _)) => Tok::Str(&text[start..end]),
                    None => {
                        return Err(unexpected(
                            "a closing quote for the string starting here",
                            "the end of the query".into(),
                        ))
                    }
                }
            }
            '-' | '0'..='9' => {
                let mut end = at + c.len_utf8();
                while let Some((i, d)) = chars.next_if(|&(_, d)| d.is_ascii_digit()) {
                    end = i + d.len_utf8();
                }
                let digits = &text[at..end];
                if digits == "-" {
                    return Err(unexpected("a digit after '-'", describe_char(text, end)));
                }
                match digits.parse::<i64>() {
                    Ok(n) => Tok::Int(n),
                    Err(_) => {
                        return Err(unexpected(
                            "an integer in the 64-bit range",
                            format!("'{digits}'"),
                        ))
                    }
                }
            }
            c if is_word_char(c) => {
                let mut end = at + c.len_utf8();
                while let Some((i, d)) = chars.next_if(|&(_, d)| is_word_char(d)) {
                    end = i + d.len_utf8();
                }
                Tok::Word(&text[at..end])
            }
            _ => {
                return Err(unexpected(
                    "an operand, a value, an operator or a bracket",
                    format!("{c:?}"),
                ))
            }
        };
        tokens.push((at, tok));
    }
    tokens.push((text.len(), Tok::End));
    Ok(tokens)
}

fn describe_char(text: &str, offset: usize) -> String {
    match text[offset..].chars().next() {
        Some(c) => format!("{c:?}"),
        None => "the end of the query".into(),
    }
}

struct Parser<'t, 'q> {
    text: &'q str,
    tokens: &'t [(usize, Tok<'q>)],
    at: usize,
    depth: usize,
}

impl<'q> Parser<'_, 'q> {
    fn peek(&self) -> &Tok<'q> {
        &self.tokens[self.at].1
    }

    fn bump(&mut self) -> Tok<'q> {
        let tok = self.tokens[self.at].1.clone();
        // `End` is last and stays current, so a parser at the end keeps seeing it.
        if self.at + 1 < self.tokens.len() {
            self.at += 1;
        }
        tok
    }

    fn column(&self) -> usize {
        column(self.text, self.tokens[self.at].0)
    }

    fn unexpected(&self, expected: &'static str) -> QueryError {
        QueryError::Unexpected {
            column: self.column(),
            expected,
            found: self.peek().describe(),
        }
    }

    fn or(&mut self) -> Result<Expr, QueryError> {
        let mut terms = vec![self.and()?];
        while self.peek().is_keyword("or") {
            self.bump();
            terms.push(self.and()?);
        }
        Ok(if terms.len() == 1 {
            terms.pop().expect("one term")
        } else {
            Expr::Or(terms)
        })
    }

    fn and(&mut self) -> Result<Expr, QueryError> {
        let mut terms = vec![self.atom()?];
        while self.peek().is_keyword("and") {
            self.bump();
            terms.push(self.atom()?);
        }
        Ok(if terms.len() == 1 {
            terms.pop().expect("one term")
        } else {
            Expr::And(terms)
        })
    }

    fn atom(&mut self) -> Result<Expr, QueryError> {
        if *self.peek() == Tok::Open {
            if self.depth == MAX_DEPTH {
                return Err(QueryError::TooDeep {
                    column: self.column(),
                });
            }
            self.bump();
            self.depth += 1;
            let inner = self.or()?;
            self.depth -= 1;
            if *self.peek() != Tok::Close {
                return Err(self.unexpected("')', 'and' or 'or'"));
            }
            self.bump();
            return Ok(inner);
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr, QueryError> {
        let operand = self.operand()?;
        let is_name = operand == Operand::AuthenticationName;
        if self.peek().is_keyword("in") {
            self.bump();
            if *self.peek() != Tok::OpenBracket {
                return Err(self.unexpected("'[' starting the list of values"));
            }
            self.bump();
            let mut values = vec![self.literal(is_name)?];
            loop {
                match self.peek() {
                    Tok::Comma => {
                        self.bump();
                        values.push(self.literal(is_name)?);
                    }
                    Tok::CloseBracket => {
                        self.bump();
                        return Ok(Expr::In { operand, values });
                    }
                    _ => return Err(self.unexpected("',' or ']'")),
                }
            }
        }
        let op = match self.peek() {
            Tok::Op(op) => *op,
            _ => return Err(self.unexpected("an operator (=, <>, !=, <, >, <=, >=, IN)")),
        };
        if is_name && op.is_ordering() {
            return Err(self.unexpected("=, <>, != or IN (authenticationName is a string)"));
        }
        self.bump();
        let value = if op.is_ordering() {
            match self.peek() {
                Tok::Int(n) => {
                    let n = *n;
                    self.bump();
                    Literal::Int(n)
                }
                _ => return Err(self.unexpected("an integer (orderings compare integers)")),
            }
        } else {
            self.literal(is_name)?
        };
        Ok(Expr::Compare { operand, op, value })
    }

    fn operand(&mut self) -> Result<Operand, QueryError> {
        const EXPECTED: &str = "authenticationName, attributes.<key> or '('";
        let Tok::Word(word) = *self.peek() else {
            return Err(self.unexpected(EXPECTED));
        };
        let operand = if word == "authenticationName" {
            Operand::AuthenticationName
        } else if let Some(key) = word.strip_prefix("attributes.") {
            // Azure's attribute keys: letters, digits and underscores.
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(self.unexpected(
                    "an attribute key of letters, digits and underscores after 'attributes.'",
                ));
            }
            Operand::Attribute(key.to_string())
        } else {
            return Err(self.unexpected(EXPECTED));
        };
        self.bump();
        Ok(operand)
    }

    fn literal(&mut self, string_only: bool) -> Result<Literal, QueryError> {
        let literal = match self.peek() {
            Tok::Str(s) => Literal::Str(s.to_string()),
            Tok::Int(n) if !string_only => Literal::Int(*n),
            _ if string_only => {
                return Err(self.unexpected("a quoted string (authenticationName is a string)"))
            }
            _ => return Err(self.unexpected("a quoted string or an integer")),
        };
        self.bump();
        Ok(literal)
    }
}

#[cfg(test)]
mod tests;
