//! The batch model validation reads, and reading it from JSON text without building a JSON
//! map per object (the extension also reads it straight from a jsonb value).
//!
//! `serde_json::Value` keeps objects in insertion-ordered hash maps; an ingest batch is
//! hundreds of small objects (an envelope and a payload per event) whose keys are then only
//! looked up a few times each, so hashing them costs more than reading them. Here envelopes
//! and payloads are read into [`Payload`]s (short ordered lists, a repeated key keeping its
//! last value as serde_json's maps do); every other value is an ordinary `Value`, so the checks
//! and their error messages are the same as for a `Value` batch.

use crate::event::Payload;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::fmt;

/// An object read as a [`Payload`], or any other JSON value.
pub enum Node<T> {
    Object(T),
    Other(Value),
}

/// One envelope: its fields other than `payload`, in order, and its `payload` (absent: `None`).
pub struct Envelope {
    pub fields: Payload,
    pub payload: Option<Node<Payload>>,
}

/// A whole batch: one envelope, an array of items, or some other value.
pub enum Batch {
    One(Envelope),
    Many(Vec<Node<Envelope>>),
    Other(Value),
}

/// Builds `T` from the entries of a JSON object.
trait FromMap: Sized {
    fn from_map<'de, A: MapAccess<'de>>(access: A) -> Result<Self, A::Error>;
}

impl FromMap for Payload {
    fn from_map<'de, A: MapAccess<'de>>(mut access: A) -> Result<Self, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = access.next_entry::<String, Value>()? {
            entries.push(entry);
        }
        Ok(Payload::from_entries(entries))
    }
}

impl FromMap for Envelope {
    fn from_map<'de, A: MapAccess<'de>>(mut access: A) -> Result<Self, A::Error> {
        let mut fields = Vec::new();
        let mut payload = None;
        while let Some(k) = access.next_key::<String>()? {
            if k == "payload" {
                payload = Some(access.next_value::<Node<Payload>>()?);
            } else {
                let v = access.next_value::<Value>()?;
                fields.push((k, v));
            }
        }
        Ok(Envelope {
            fields: Payload::from_entries(fields),
            payload,
        })
    }
}

/// Reads a [`Node`]: objects go to `from_map`; every other value is kept as a `Value` (only
/// to name its type in an error).
struct NodeVisitor<T, F> {
    wrap_object: fn(T) -> F,
    wrap_other: fn(Value) -> F,
}

macro_rules! scalar {
    ($name:ident, $t:ty) => {
        fn $name<E: serde::de::Error>(self, v: $t) -> Result<F, E> {
            Ok((self.wrap_other)(Value::from(v)))
        }
    };
}

impl<'de, T: FromMap, F> Visitor<'de> for NodeVisitor<T, F> {
    type Value = F;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    scalar!(visit_bool, bool);
    scalar!(visit_i64, i64);
    scalar!(visit_u64, u64);
    scalar!(visit_str, &str);
    scalar!(visit_string, String);

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<F, E> {
        Ok((self.wrap_other)(
            serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number),
        ))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<F, E> {
        Ok((self.wrap_other)(Value::Null))
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<F, E> {
        Ok((self.wrap_other)(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<F, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = access.next_element::<Value>()? {
            items.push(v);
        }
        Ok((self.wrap_other)(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, access: A) -> Result<F, A::Error> {
        T::from_map(access).map(self.wrap_object)
    }
}

impl<'de, T: FromMap> Deserialize<'de> for Node<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor::<T, Node<T>> {
            wrap_object: Node::Object,
            wrap_other: Node::Other,
        })
    }
}

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BatchVisitor;
        impl<'de> Visitor<'de> for BatchVisitor {
            type Value = Batch;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an event object or an array of events")
            }
            fn visit_map<A: MapAccess<'de>>(self, access: A) -> Result<Batch, A::Error> {
                Envelope::from_map(access).map(Batch::One)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Batch, A::Error> {
                let mut items = Vec::with_capacity(access.size_hint().unwrap_or(0));
                while let Some(item) = access.next_element::<Node<Envelope>>()? {
                    items.push(item);
                }
                Ok(Batch::Many(items))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Batch, E> {
                Ok(Batch::Other(Value::from(v)))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Batch, E> {
                Ok(Batch::Other(Value::from(v)))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Batch, E> {
                Ok(Batch::Other(Value::from(v)))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Batch, E> {
                Ok(Batch::Other(Value::from(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Batch, E> {
                Ok(Batch::Other(Value::from(v)))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Batch, E> {
                Ok(Batch::Other(Value::Null))
            }
        }
        d.deserialize_any(BatchVisitor)
    }
}
