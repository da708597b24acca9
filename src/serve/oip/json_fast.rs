//! A fast path for the common REST infer request: one pass over the bytes that builds the same
//! [`JsonRequest`] serde_json would, with the tensor's numbers converted as they are met.
//!
//! Profiled at peak with a 192-value FP32 tensor, serde_json spent 30 % of the server thread in
//! `decode_request`, most of it turning decimals into floats. This parser reads the request's
//! fixed shape directly and converts a decimal of at most 18 digits with one f64
//! multiplication, checking that the result is far enough from an f32 rounding boundary for
//! the f32 to be the one serde's correctly rounded f64 narrows to (numbers it cannot vouch for
//! take the standard library's correctly rounded parse).
//!
//! It only ever answers with a request serde_json would have built identically, or with `None`:
//! anything unusual (an escape in a string, `null`, a duplicate key, a missing field, malformed
//! JSON) hands the body to serde_json, which decodes it or says what is wrong with it. Errors
//! therefore read the same with or without the fast path; tests compare the two on generated
//! and mutated requests (`cargo bench --bench oip_codec` times them side by side).

use serde_json::{Map, Number, Value};

use super::{JsonData, JsonInput, JsonOutput, JsonRequest};

/// Arrays nested deeper than this go to serde_json (whose limit is 128).
const MAX_DEPTH: u32 = 64;

/// Decodes `body` when it is a well-formed infer request of the usual shape.
pub(super) fn parse(body: &[u8]) -> Option<JsonRequest> {
    let mut p = Parser { b: body, i: 0 };
    let req = p.request()?;
    p.ws();
    (p.i == body.len()).then_some(req)
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

/// A key seen twice is serde's "duplicate field" error: left to serde.
fn set<T>(slot: &mut Option<T>, v: T) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(v);
    Some(())
}

impl<'a> Parser<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// `{ "key": value, ... }`, calling `field` with each key once the colon is read.
    fn object(&mut self, mut field: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.items(b'{', b'}', |p| {
            let key = p.string()?;
            p.eat(b':')?;
            field(p, key)
        })
    }

    /// `[ item, ... ]`.
    fn array(&mut self, item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.items(b'[', b']', item)
    }

    /// `open item, item, ... close` (or `open close`).
    fn items(
        &mut self,
        open: u8,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        self.eat(open)?;
        if self.eat(close).is_some() {
            return Some(());
        }
        loop {
            item(self)?;
            match self.peek()? {
                b',' => self.i += 1,
                c if c == close => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A string without escapes (those go to serde).
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        loop {
            match *self.b.get(self.i)? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => self.i += 1,
            }
        }
        let s = std::str::from_utf8(&self.b[start..self.i]).ok()?;
        self.i += 1;
        Some(s)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.ws();
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// A JSON number token (the grammar checked), and whether it is an integer.
    fn number(&mut self) -> Option<(&'a [u8], bool)> {
        self.ws();
        let start = self.i;
        let d = Decimal::scan(self.b, &mut self.i)?;
        Some((&self.b[start..self.i], d.integer))
    }

    fn request(&mut self) -> Option<JsonRequest> {
        let (mut id, mut parameters, mut inputs, mut outputs) = (None, None, None, None);
        self.object(|p, key| match key {
            "id" => set(&mut id, p.string()?.to_string()),
            "parameters" => set(&mut parameters, p.params()?),
            "inputs" => {
                let mut v = Vec::new();
                p.array(|p| {
                    v.push(p.input()?);
                    Some(())
                })?;
                set(&mut inputs, v)
            }
            "outputs" => {
                let mut v = Vec::new();
                p.array(|p| {
                    v.push(p.output()?);
                    Some(())
                })?;
                set(&mut outputs, v)
            }
            _ => p.skip(0),
        })?;
        Some(JsonRequest {
            id,
            parameters,
            inputs: inputs?,
            outputs,
        })
    }

    fn input(&mut self) -> Option<JsonInput> {
        let (mut name, mut shape, mut datatype, mut parameters, mut data) =
            (None, None, None, None, None);
        self.object(|p, key| match key {
            "name" => set(&mut name, p.string()?.to_string()),
            "datatype" => set(&mut datatype, p.string()?.to_string()),
            "shape" => {
                let mut v = Vec::new();
                p.array(|p| {
                    let (text, integer) = p.number()?;
                    v.push(integer.then(|| int_i64(text))??);
                    Some(())
                })?;
                set(&mut shape, v)
            }
            "parameters" => set(&mut parameters, p.params()?),
            "data" => {
                let mut d = JsonData::default();
                p.data(&mut d, 0)?;
                set(&mut data, d)
            }
            _ => p.skip(0),
        })?;
        Some(JsonInput {
            name: name?,
            shape: shape?,
            datatype: datatype?,
            parameters,
            data,
        })
    }

    fn output(&mut self) -> Option<JsonOutput> {
        let (mut name, mut parameters) = (None, None);
        self.object(|p, key| match key {
            "name" => set(&mut name, p.string()?.to_string()),
            "parameters" => set(&mut parameters, p.params()?),
            _ => p.skip(0),
        })?;
        Some(JsonOutput {
            name: name?,
            parameters,
        })
    }

    /// A parameters object of scalars (anything else goes to serde, whose `Value` holds it and
    /// whose caller then refuses it).
    fn params(&mut self) -> Option<Map<String, Value>> {
        let mut m = Map::new();
        self.object(|p, key| {
            let v = match p.peek()? {
                b'"' => Value::String(p.string()?.to_string()),
                b't' => p.literal(b"true").map(|()| Value::Bool(true))?,
                b'f' => p.literal(b"false").map(|()| Value::Bool(false))?,
                _ => {
                    let (text, integer) = p.number()?;
                    Value::Number(param_number(text, integer)?)
                }
            };
            // A repeated key in a map: serde keeps the last; rare enough to leave to it.
            m.insert(key.to_string(), v).is_none().then_some(())
        })?;
        Some(m)
    }

    /// The scalars of a (nested) array, as `Flatten` collects them.
    fn data(&mut self, out: &mut JsonData, depth: u32) -> Option<()> {
        match self.peek()? {
            b'[' if depth < MAX_DEPTH => self.array(|p| p.data(out, depth + 1)),
            b'"' => {
                self.string()?;
                out.scalars += 1;
                out.non_number.get_or_insert("a string");
                Some(())
            }
            b't' | b'f' => {
                self.literal(b"true").or_else(|| self.literal(b"false"))?;
                out.scalars += 1;
                out.non_number.get_or_insert("a boolean");
                Some(())
            }
            _ => {
                let start = self.i;
                let d = Decimal::scan(self.b, &mut self.i)?;
                let v = d
                    .to_f32()
                    .or_else(|| number_f32(&self.b[start..self.i], d.integer))?;
                out.numbers.push(v);
                out.scalars += 1;
                Some(())
            }
        }
    }

    /// Skips a value of a key the request does not know (serde ignores those too).
    fn skip(&mut self, depth: u32) -> Option<()> {
        if depth >= MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'{' => self.object(|p, _| p.skip(depth + 1)),
            b'[' => self.array(|p| p.skip(depth + 1)),
            b'"' => self.string().map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number().map(drop),
        }
    }
}

/// An integer token as serde reads it into an `i64` (a shape dimension).
fn int_i64(text: &[u8]) -> Option<i64> {
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// A parameter number as serde_json's `Value` holds it: `u64`, negative `i64`, else `f64`
/// (`-0`, integers beyond 64 bits and the rest go to serde).
fn param_number(text: &[u8], integer: bool) -> Option<Number> {
    let s = std::str::from_utf8(text).ok()?;
    if integer {
        return match s.strip_prefix('-') {
            Some(_) => s.parse::<i64>().ok().filter(|v| *v != 0).map(Number::from),
            None => s.parse::<u64>().ok().map(Number::from),
        };
    }
    Number::from_f64(s.parse::<f64>().ok()?)
}

/// A data number as `Flatten` stores it: serde's `u64`/`i64`/`f64` reading, then `as f32` (the
/// slow path, for what [`Decimal::to_f32`] leaves).
fn number_f32(text: &[u8], integer: bool) -> Option<f32> {
    let (neg, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if integer {
        // serde reads a negative zero as the float -0.0, other integers as u64/i64.
        let m = parse_u64(digits)?;
        return Some(match (neg, m) {
            (true, 0) => -0.0,
            (true, m) => i64::try_from(m).ok()?.checked_neg()? as f32,
            (false, m) => m as f32,
        });
    }
    // The standard library's parse is correctly rounded, as serde_json's is with
    // `float_roundtrip`.
    let v = std::str::from_utf8(digits).ok()?.parse::<f64>().ok()? as f32;
    v.is_finite().then_some(if neg { -v } else { v })
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |m, &d| {
        m.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Powers of ten exact in an f64.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Negative powers of ten, each the f64 nearest to it (half an ulp off at most): multiplying
/// by one is a quarter of a division's latency, and the error stays inside the tie margin.
const NEG_POW10: [f64; 23] = [
    1e0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10, 1e-11, 1e-12, 1e-13, 1e-14,
    1e-15, 1e-16, 1e-17, 1e-18, 1e-19, 1e-20, 1e-21, 1e-22,
];

/// Eight ASCII digits at once (little-endian load), or `None` if any is not a digit.
fn eight_digits(b: &[u8]) -> Option<u64> {
    let v = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
    let all_digits = (v & 0xF0F0_F0F0_F0F0_F0F0) == 0x3030_3030_3030_3030
        && (v.wrapping_add(0x0606_0606_0606_0606) & 0xF0F0_F0F0_F0F0_F0F0) == 0x3030_3030_3030_3030;
    if !all_digits {
        return None;
    }
    let v = v - 0x3030_3030_3030_3030;
    let v = (v * 10 + (v >> 8)) & 0x00FF_00FF_00FF_00FF;
    let v = (v * 100 + (v >> 16)) & 0x0000_FFFF_0000_FFFF;
    Some((v * 10_000 + (v >> 32)) & 0xFFFF_FFFF)
}

/// Digits into `m` (which stays below 10^18, so it converts as an i64), counting those that
/// did not fit in `dropped`; returns how many digits were read.
fn accumulate(b: &[u8], i: &mut usize, m: &mut u64, dropped: &mut u32) -> i32 {
    let start = *i;
    while *m < 10_000_000_000 {
        let Some(chunk) = b.get(*i..).and_then(eight_digits) else {
            break;
        };
        *m = *m * 100_000_000 + chunk;
        *i += 8;
    }
    while let Some(&d) = b.get(*i).filter(|d| d.is_ascii_digit()) {
        if *m < 100_000_000_000_000_000 {
            *m = *m * 10 + u64::from(d - b'0');
        } else {
            *dropped += 1;
        }
        *i += 1;
    }
    (*i - start) as i32
}

/// A JSON number read in one pass: grammar checked, digits gathered into `m` (≤ 18 of them)
/// with the decimal exponent `exp`, so that its value is ±m·10^exp when `exact`.
struct Decimal {
    neg: bool,
    m: u64,
    exp: i32,
    exact: bool,
    integer: bool,
}

impl Decimal {
    fn scan(b: &[u8], i: &mut usize) -> Option<Self> {
        let mut j = *i;
        let neg = b.get(j) == Some(&b'-');
        if neg {
            j += 1;
        }
        let (mut m, mut dropped) = (0u64, 0u32);
        match b.get(j)? {
            b'0' => j += 1,
            b'1'..=b'9' => {
                accumulate(b, &mut j, &mut m, &mut dropped);
            }
            _ => return None,
        }
        let (mut exp, mut integer) = (0i32, true);
        if b.get(j) == Some(&b'.') {
            j += 1;
            integer = false;
            exp = -accumulate(b, &mut j, &mut m, &mut dropped);
            if exp == 0 {
                return None;
            }
        }
        if let Some(b'e' | b'E') = b.get(j) {
            j += 1;
            integer = false;
            let negative_exp = match b.get(j) {
                Some(b'-') => {
                    j += 1;
                    true
                }
                Some(b'+') => {
                    j += 1;
                    false
                }
                _ => false,
            };
            let start = j;
            let mut e = 0i32;
            while let Some(&d) = b.get(j).filter(|d| d.is_ascii_digit()) {
                e = e.saturating_mul(10).saturating_add(i32::from(d - b'0'));
                j += 1;
            }
            if j == start {
                return None;
            }
            exp = exp.saturating_add(if negative_exp { -e } else { e });
        }
        *i = j;
        Some(Self {
            neg,
            m,
            exp,
            exact: dropped == 0,
            integer,
        })
    }

    /// serde's reading narrowed to f32, when it can be had exactly and cheaply; `None` leaves
    /// the number to [`number_f32`].
    ///
    /// `m` converts to f64 with at most half an ulp of error, the power of ten carries at most
    /// half an ulp (none when positive), and the product adds half an ulp: the result is within
    /// two f64 ulps of the true value. Narrowing to f32 drops 29 mantissa bits; unless those
    /// bits sit within 8 ulps of the halfway point, the true value, serde's correctly rounded
    /// f64 and this f64 all round to the same f32.
    fn to_f32(&self) -> Option<f32> {
        if !self.exact {
            return None;
        }
        let sign = |v: f32| if self.neg { -v } else { v };
        if self.integer {
            // serde reads integers as u64/i64 (a negative zero as the float -0.0).
            return Some(sign(self.m as f32));
        }
        if self.m == 0 {
            return Some(sign(0.0));
        }
        let m = self.m as i64 as f64;
        let x = match self.exp {
            0..=22 => m * POW10[self.exp as usize],
            -22..=-1 => m * NEG_POW10[(-self.exp) as usize],
            _ => return None,
        };
        const LOW: u64 = (1 << 29) - 1;
        const HALF: u64 = 1 << 28;
        let near_tie = (x.to_bits() & LOW).abs_diff(HALF) <= 8;
        let normal_f32 = (f64::from(f32::MIN_POSITIVE)..f64::from(f32::MAX)).contains(&x);
        (!near_tie && normal_f32).then(|| sign(x as f32))
    }
}
