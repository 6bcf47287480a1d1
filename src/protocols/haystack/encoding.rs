//! Haystack wire formats: content negotiation, our own grid encoders (Zinc, Haystack 4 JSON, JSON v3, CSV) and request-grid decoding through libhaystack.
//!
//! Why our own encoders: libhaystack 4.1's Zinc grid encoder drops the newline
//! after grid metadata, writes `empty` instead of the columns of a grid with no
//! rows, does not escape a Ref's display name, and its JSON encoder writes
//! explicit nulls (phable cannot read them), NaN as `null` and saturates large
//! whole numbers through `i64`. Scalars are few and well specified, so writing
//! them here is smaller and safer than patching around those bugs. Decoding
//! (untrusted input) stays with libhaystack, which was fuzzed clean.

use std::fmt::Write as _;

use libhaystack::filter::Filter;
use libhaystack::val::{Dict, Value as HVal};

use super::depth;

/// Zinc grid format version we write (Haystack 3.0 Zinc, read by every client).
pub const ZINC_VER: &str = "3.0";

/// A grid as we build it for responses: ordered columns, rows as dicts.
#[derive(Debug, Clone, Default)]
pub struct Grid {
    pub meta: Dict,
    pub cols: Vec<Col>,
    pub rows: Vec<Dict>,
}

#[derive(Debug, Clone)]
pub struct Col {
    pub name: String,
    pub meta: Option<Dict>,
}

impl Grid {
    /// A grid with no columns and no rows (`ver:"3.0"\nempty\n`).
    pub fn empty() -> Self {
        Grid::default()
    }

    /// An error grid: `err` marker and `dis` in the metadata, no rows.
    pub fn error(dis: &str) -> Self {
        let mut meta = Dict::new();
        meta.insert("err".into(), HVal::Marker);
        meta.insert("dis".into(), HVal::make_str(dis));
        meta.insert("errTrace".into(), HVal::make_str(dis));
        Grid {
            meta,
            cols: Vec::new(),
            rows: Vec::new(),
        }
    }

    /// Builds a grid from rows; columns are the union of the rows' tags with
    /// `id` and `dis` first and the rest sorted, so every response is stable.
    pub fn from_rows(meta: Dict, rows: Vec<Dict>) -> Self {
        let mut names: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for r in &rows {
            for k in r.keys() {
                if seen.insert(k.as_str()) {
                    names.push(k.clone());
                }
            }
        }
        names.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.cmp(b)));
        Grid {
            meta,
            cols: names
                .into_iter()
                .map(|name| Col { name, meta: None })
                .collect(),
            rows,
        }
    }

    /// A grid with the given column names in that order.
    pub fn with_cols(meta: Dict, cols: &[&str], rows: Vec<Dict>) -> Self {
        Grid {
            meta,
            cols: cols
                .iter()
                .map(|c| Col {
                    name: (*c).to_string(),
                    meta: None,
                })
                .collect(),
            rows,
        }
    }
}

fn rank(name: &str) -> u8 {
    match name {
        "id" => 0,
        "dis" => 1,
        _ => 2,
    }
}

/// Response formats we can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Zinc,
    /// Haystack 4 JSON (Hayson).
    Json,
    /// Haystack 3 JSON (`"n:42 %"`, `"m:"` ...), for older clients.
    JsonV3,
    Csv,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Zinc => "text/zinc; charset=utf-8",
            Format::Json => "application/json; charset=utf-8",
            Format::JsonV3 => "application/json; charset=utf-8; version=3",
            Format::Csv => "text/csv; charset=utf-8",
        }
    }

    /// Picks the response format from an `Accept` header. No header, `*/*`,
    /// `text/*` or `text/plain` give Zinc (the Haystack default). `None`
    /// means nothing acceptable (HTTP 406).
    pub fn from_accept(accept: Option<&str>) -> Option<Format> {
        let Some(accept) = accept else {
            return Some(Format::Zinc);
        };
        if accept.trim().is_empty() {
            return Some(Format::Zinc);
        }
        // Honour q-values coarsely: the first acceptable type with q > 0 in
        // the order of highest q wins.
        let mut best: Option<(f32, usize, Format)> = None;
        for (i, part) in accept.split(',').enumerate() {
            let mut params = part.split(';').map(str::trim);
            let mime = params.next().unwrap_or("").to_ascii_lowercase();
            let mut q = 1.0f32;
            let mut v3 = false;
            for p in params {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                let k = k.trim().to_ascii_lowercase();
                let v = v.trim().trim_matches('"');
                match k.as_str() {
                    "q" => q = v.parse().unwrap_or(0.0),
                    "version" | "v" => v3 = v.starts_with('3'),
                    _ => {}
                }
            }
            let f = match mime.as_str() {
                "text/zinc" | "text/plain" | "text/*" | "*/*" => Format::Zinc,
                "application/json" | "application/*" | "application/hayson+json" => {
                    if v3 {
                        Format::JsonV3
                    } else {
                        Format::Json
                    }
                }
                "application/vnd.haystack+json" => {
                    if v3 {
                        Format::JsonV3
                    } else {
                        Format::Json
                    }
                }
                "text/csv" => Format::Csv,
                _ => continue,
            };
            if q <= 0.0 {
                continue;
            }
            if best.is_none_or(|(bq, _, _)| q > bq) {
                best = Some((q, i, f));
            }
        }
        best.map(|(_, _, f)| f)
    }

    pub fn encode(self, g: &Grid) -> String {
        match self {
            Format::Zinc => to_zinc(g),
            Format::Json => to_json(g),
            Format::JsonV3 => to_json_v3(g),
            Format::Csv => to_csv(g),
        }
    }
}

// ------------------------------------------------------------------- Zinc

/// Encodes a grid as Zinc 3.0.
pub fn to_zinc(g: &Grid) -> String {
    let mut out = String::with_capacity(256 + g.rows.len() * 256);
    zinc_grid(&mut out, g);
    out
}

fn zinc_grid(out: &mut String, g: &Grid) {
    out.push_str("ver:\"");
    out.push_str(ZINC_VER);
    out.push('"');
    zinc_tags(out, &g.meta, ' ', true);
    out.push('\n');
    if g.cols.is_empty() {
        out.push_str("empty\n");
        return;
    }
    for (i, c) in g.cols.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&c.name);
        if let Some(m) = &c.meta {
            zinc_tags(out, m, ' ', true);
        }
    }
    out.push('\n');
    let mut cells = RowCells::new(&g.cols);
    for r in &g.rows {
        for (i, v) in cells.fill(r).iter().copied().enumerate() {
            if i > 0 {
                out.push(',');
            }
            // Null cells are written as nothing (Zinc's empty cell).
            if let Some(v) = v.filter(|v| !v.is_null()) {
                zinc_val(out, v);
            }
        }
        out.push('\n');
    }
}

/// A row's cells in column order, found by one merge of the row's tags
/// (a `Dict` iterates in name order) with the column names sorted once per
/// grid. Looking each column up in each row cost a tree search of string
/// compares per cell, which was most of a `read` of a few thousand route
/// points (bench/haystack.py --routes 100).
struct RowCells<'g> {
    /// Column names in name order, each with its position in the grid.
    sorted: Vec<(&'g str, usize)>,
    cells: Vec<Option<&'g HVal>>,
}

impl<'g> RowCells<'g> {
    fn new(cols: &'g [Col]) -> Self {
        let mut sorted: Vec<(&str, usize)> = cols
            .iter()
            .enumerate()
            .map(|(i, c)| (c.name.as_str(), i))
            .collect();
        sorted.sort_unstable();
        RowCells {
            sorted,
            cells: vec![None; cols.len()],
        }
    }

    fn fill(&mut self, row: &'g Dict) -> &[Option<&'g HVal>] {
        self.cells.iter_mut().for_each(|c| *c = None);
        let mut cols = self.sorted.iter().peekable();
        for (k, v) in row.iter() {
            while cols.next_if(|(n, _)| *n < k.as_str()).is_some() {}
            if let Some(&(_, i)) = cols.next_if(|(n, _)| *n == k.as_str()) {
                self.cells[i] = Some(v);
            }
        }
        &self.cells
    }
}

/// Writes `name:val` pairs (markers as bare names), each preceded by `sep`
/// when `lead` is set.
fn zinc_tags(out: &mut String, d: &Dict, sep: char, lead: bool) {
    let mut first = !lead;
    for (k, v) in d.iter() {
        if v.is_null() {
            continue;
        }
        if !first {
            out.push(sep);
        }
        first = false;
        out.push_str(k);
        if !v.is_marker() {
            out.push(':');
            zinc_val(out, v);
        }
    }
}

/// Encodes one value as Zinc.
pub fn zinc_val(out: &mut String, v: &HVal) {
    match v {
        HVal::Null => out.push('N'),
        HVal::Marker => out.push('M'),
        HVal::Remove => out.push('R'),
        HVal::Na => out.push_str("NA"),
        HVal::Bool(b) => out.push(if b.value { 'T' } else { 'F' }),
        HVal::Number(n) => zinc_number(out, n.value, n.unit.map(|u| u.symbol())),
        HVal::Str(s) => zinc_str(out, s),
        HVal::Ref(r) => {
            out.push('@');
            out.push_str(r.value());
            if let Some(dis) = r.dis() {
                out.push(' ');
                zinc_str(out, dis);
            }
        }
        HVal::Uri(u) => {
            out.push('`');
            for c in u.value().chars() {
                match c {
                    '`' => out.push_str("\\`"),
                    '\\' => out.push_str("\\\\"),
                    c if c < ' ' => {}
                    c => out.push(c),
                }
            }
            out.push('`');
        }
        HVal::Symbol(s) => {
            out.push('^');
            out.push_str(s.value());
        }
        HVal::Date(d) => {
            let _ = write!(out, "{}", d.format("%Y-%m-%d"));
        }
        HVal::Time(t) => {
            let _ = write!(out, "{}", t.format("%H:%M:%S%.3f"));
        }
        HVal::DateTime(dt) => {
            out.push_str(&dt.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
            out.push(' ');
            out.push_str(&dt.timezone_short_name());
        }
        HVal::Coord(c) => {
            let _ = write!(out, "C({},{})", c.lat, c.long);
        }
        HVal::XStr(x) => {
            let t = x.r#type();
            let mut cs = t.chars();
            if let Some(f) = cs.next() {
                out.extend(f.to_uppercase());
                out.push_str(cs.as_str());
            }
            out.push('(');
            zinc_str(out, x.value());
            out.push(')');
        }
        HVal::List(l) => {
            out.push('[');
            for (i, e) in l.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                zinc_val(out, e);
            }
            out.push(']');
        }
        HVal::Dict(d) => {
            out.push('{');
            zinc_tags(out, d, ' ', false);
            out.push('}');
        }
        HVal::Grid(g) => {
            // Nested grids are rare in responses; convert to our grid shape.
            let inner = Grid {
                meta: g.meta.clone().unwrap_or_default(),
                cols: g
                    .columns
                    .iter()
                    .map(|c| Col {
                        name: c.name.clone(),
                        meta: c.meta.clone(),
                    })
                    .collect(),
                rows: g.rows.clone(),
            };
            out.push_str("<<\n");
            zinc_grid(out, &inner);
            out.push_str(">>");
        }
    }
}

fn zinc_number(out: &mut String, v: f64, unit: Option<&str>) {
    if v.is_nan() {
        out.push_str("NaN");
        return;
    }
    if v.is_infinite() {
        out.push_str(if v < 0.0 { "-INF" } else { "INF" });
        return;
    }
    let _ = write!(out, "{}", fmt_num(v));
    if let Some(u) = unit {
        out.push_str(u);
    }
}

/// Shortest decimal form that reads back to the same f64; exponent form for
/// very large or small magnitudes so a unit never glues onto an `e`.
fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-4..1e15).contains(&a) {
        format!("{v:e}").replace("e", "E")
    } else {
        format!("{v}")
    }
}

fn zinc_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' => out.push_str("\\$"),
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

// ------------------------------------------------------------------ JSON 4

/// Encodes a grid as Haystack 4 JSON. Null cells are left out of rows (the
/// spec allows it and phable cannot read explicit nulls).
pub fn to_json(g: &Grid) -> String {
    serde_json::Value::from(json_grid(g)).to_string()
}

fn json_grid(g: &Grid) -> serde_json::Map<String, serde_json::Value> {
    use serde_json::Value as J;
    let mut meta = serde_json::Map::new();
    meta.insert("ver".into(), J::String(ZINC_VER.into()));
    for (k, v) in g.meta.iter() {
        if !v.is_null() {
            meta.insert(k.clone(), json_val(v));
        }
    }
    let cols: Vec<J> = if g.cols.is_empty() {
        vec![serde_json::json!({"name": "empty"})]
    } else {
        g.cols
            .iter()
            .map(|c| {
                let mut m = serde_json::Map::new();
                m.insert("name".into(), J::String(c.name.clone()));
                if let Some(cm) = &c.meta {
                    m.insert("meta".into(), json_dict(cm));
                }
                J::Object(m)
            })
            .collect()
    };
    let rows: Vec<J> = g.rows.iter().map(json_dict).collect();
    let mut m = serde_json::Map::new();
    m.insert("_kind".into(), J::String("grid".into()));
    m.insert("meta".into(), J::Object(meta));
    m.insert("cols".into(), J::Array(cols));
    m.insert("rows".into(), J::Array(rows));
    m
}

fn json_dict(d: &Dict) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (k, v) in d.iter() {
        if !v.is_null() {
            m.insert(k.clone(), json_val(v));
        }
    }
    serde_json::Value::Object(m)
}

fn kind(k: &str) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    m.insert("_kind".into(), serde_json::Value::String(k.into()));
    m
}

fn json_val(v: &HVal) -> serde_json::Value {
    use serde_json::Value as J;
    let with = |k: &str, val: String| {
        let mut m = kind(k);
        m.insert("val".into(), J::String(val));
        J::Object(m)
    };
    match v {
        HVal::Null => J::Null,
        HVal::Marker => J::Object(kind("marker")),
        HVal::Remove => J::Object(kind("remove")),
        HVal::Na => J::Object(kind("na")),
        HVal::Bool(b) => J::Bool(b.value),
        HVal::Number(n) => {
            let unit = n.unit.map(|u| u.symbol().to_string());
            // Whole numbers within f64's exact integer range go out as JSON
            // integers (`16`, not `16.0`), as Haxall writes them.
            let num = if n.value.fract() == 0.0 && n.value.abs() <= 9_007_199_254_740_992.0 {
                Some(serde_json::Number::from(n.value as i64))
            } else {
                serde_json::Number::from_f64(n.value)
            };
            match num {
                Some(num) if unit.is_none() => J::Number(num),
                Some(num) => {
                    let mut m = kind("number");
                    m.insert("val".into(), J::Number(num));
                    if let Some(u) = unit {
                        m.insert("unit".into(), J::String(u));
                    }
                    J::Object(m)
                }
                None => {
                    let s = if n.value.is_nan() {
                        "NaN"
                    } else if n.value < 0.0 {
                        "-INF"
                    } else {
                        "INF"
                    };
                    let mut m = kind("number");
                    m.insert("val".into(), J::String(s.into()));
                    if let Some(u) = unit {
                        m.insert("unit".into(), J::String(u));
                    }
                    J::Object(m)
                }
            }
        }
        HVal::Str(s) => J::String(s.to_string()),
        HVal::Ref(r) => {
            let mut m = kind("ref");
            m.insert("val".into(), J::String(r.value().to_string()));
            if let Some(d) = r.dis() {
                m.insert("dis".into(), J::String(d.to_string()));
            }
            J::Object(m)
        }
        HVal::Uri(u) => with("uri", u.value().to_string()),
        HVal::Symbol(s) => with("symbol", s.value().to_string()),
        HVal::Date(d) => with("date", d.format("%Y-%m-%d").to_string()),
        HVal::Time(t) => with("time", t.format("%H:%M:%S%.3f").to_string()),
        HVal::DateTime(dt) => {
            let mut m = kind("dateTime");
            m.insert(
                "val".into(),
                J::String(dt.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            );
            m.insert("tz".into(), J::String(dt.timezone_short_name()));
            J::Object(m)
        }
        HVal::Coord(c) => {
            let mut m = kind("coord");
            m.insert("lat".into(), serde_json::json!(c.lat));
            m.insert("lng".into(), serde_json::json!(c.long));
            J::Object(m)
        }
        HVal::XStr(x) => {
            let mut m = kind("xstr");
            m.insert("type".into(), J::String(x.r#type().to_string()));
            m.insert("val".into(), J::String(x.value().to_string()));
            J::Object(m)
        }
        HVal::List(l) => J::Array(l.iter().map(json_val).collect()),
        HVal::Dict(d) => json_dict(d),
        HVal::Grid(g) => {
            let inner = Grid {
                meta: g.meta.clone().unwrap_or_default(),
                cols: g
                    .columns
                    .iter()
                    .map(|c| Col {
                        name: c.name.clone(),
                        meta: c.meta.clone(),
                    })
                    .collect(),
                rows: g.rows.clone(),
            };
            J::Object(json_grid(&inner))
        }
    }
}

// ------------------------------------------------------------------ JSON 3

/// Encodes a grid as Haystack 3 JSON (type-prefixed strings).
pub fn to_json_v3(g: &Grid) -> String {
    use serde_json::Value as J;
    let mut meta = serde_json::Map::new();
    meta.insert("ver".into(), J::String("3.0".into()));
    for (k, v) in g.meta.iter() {
        meta.insert(k.clone(), json3_val(v));
    }
    let cols: Vec<J> = if g.cols.is_empty() {
        vec![serde_json::json!({"name": "empty"})]
    } else {
        g.cols
            .iter()
            .map(|c| {
                let mut m = serde_json::Map::new();
                m.insert("name".into(), J::String(c.name.clone()));
                if let Some(cm) = &c.meta {
                    for (k, v) in cm.iter() {
                        m.insert(k.clone(), json3_val(v));
                    }
                }
                J::Object(m)
            })
            .collect()
    };
    let rows: Vec<J> = g
        .rows
        .iter()
        .map(|r| {
            let mut m = serde_json::Map::new();
            for (k, v) in r.iter() {
                if !v.is_null() {
                    m.insert(k.clone(), json3_val(v));
                }
            }
            J::Object(m)
        })
        .collect();
    serde_json::json!({"meta": meta, "cols": cols, "rows": rows}).to_string()
}

fn json3_val(v: &HVal) -> serde_json::Value {
    use serde_json::Value as J;
    let s = |x: String| J::String(x);
    match v {
        HVal::Null => J::Null,
        HVal::Marker => s("m:".into()),
        HVal::Remove => s("-:".into()),
        HVal::Na => s("z:".into()),
        HVal::Bool(b) => J::Bool(b.value),
        HVal::Number(n) => {
            let mut t = String::from("n:");
            zinc_number(&mut t, n.value, None);
            if let Some(u) = n.unit {
                t.push(' ');
                t.push_str(u.symbol());
            }
            s(t)
        }
        HVal::Str(x) => {
            // Strings that look like a type prefix get an explicit `s:`.
            let v: &str = x;
            if v.len() >= 2 && v.as_bytes()[1] == b':' {
                s(format!("s:{v}"))
            } else {
                s(v.to_string())
            }
        }
        HVal::Ref(r) => match r.dis() {
            Some(d) => s(format!("r:{} {d}", r.value())),
            None => s(format!("r:{}", r.value())),
        },
        HVal::Uri(u) => s(format!("u:{}", u.value())),
        HVal::Symbol(x) => s(format!("y:{}", x.value())),
        HVal::Date(d) => s(format!("d:{}", d.format("%Y-%m-%d"))),
        HVal::Time(t) => s(format!("h:{}", t.format("%H:%M:%S%.3f"))),
        HVal::DateTime(dt) => s(format!(
            "t:{} {}",
            dt.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            dt.timezone_short_name()
        )),
        HVal::Coord(c) => s(format!("c:{},{}", c.lat, c.long)),
        HVal::XStr(x) => s(format!("x:{}:{}", x.r#type(), x.value())),
        HVal::List(l) => J::Array(l.iter().map(json3_val).collect()),
        HVal::Dict(d) => {
            let mut m = serde_json::Map::new();
            for (k, v) in d.iter() {
                m.insert(k.clone(), json3_val(v));
            }
            J::Object(m)
        }
        HVal::Grid(_) => s("x:Grid:".into()),
    }
}

// -------------------------------------------------------------------- CSV

/// Encodes a grid as CSV: a header of column names (or their `dis`), then
/// one line per row with values in their Zinc form (strings unquoted,
/// markers as ✓), quoted per RFC 4180 where needed.
pub fn to_csv(g: &Grid) -> String {
    let mut out = String::new();
    let cell = |out: &mut String, s: &str| {
        if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
            out.push('"');
            out.push_str(&s.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(s);
        }
    };
    if g.cols.is_empty() {
        out.push_str("empty\n");
        return out;
    }
    for (i, c) in g.cols.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let dis = c
            .meta
            .as_ref()
            .and_then(|m| m.get("dis"))
            .and_then(|v| match v {
                HVal::Str(s) => Some(s.to_string()),
                _ => None,
            })
            .unwrap_or_else(|| c.name.clone());
        cell(&mut out, &dis);
    }
    out.push('\n');
    let mut cells = RowCells::new(&g.cols);
    for r in &g.rows {
        for (i, v) in cells.fill(r).iter().copied().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let text = match v {
                None | Some(HVal::Null) => String::new(),
                Some(HVal::Marker) => "\u{2713}".to_string(),
                Some(HVal::Str(s)) => s.to_string(),
                Some(HVal::Ref(r)) => match r.dis() {
                    Some(d) => format!("@{} {d}", r.value()),
                    None => format!("@{}", r.value()),
                },
                Some(HVal::Uri(u)) => u.value().to_string(),
                Some(v) => {
                    let mut s = String::new();
                    zinc_val(&mut s, v);
                    s
                }
            };
            cell(&mut out, &text);
        }
        out.push('\n');
    }
    out
}

// --------------------------------------------------------------- decoding

/// Request body formats we accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    Zinc,
    Json,
}

impl BodyFormat {
    /// From a `Content-Type`; a missing type is read as Zinc (the Haystack
    /// default). `None` means unsupported (HTTP 415).
    pub fn from_content_type(ct: Option<&str>) -> Option<BodyFormat> {
        let Some(ct) = ct else {
            return Some(BodyFormat::Zinc);
        };
        let mime = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match mime.as_str() {
            "" | "text/zinc" | "text/plain" => Some(BodyFormat::Zinc),
            "application/json" | "application/hayson+json" | "application/vnd.haystack+json" => {
                Some(BodyFormat::Json)
            }
            _ => None,
        }
    }
}

/// A decoded request grid (meta + rows); columns do not matter to ops.
#[derive(Debug, Clone, Default)]
pub struct ReqGrid {
    pub meta: Dict,
    pub rows: Vec<Dict>,
}

/// Most bytes a request grid may have; larger bodies get an error grid.
pub const MAX_REQUEST: usize = 1 << 20;

/// Decodes a request body. Never panics; every failure is a message for an
/// error grid.
pub fn decode_request(fmt: BodyFormat, body: &[u8]) -> Result<ReqGrid, String> {
    if body.len() > MAX_REQUEST {
        return Err(format!("request grid larger than {MAX_REQUEST} bytes"));
    }
    let text = std::str::from_utf8(body).map_err(|e| format!("request is not UTF-8: {e}"))?;
    decode_text(fmt, text)
}

/// Decodes request-grid text of any length (callers bound the size):
/// nesting is refused before libhaystack recurses (Zinc: [`depth`], JSON:
/// serde_json's limit).
pub fn decode_text(fmt: BodyFormat, text: &str) -> Result<ReqGrid, String> {
    if text.trim().is_empty() {
        return Ok(ReqGrid::default());
    }
    let grid = match fmt {
        BodyFormat::Zinc => match zinc_from_str(text)? {
            Ok(HVal::Grid(g)) => *g,
            Ok(_) => return Err("request body is a Zinc value, not a grid".into()),
            Err(e) => return Err(format!("invalid Zinc grid: {e}")),
        },
        BodyFormat::Json => {
            // serde_json refuses nesting deeper than 128 arrays/objects
            // itself (its default recursion limit; castpoint never enables
            // `unbounded_depth`), and libhaystack's Hayson decoder is a
            // serde visitor driven by that deserializer, so the limit holds
            // for it too (tested below at depth 100,000).
            let g: libhaystack::val::Grid = serde_json::from_str(text)
                .map_err(|e| format!("invalid Haystack JSON grid: {e}"))?;
            g
        }
    };
    Ok(ReqGrid {
        meta: grid.meta.unwrap_or_default(),
        rows: grid.rows,
    })
}

/// Parameters whose GET values are plain strings unless Zinc-quoted
/// (a filter or a range is not a Zinc scalar).
const STRING_PARAMS: &[&str] = &["filter", "range", "watchId", "watchDis", "who", "action"];

/// Builds a one-row request grid from GET query parameters. Values are Zinc
/// scalars (`id=@site`, `limit=10`); values that do not parse as one Zinc
/// scalar are taken as strings (`filter=point and his`).
pub fn decode_query(query: &str) -> Result<ReqGrid, String> {
    let mut row = Dict::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k)?;
        let v = percent_decode(v)?;
        let val = if STRING_PARAMS.contains(&k.as_str()) && !v.starts_with('"') {
            HVal::make_str(&v)
        } else {
            // Too deep to be a Zinc scalar is an error, not a Str: the
            // client meant a value and gets told why it was refused.
            depth::check_zinc(&v).map_err(|e| format!("parameter {k}: {e}"))?;
            parse_scalar(&v).unwrap_or_else(|| HVal::make_str(&v))
        };
        row.insert(k, val);
    }
    Ok(ReqGrid {
        meta: Dict::new(),
        rows: if row.is_empty() {
            Vec::new()
        } else {
            vec![row]
        },
    })
}

/// One Zinc scalar, or `None` if the text is not exactly one scalar.
pub fn parse_scalar(s: &str) -> Option<HVal> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    // Rule out the parser taking a prefix (`T and x` reads as `T`): wrap the
    // value in a one-cell grid, which must then parse completely.
    let text = format!("ver:\"3.0\"\nv\n{s}\n");
    match zinc_from_str(&text) {
        Ok(Ok(HVal::Grid(g))) if g.rows.len() == 1 => g.rows[0].get("v").cloned(),
        _ => None,
    }
}

/// libhaystack's Zinc decoder behind the nesting pre-check: the only way
/// castpoint hands untrusted text to it. The outer error is the refusal
/// (too deep), the inner one libhaystack's.
pub fn zinc_from_str(text: &str) -> Result<Result<HVal, String>, String> {
    depth::check_zinc(text).map_err(|e| format!("invalid Zinc: {e}"))?;
    Ok(libhaystack::encoding::zinc::decode::from_str(text).map_err(|e| e.to_string()))
}

/// Parses a Haystack filter; never panics, errors are messages.
pub fn parse_filter(s: &str) -> Result<Filter, String> {
    if s.len() > 4096 {
        return Err("filter longer than 4096 characters".into());
    }
    if s.trim().is_empty() {
        return Err("empty filter".into());
    }
    // libhaystack's filter parser recurses per parenthesis (4096 `(` fit
    // the length limit above and overflow a worker's stack).
    depth::check_filter(s).map_err(|e| format!("invalid filter: {e}"))?;
    Filter::try_from(s).map_err(|e| format!("invalid filter {s:?}: {e}"))
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| "invalid %-escape in query string".to_string())?;
                out.push(hex);
                i += 3;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "query string is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pairs: &[(&str, HVal)]) -> Dict {
        let mut d = Dict::new();
        for (k, v) in pairs {
            d.insert((*k).to_string(), v.clone());
        }
        d
    }

    #[test]
    fn row_cells_match_a_lookup_per_column() {
        // Columns in grid order (not name order), rows with gaps, names that
        // share prefixes: the merge must find exactly what `get` finds.
        let names = ["id", "dis", "a", "ab", "b", "curVal", "z", "aa"];
        let rows: Vec<Dict> = (0..40)
            .map(|i: usize| {
                let mut d = Dict::new();
                for (k, n) in names.iter().enumerate() {
                    if (i >> (k % 6)) & 1 == 1 || k == 0 {
                        d.insert((*n).into(), HVal::make_number((i * 10 + k) as f64));
                    }
                }
                d.insert(format!("extra{i}"), HVal::Marker);
                d
            })
            .collect();
        let g = Grid::with_cols(Dict::new(), &names, rows);
        let mut cells = RowCells::new(&g.cols);
        for r in &g.rows {
            let want: Vec<Option<&HVal>> = g.cols.iter().map(|c| r.get(&c.name)).collect();
            assert_eq!(cells.fill(r), want.as_slice());
        }
    }

    #[test]
    fn zinc_grid_meta_newline_and_empty_rows_keep_columns() {
        let mut meta = Dict::new();
        meta.insert("watchId".into(), HVal::make_str("w1"));
        let g = Grid::with_cols(meta, &["id", "curVal"], vec![]);
        assert_eq!(to_zinc(&g), "ver:\"3.0\" watchId:\"w1\"\nid,curVal\n");
        assert_eq!(to_zinc(&Grid::empty()), "ver:\"3.0\"\nempty\n");
    }

    #[test]
    fn zinc_escapes_ref_dis_and_strings() {
        let g = Grid::from_rows(
            Dict::new(),
            vec![row(&[
                ("id", HVal::make_ref_with_dis("a", "say \"hi\"")),
                ("s", HVal::make_str("a$b\n")),
                ("m", HVal::Marker),
                ("n", HVal::make_number(1e20)),
            ])],
        );
        let z = to_zinc(&g);
        assert!(z.contains("@a \"say \\\"hi\\\"\""), "{z}");
        assert!(z.contains("\"a\\$b\\n\""), "{z}");
        assert!(z.contains("1E20"), "{z}");
        // Round trip through libhaystack's decoder.
        let back = decode_request(BodyFormat::Zinc, z.as_bytes()).expect("decodes");
        assert_eq!(back.rows.len(), 1);
        assert_eq!(back.rows[0].get("s"), Some(&HVal::make_str("a$b\n")));
    }

    #[test]
    fn json_leaves_out_nulls_and_encodes_nan() {
        let g = Grid::from_rows(
            Dict::new(),
            vec![
                row(&[("a", HVal::make_number(f64::NAN))]),
                row(&[("b", HVal::make_true())]),
            ],
        );
        let j: serde_json::Value = serde_json::from_str(&to_json(&g)).expect("json");
        assert_eq!(j["rows"][0]["a"]["val"], "NaN");
        assert!(j["rows"][0].get("b").is_none());
        assert_eq!(j["rows"][1]["b"], true);
    }

    #[test]
    fn accept_negotiation() {
        assert_eq!(Format::from_accept(None), Some(Format::Zinc));
        assert_eq!(
            Format::from_accept(Some("application/json")),
            Some(Format::Json)
        );
        assert_eq!(
            Format::from_accept(Some("application/json; version=3")),
            Some(Format::JsonV3)
        );
        assert_eq!(Format::from_accept(Some("text/csv")), Some(Format::Csv));
        assert_eq!(
            Format::from_accept(Some("text/csv;q=0.5, text/zinc")),
            Some(Format::Zinc)
        );
        assert_eq!(Format::from_accept(Some("image/png")), None);
    }

    /// A one-column Zinc grid whose cell is `cell`.
    fn zinc_cell(cell: &str) -> String {
        format!("ver:\"3.0\"\nv\n{cell}\n")
    }

    /// Zinc nesting `n` deep of each container kind (unterminated: the
    /// decoder would recurse before noticing).
    fn deep_zinc(n: usize) -> [String; 3] {
        [
            zinc_cell(&"[".repeat(n)),
            zinc_cell(&"{a:".repeat(n)),
            zinc_cell(&"<<\nver:\"3.0\"\nv\n".repeat(n)),
        ]
    }

    #[test]
    fn zinc_100k_deep_is_a_clean_error() {
        for body in deep_zinc(100_000) {
            let e = decode_text(BodyFormat::Zinc, &body).expect_err("too deep");
            assert!(e.contains("nesting deeper than 64"), "{e}");
            assert_eq!(parse_scalar(&body), None);
        }
        let e = decode_query(&format!("id={}", "[".repeat(4000))).expect_err("too deep");
        assert!(e.contains("parameter id: nesting deeper than 64"), "{e}");
        let e = decode_query(&format!("id={}", "%5B".repeat(100_000))).expect_err("too deep");
        assert!(e.contains("nesting"), "{e}");
    }

    #[test]
    fn json_100k_deep_is_a_clean_error() {
        let row = |v: &str| {
            format!(
                "{{\"_kind\":\"grid\",\"meta\":{{\"ver\":\"3.0\"}},\"cols\":[{{\"name\":\"v\"}}],\"rows\":[{{\"v\":{v}}}]}}"
            )
        };
        let grid_in_grid = {
            let mut s = String::new();
            for _ in 0..100_000 {
                s.push_str("{\"_kind\":\"grid\",\"rows\":[{\"v\":");
            }
            s
        };
        for body in [
            "[".repeat(100_000),
            row(&"[".repeat(100_000)),
            row(&"{\"a\":".repeat(100_000)),
            row(&grid_in_grid),
        ] {
            let e = decode_text(BodyFormat::Json, &body).expect_err("too deep");
            assert!(e.contains("recursion limit"), "{e}");
        }
    }

    /// Right at the limits, decoding, encoding back and dropping the values
    /// fit the 2 MiB stack of a tokio worker (debug build: the worst case).
    #[test]
    fn nesting_at_the_limits_fits_a_worker_stack() {
        let t = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| {
                let n = depth::MAX_NESTING - 1; // the grid itself is level 0
                let zinc = [
                    zinc_cell(&format!("{}{}", "[".repeat(n), "]".repeat(n))),
                    zinc_cell(&format!("{}1{}", "{a:".repeat(n), "}".repeat(n))),
                    zinc_cell(&format!(
                        "{}1\n{}",
                        "<<\nver:\"3.0\"\nv\n".repeat(n),
                        ">>\n".repeat(n)
                    )),
                ];
                for z in zinc {
                    let g = decode_request(BodyFormat::Zinc, z.as_bytes()).expect("decodes");
                    let out = Grid::from_rows(g.meta.clone(), g.rows.clone());
                    for f in [Format::Zinc, Format::Json, Format::JsonV3, Format::Csv] {
                        assert!(!f.encode(&out).is_empty());
                    }
                }
                let json = format!(
                    "{{\"_kind\":\"grid\",\"meta\":{{\"ver\":\"3.0\"}},\"cols\":[{{\"name\":\"v\"}}],\"rows\":[{{\"v\":{}1{}}}]}}",
                    "[".repeat(124),
                    "]".repeat(124)
                );
                let g = decode_request(BodyFormat::Json, json.as_bytes()).expect("decodes");
                let out = Grid::from_rows(g.meta, g.rows);
                for f in [Format::Zinc, Format::Json, Format::JsonV3, Format::Csv] {
                    assert!(!f.encode(&out).is_empty());
                }
            })
            .expect("spawn");
        t.join().expect("no stack overflow at the limits");
    }

    #[test]
    fn query_values_are_zinc_scalars_or_strings() {
        let g = decode_query("filter=point+and+his&limit=10&id=%40site").expect("query");
        let r = &g.rows[0];
        assert_eq!(r.get("filter"), Some(&HVal::make_str("point and his")));
        assert_eq!(r.get("limit"), Some(&HVal::make_number(10.0)));
        assert_eq!(r.get("id"), Some(&HVal::make_ref("site")));
        assert!(decode_query("a=%zz").is_err());
    }
}
