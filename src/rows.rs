//! Reading a large SPI result fast. pgrx's `row.get(n)` looks the column's type up, switches
//! memory contexts and copies the value for every single value, behind an error guard each
//! time; for the tens of thousands of event rows a batch loads that is a tenth of the work.
//! Here each row is deformed once (`heap_deform_tuple`) and its values are read in place,
//! after the result's column types have been checked once.

use pgrx::pg_sys;
use pgrx::spi::{SpiError, SpiTupleTable};

/// The type of one column, as the query declares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Col {
    Text,
    Jsonb,
    Int4,
    Int8,
    Float8,
}

impl Col {
    fn oid(self) -> pg_sys::Oid {
        match self {
            Col::Text => pg_sys::TEXTOID,
            Col::Jsonb => pg_sys::JSONBOID,
            Col::Int4 => pg_sys::INT4OID,
            Col::Int8 => pg_sys::INT8OID,
            Col::Float8 => pg_sys::FLOAT8OID,
        }
    }
}

/// One row's values, borrowed from the result.
pub struct Row<'a> {
    values: &'a [pg_sys::Datum],
    nulls: &'a [bool],
}

impl<'a> Row<'a> {
    fn datum(&self, i: usize) -> Option<pg_sys::Datum> {
        (!self.nulls[i]).then(|| self.values[i])
    }

    /// The bytes of a varlena column (text, jsonb).
    fn varlena(&self, i: usize) -> Option<&'a [u8]> {
        let d = self.datum(i)?;
        // SAFETY: the column is a varlena type (checked in `each_row`), so the datum points to
        // a varlena that lives as long as the result; compressed or out-of-line values are
        // expanded into the current memory context, which outlives the result.
        unsafe {
            let mut v = d.cast_mut_ptr::<pg_sys::varlena>();
            if pgrx::varlena::varatt_is_4b_c(v) || pgrx::varlena::varatt_is_1b_e(v) {
                v = pg_sys::pg_detoast_datum_packed(v);
            }
            Some(pgrx::varlena::varlena_to_byte_slice(v))
        }
    }

    /// Column `i` (0-based), declared [`Col::Text`]. Text that is not UTF-8 reads as `None`.
    pub fn text(&self, i: usize) -> Option<&'a str> {
        self.varlena(i).and_then(|b| std::str::from_utf8(b).ok())
    }

    /// Column `i`, declared [`Col::Jsonb`]: the value's binary form (see `jsonb.rs`).
    pub fn jsonb(&self, i: usize) -> Option<&'a [u8]> {
        self.varlena(i)
    }

    /// Column `i`, declared [`Col::Int4`].
    pub fn int4(&self, i: usize) -> Option<i32> {
        self.datum(i).map(|d| d.value() as i32)
    }

    /// Column `i`, declared [`Col::Int8`].
    pub fn int8(&self, i: usize) -> Option<i64> {
        self.datum(i).map(|d| d.value() as i64)
    }

    /// Column `i`, declared [`Col::Float8`].
    pub fn float8(&self, i: usize) -> Option<f64> {
        self.datum(i).map(|d| f64::from_bits(d.value() as u64))
    }
}

/// Calls `f` with each row of `result`, the SPI result just returned (no other SPI call may
/// come between the statement and this), whose columns must be `cols`.
pub fn each_row<'r>(
    result: &SpiTupleTable<'r>,
    cols: &[Col],
    mut f: impl FnMut(Row<'_>),
) -> Result<(), SpiError> {
    if result.is_empty() {
        return Ok(());
    }
    // SAFETY: `result` is alive, so SPI_tuptable is its table (the contract above); the
    // descriptor is checked against `cols` before any value is read.
    unsafe {
        let table = pg_sys::SPI_tuptable;
        if table.is_null() || (*table).numvals as usize != result.len() {
            return Err(SpiError::NoTupleTable);
        }
        let desc = (*table).tupdesc;
        let natts = (*desc).natts as usize;
        if natts != cols.len() {
            return Err(SpiError::SpiError(pgrx::spi::SpiErrorCodes::NoAttribute));
        }
        let attrs = (*desc).attrs.as_slice(natts);
        for (a, c) in attrs.iter().zip(cols) {
            if a.atttypid != c.oid() {
                return Err(SpiError::SpiError(pgrx::spi::SpiErrorCodes::NoAttribute));
            }
        }
        let tuples = std::slice::from_raw_parts((*table).vals, result.len());
        let mut values = vec![pg_sys::Datum::from(0); natts];
        let mut nulls = vec![true; natts];
        for &t in tuples {
            pg_sys::heap_deform_tuple(t, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
            f(Row {
                values: &values,
                nulls: &nulls,
            });
        }
    }
    Ok(())
}
