//! Chat templates: `tokenizer.chat_template` rendered with minijinja the way Hugging Face's
//! `apply_chat_template` renders it with Jinja2 (trim_blocks, lstrip_blocks, no trailing newline
//! kept), with the helpers HF templates call: `raise_exception`, `strftime_now`, a `tojson` that
//! writes Python's `json.dumps` (not HTML-escaped), Python string/dict methods, and the
//! `bos_token` / `eos_token` variables.

use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{context, Environment, Value};

use super::ChatMessage;
use crate::error::{Error, Result};

pub(crate) fn render(
    template: &str,
    msgs: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> std::result::Result<Value, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", |fmt: String| strftime(&fmt, now_utc()));
    env.add_filter("tojson", tojson);
    let tmpl = env
        .template_from_str(template)
        .map_err(|e| Error::format(format!("tokenizer.chat_template does not parse: {e:#}")))?;
    let messages: Vec<Value> =
        msgs.iter().map(|m| context! { role => m.role, content => m.content }).collect();
    tmpl.render(context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    })
    .map_err(|e| Error::invalid_arg(format!("chat template failed to render: {e:#}")))
}

/// HF's `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent, sort_keys=sort_keys)`.
fn tojson(v: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&v, indent, sort_keys.unwrap_or(false), 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn write_json(
    v: &Value,
    indent: Option<usize>,
    sort_keys: bool,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), minijinja::Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if v.is_integer() {
                out.push_str(&v.to_string());
            } else {
                let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                if f.is_nan() {
                    out.push_str("NaN");
                } else if f.is_infinite() {
                    out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
                } else if f.fract() == 0.0 && f.abs() < 1e16 {
                    out.push_str(&format!("{f:.1}"));
                } else {
                    out.push_str(&format!("{f}"));
                }
            }
        }
        ValueKind::String => json_str(v.as_str().unwrap_or(""), out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, it) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(it, indent, sort_keys, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if sort_keys {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                match k.as_str() {
                    Some(s) => json_str(s, out),
                    None => json_str(&k.to_string(), out),
                }
                out.push_str(": ");
                write_json(&v.get_item(k)?, indent, sort_keys, depth + 1, out)?;
            }
            newline(out, depth);
            out.push('}');
        }
        _ => json_str(&v.to_string(), out),
    }
    Ok(())
}

fn json_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Broken-down UTC time: (year, month 1-12, day 1-31, hour, minute, second, weekday 0=Monday,
/// day of year 1-366).
type Civil = (i64, u32, u32, u32, u32, u32, u32, u32);

fn now_utc() -> Civil {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    civil(secs)
}

fn civil(secs: i64) -> Civil {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Days to civil date (proleptic Gregorian), Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy0 = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy0 + 2) / 153;
    let d = (doy0 - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    const CUM: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = CUM[(m - 1) as usize] + d + u32::from(leap && m > 2);
    let wday = (days + 3).rem_euclid(7) as u32; // 1970-01-01 was a Thursday
    (y, m, d, (rem / 3600) as u32, (rem / 60 % 60) as u32, (rem % 60) as u32, wday, yday)
}

/// The strftime conversions chat templates use (C locale); others are kept as written.
fn strftime(fmt: &str, t: Civil) -> String {
    const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    const MONTHS: [&str; 12] = [
        "January", "February", "March", "April", "May", "June", "July", "August", "September",
        "October", "November", "December",
    ];
    let (y, mo, d, h, mi, s, wd, yd) = t;
    let mut out = String::new();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        // glibc's "%-d": no padding.
        let nopad = chars.peek() == Some(&'-');
        if nopad {
            chars.next();
        }
        let num = |v: u32, w: usize| if nopad { v.to_string() } else { format!("{v:0w$}") };
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&num(y.rem_euclid(100) as u32, 2)),
            Some('m') => out.push_str(&num(mo, 2)),
            Some('d') => out.push_str(&num(d, 2)),
            Some('e') => out.push_str(&format!("{d:2}")),
            Some('H') => out.push_str(&num(h, 2)),
            Some('I') => out.push_str(&num(if h % 12 == 0 { 12 } else { h % 12 }, 2)),
            Some('M') => out.push_str(&num(mi, 2)),
            Some('S') => out.push_str(&num(s, 2)),
            Some('p') => out.push_str(if h < 12 { "AM" } else { "PM" }),
            Some('j') => out.push_str(&num(yd, 3)),
            Some('B') => out.push_str(MONTHS[(mo - 1) as usize]),
            Some('b') | Some('h') => out.push_str(&MONTHS[(mo - 1) as usize][..3]),
            Some('A') => out.push_str(DAYS[wd as usize]),
            Some('a') => out.push_str(&DAYS[wd as usize][..3]),
            Some('F') => out.push_str(&format!("{y}-{mo:02}-{d:02}")),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                if nopad {
                    out.push('-');
                }
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        // 2024-02-29 12:34:56 UTC was a Thursday, day 60 of the year.
        assert_eq!(civil(1_709_210_096), (2024, 2, 29, 12, 34, 56, 3, 60));
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0, 3, 1));
        let t = civil(1_709_210_096);
        assert_eq!(strftime("%d %b %Y", t), "29 Feb 2024");
        assert_eq!(strftime("%A %-d %B %y, %H:%M:%S %p %j %%", t), "Thursday 29 February 24, 12:34:56 PM 060 %");
    }

    #[test]
    fn tojson_is_python_json_dumps() {
        let v = Value::from_serialize([("a", 1)]);
        let mut s = String::new();
        write_json(&v, None, false, 0, &mut s).unwrap();
        assert_eq!(s, "[[\"a\", 1]]");
        let mut s = String::new();
        write_json(&Value::from(2.0), None, false, 0, &mut s).unwrap();
        assert_eq!(s, "2.0");
        let mut s = String::new();
        write_json(&context! { k => "<é\n>", n => 1.5, l => vec![true] }, None, false, 0, &mut s).unwrap();
        assert_eq!(s, "{\"k\": \"<é\\n>\", \"n\": 1.5, \"l\": [true]}");
        let mut s = String::new();
        write_json(&context! { a => vec![1, 2] }, Some(2), false, 0, &mut s).unwrap();
        assert_eq!(s, "{\n  \"a\": [\n    1,\n    2\n  ]\n}");
    }
}
