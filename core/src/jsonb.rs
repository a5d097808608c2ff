//! Reading a `jsonb` value's binary form straight into the core's batch model.
//!
//! `ingest()` receives its batch as jsonb. Printing it (`jsonb_out`) only for serde to lex the
//! text again was a seventh of the call; the binary form is already a tree, so it is walked
//! here instead: safe, bounds-checked reads of a byte slice, no Postgres calls. The layout is
//! the one PostgreSQL has written since 9.4 (`src/include/utils/jsonb.h`):
//!
//! - a container is a `u32` header (element count and whether it is an object, an array or a
//!   raw scalar wrapped in a one-element array), then one `u32` JEntry per element (objects:
//!   every key, then every value, keys in storage order), then the elements' data;
//! - a JEntry holds the element's type and either its length or, every 32nd entry, the end
//!   offset of its data; numerics and nested containers start at the next 4-byte boundary.
//!
//! Keys come out in storage order, as `jsonb_out` prints them, and numbers are spelled as
//! `numeric_out` spells them before serde reads them, so the result is what the text path
//! gives (a pg_test compares the two on many batches).

use crate::envelope::{Batch, Envelope, Node};
use crate::event::Payload;
use serde_json::{Map, Number, Value};

const JB_CMASK: u32 = 0x0FFF_FFFF;
const JB_FSCALAR: u32 = 0x1000_0000;
const JB_FOBJECT: u32 = 0x2000_0000;
const JB_FARRAY: u32 = 0x4000_0000;

const JENTRY_OFFLENMASK: u32 = 0x0FFF_FFFF;
const JENTRY_TYPEMASK: u32 = 0x7000_0000;
const JENTRY_HAS_OFF: u32 = 0x8000_0000;
const JENTRY_ISSTRING: u32 = 0x0000_0000;
const JENTRY_ISNUMERIC: u32 = 0x1000_0000;
const JENTRY_ISBOOL_FALSE: u32 = 0x2000_0000;
const JENTRY_ISBOOL_TRUE: u32 = 0x3000_0000;
const JENTRY_ISNULL: u32 = 0x4000_0000;
const JENTRY_ISCONTAINER: u32 = 0x5000_0000;

/// serde_json's recursion limit: it reads at most 127 nested arrays and objects (the 128th is
/// refused), so both paths refuse the same inputs. Depths count containers from the root
/// (the root container is at depth 1).
const MAX_DEPTH: usize = 128;

/// Why a value could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// Nested [`MAX_DEPTH`] or more containers deep.
    TooDeep,
    /// A number that is not a finite f64 or an integer serde can hold.
    Number,
    /// Not the layout described above (never for a value Postgres made).
    Corrupt,
}

type Res<T> = Result<T, ReadError>;

/// One element of a container: its type bits and its data.
#[derive(Clone, Copy)]
struct Elem<'a> {
    kind: u32,
    /// The data from the element's start to the end of the container's data area.
    rest: &'a [u8],
    /// Offset of the element's data relative to the data area (for alignment).
    offset: usize,
    len: usize,
}

/// A container: its header and where its JEntries and data are.
#[derive(Clone, Copy)]
struct Container<'a> {
    bytes: &'a [u8],
    header: u32,
}

fn u32_at(b: &[u8], at: usize) -> Res<u32> {
    let s = b.get(at..at + 4).ok_or(ReadError::Corrupt)?;
    Ok(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

fn intalign(n: usize) -> usize {
    (n + 3) & !3
}

impl<'a> Container<'a> {
    fn new(bytes: &'a [u8]) -> Res<Container<'a>> {
        Ok(Container {
            bytes,
            header: u32_at(bytes, 0)?,
        })
    }

    fn count(&self) -> usize {
        (self.header & JB_CMASK) as usize
    }

    fn is_object(&self) -> bool {
        self.header & JB_FOBJECT != 0
    }

    fn is_array(&self) -> bool {
        self.header & JB_FARRAY != 0
    }

    fn is_scalar(&self) -> bool {
        self.header & JB_FSCALAR != 0
    }

    /// Every element (objects: the keys, then the values), in storage order.
    fn elems(&self) -> Res<Vec<Elem<'a>>> {
        let n = if self.is_object() {
            self.count() * 2
        } else {
            self.count()
        };
        let data_start = 4 + 4 * n;
        let data = self.bytes.get(data_start..).ok_or(ReadError::Corrupt)?;
        let mut out = Vec::with_capacity(n);
        let mut start = 0usize;
        for i in 0..n {
            let entry = u32_at(self.bytes, 4 + 4 * i)?;
            let field = (entry & JENTRY_OFFLENMASK) as usize;
            let end = if entry & JENTRY_HAS_OFF != 0 {
                field
            } else {
                start + field
            };
            if end < start || end > data.len() {
                return Err(ReadError::Corrupt);
            }
            out.push(Elem {
                kind: entry & JENTRY_TYPEMASK,
                rest: &data[start..],
                offset: start,
                len: end - start,
            });
            start = end;
        }
        Ok(out)
    }
}

impl<'a> Elem<'a> {
    fn bytes(&self) -> &'a [u8] {
        &self.rest[..self.len]
    }

    /// The element's data from its 4-byte-aligned start (numerics and containers).
    fn aligned(&self) -> Res<&'a [u8]> {
        let pad = intalign(self.offset) - self.offset;
        if pad > self.len {
            return Err(ReadError::Corrupt);
        }
        Ok(&self.rest[pad..self.len])
    }

    fn str(&self) -> Res<&'a str> {
        if self.kind != JENTRY_ISSTRING {
            return Err(ReadError::Corrupt);
        }
        std::str::from_utf8(self.bytes()).map_err(|_| ReadError::Corrupt)
    }

    fn container(&self) -> Res<Option<Container<'a>>> {
        if self.kind == JENTRY_ISCONTAINER {
            Container::new(self.aligned()?).map(Some)
        } else {
            Ok(None)
        }
    }

    fn value(&self, depth: usize) -> Res<Value> {
        Ok(match self.kind {
            JENTRY_ISSTRING => Value::String(self.str()?.to_owned()),
            JENTRY_ISNUMERIC => Value::Number(numeric(self.aligned()?)?),
            JENTRY_ISBOOL_FALSE => Value::Bool(false),
            JENTRY_ISBOOL_TRUE => Value::Bool(true),
            JENTRY_ISNULL => Value::Null,
            JENTRY_ISCONTAINER => container_value(Container::new(self.aligned()?)?, depth + 1)?,
            _ => return Err(ReadError::Corrupt),
        })
    }
}

/// (key, value) pairs of an object container.
fn entries<'a>(c: &Container<'a>) -> Res<Vec<(&'a str, Elem<'a>)>> {
    let elems = c.elems()?;
    let n = c.count();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push((elems[i].str()?, elems[n + i]));
    }
    Ok(out)
}

fn container_value(c: Container<'_>, depth: usize) -> Res<Value> {
    if depth >= MAX_DEPTH {
        return Err(ReadError::TooDeep);
    }
    if c.is_object() {
        let mut m = Map::new();
        for (k, v) in entries(&c)? {
            m.insert(k.to_owned(), v.value(depth)?);
        }
        Ok(Value::Object(m))
    } else if c.is_array() {
        let elems = c.elems()?;
        let values: Res<Vec<Value>> = elems.iter().map(|e| e.value(depth)).collect();
        let values = values?;
        if c.is_scalar() {
            values.into_iter().next().ok_or(ReadError::Corrupt)
        } else {
            Ok(Value::Array(values))
        }
    } else {
        Err(ReadError::Corrupt)
    }
}

fn payload(c: &Container<'_>, depth: usize) -> Res<Payload> {
    let mut kv = Vec::new();
    for (k, v) in entries(c)? {
        kv.push((k.to_owned(), v.value(depth)?));
    }
    Ok(Payload::from_entries(kv))
}

/// An envelope object at `depth` (1 when it is the root, 2 in an array).
fn envelope(c: &Container<'_>, depth: usize) -> Res<Envelope> {
    let mut fields = Vec::new();
    let mut body = None;
    for (k, v) in entries(c)? {
        if k == "payload" {
            body = Some(match v.container()? {
                Some(p) if p.is_object() => Node::Object(payload(&p, depth + 1)?),
                _ => Node::Other(v.value(depth)?),
            });
        } else {
            fields.push((k.to_owned(), v.value(depth)?));
        }
    }
    Ok(Envelope {
        fields: Payload::from_entries(fields),
        payload: body,
    })
}

/// The batch in `root`, the data of a jsonb varlena (after its length word).
pub fn read_batch(root: &[u8]) -> Res<Batch> {
    let c = Container::new(root)?;
    if c.is_object() {
        return envelope(&c, 1).map(Batch::One);
    }
    if c.is_scalar() {
        return container_value(c, 1).map(Batch::Other);
    }
    // Sized from the JEntries actually present, not from the header's count, which only
    // `elems` checks against the input's length.
    let elems = c.elems()?;
    let mut items = Vec::with_capacity(elems.len());
    for e in elems {
        items.push(match e.container()? {
            Some(obj) if obj.is_object() => Node::Object(envelope(&obj, 2)?),
            _ => Node::Other(e.value(1)?),
        });
    }
    Ok(Batch::Many(items))
}

/// An event's stored payload (`events.payload`): its keys and values; anything but an object
/// reads as empty.
pub fn read_payload(root: &[u8]) -> Res<Payload> {
    let c = Container::new(root)?;
    if c.is_object() {
        payload(&c, 1)
    } else {
        Ok(Payload::new())
    }
}

/// A jsonb numeric (a `numeric` varlena) as serde reads the text `numeric_out` prints for it.
fn numeric(b: &[u8]) -> Res<Number> {
    let text = numeric_text(b)?;
    serde_json::from_str::<Number>(&text).map_err(|_| ReadError::Number)
}

const NUMERIC_SIGN_MASK: u16 = 0xC000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_SHORT: u16 = 0x8000;
const NUMERIC_SHORT_SIGN_MASK: u16 = 0x2000;
const NUMERIC_SHORT_DSCALE_MASK: u16 = 0x1F80;
const NUMERIC_SHORT_DSCALE_SHIFT: u16 = 7;
const NUMERIC_SHORT_WEIGHT_SIGN_MASK: u16 = 0x0040;
const NUMERIC_SHORT_WEIGHT_MASK: u16 = 0x003F;
const NUMERIC_DSCALE_MASK: u16 = 0x3FFF;

fn u16_at(b: &[u8], at: usize) -> Res<u16> {
    let s = b.get(at..at + 2).ok_or(ReadError::Corrupt)?;
    Ok(u16::from_ne_bytes([s[0], s[1]]))
}

/// The decimal text of a `numeric` varlena, digit for digit what `numeric_out` prints.
pub fn numeric_text(b: &[u8]) -> Res<String> {
    // The varlena header: 1 byte (short, low bit set on little-endian) or 4 bytes.
    let first = *b.first().ok_or(ReadError::Corrupt)?;
    let (hdr, total) = if cfg!(target_endian = "little") {
        if first & 0x01 == 0x01 {
            (1usize, (first >> 1) as usize)
        } else {
            (4usize, (u32_at(b, 0)? >> 2) as usize)
        }
    } else if first & 0x80 == 0x80 {
        (1usize, (first & 0x7F) as usize)
    } else {
        (4usize, (u32_at(b, 0)? & 0x3FFF_FFFF) as usize)
    };
    let body = b.get(hdr..total).ok_or(ReadError::Corrupt)?;
    let h = u16_at(body, 0)?;
    let (negative, dscale, weight, digits_at) = if h & NUMERIC_SIGN_MASK == NUMERIC_SHORT {
        let weight = if h & NUMERIC_SHORT_WEIGHT_SIGN_MASK != 0 {
            (!NUMERIC_SHORT_WEIGHT_MASK | (h & NUMERIC_SHORT_WEIGHT_MASK)) as i16 as i32
        } else {
            (h & NUMERIC_SHORT_WEIGHT_MASK) as i32
        };
        (
            h & NUMERIC_SHORT_SIGN_MASK != 0,
            ((h & NUMERIC_SHORT_DSCALE_MASK) >> NUMERIC_SHORT_DSCALE_SHIFT) as usize,
            weight,
            2usize,
        )
    } else if h & NUMERIC_SIGN_MASK == NUMERIC_SIGN_MASK {
        // NaN or infinity: jsonb never holds them.
        return Err(ReadError::Number);
    } else {
        (
            h & NUMERIC_SIGN_MASK == NUMERIC_NEG,
            (h & NUMERIC_DSCALE_MASK) as usize,
            u16_at(body, 2)? as i16 as i32,
            4usize,
        )
    };
    let raw = body.get(digits_at..).ok_or(ReadError::Corrupt)?;
    let digits: Vec<u16> = raw
        .chunks_exact(2)
        .map(|c| u16::from_ne_bytes([c[0], c[1]]))
        .collect();
    if digits.iter().any(|d| *d >= 10_000) {
        return Err(ReadError::Corrupt);
    }
    let digit = |i: i32| -> u16 {
        if i >= 0 && (i as usize) < digits.len() {
            digits[i as usize]
        } else {
            0
        }
    };
    let mut out = String::with_capacity(8 + 4 * digits.len() + dscale);
    if negative && !digits.is_empty() {
        out.push('-');
    }
    let push4 = |out: &mut String, d: u16| {
        for p in [1000, 100, 10, 1] {
            out.push(char::from(b'0' + (d / p % 10) as u8));
        }
    };
    // Integer part: groups 0..=weight (the first without leading zeros).
    if weight < 0 {
        out.push('0');
    } else {
        let first = digit(0);
        let mut p = 1000;
        while p > 1 && first / p == 0 {
            p /= 10;
        }
        while p > 0 {
            out.push(char::from(b'0' + (first / p % 10) as u8));
            p /= 10;
        }
        for g in 1..=weight {
            push4(&mut out, digit(g));
        }
    }
    // Fraction: exactly dscale digits.
    if dscale > 0 {
        out.push('.');
        let end = out.len() + dscale;
        let mut g = weight + 1;
        while out.len() < end {
            push4(&mut out, digit(g));
            g += 1;
        }
        out.truncate(end);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` arrays nested in one another, the innermost empty.
    fn nested(n: usize) -> Vec<u8> {
        let mut b = JB_FARRAY.to_ne_bytes().to_vec();
        for _ in 1..n {
            let mut outer = (JB_FARRAY | 1).to_ne_bytes().to_vec();
            outer.extend((JENTRY_ISCONTAINER | JENTRY_HAS_OFF | b.len() as u32).to_ne_bytes());
            outer.extend(b);
            b = outer;
        }
        b
    }

    #[test]
    fn nesting_is_limited_as_serde_json_limits_it() {
        let text = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(serde_json::from_str::<Value>(&text(127)).is_ok());
        assert!(serde_json::from_str::<Value>(&text(128)).is_err());
        assert!(read_batch(&nested(127)).is_ok());
        assert_eq!(read_batch(&nested(128)).err(), Some(ReadError::TooDeep));
        assert_eq!(read_batch(&nested(5000)).err(), Some(ReadError::TooDeep));
    }

    #[test]
    fn a_huge_element_count_is_refused_before_any_allocation() {
        // A corrupt header claiming 2^28-1 elements used to size a Vec before the JEntries
        // were checked against the input (gigabytes for a 16-byte input).
        for header in [JB_FARRAY | JB_CMASK, JB_FOBJECT | JB_CMASK] {
            let mut b = header.to_ne_bytes().to_vec();
            b.extend([0u8; 12]);
            assert_eq!(read_batch(&b).err(), Some(ReadError::Corrupt));
        }
        let mut b = (JB_FOBJECT | JB_CMASK).to_ne_bytes().to_vec();
        b.extend([0u8; 12]);
        assert_eq!(read_payload(&b).err(), Some(ReadError::Corrupt));
    }
}
